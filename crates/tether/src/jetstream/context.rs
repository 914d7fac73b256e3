//! The JetStream context: a client, the API prefix, timeouts, the publish-ack window.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::Client;

/// How long an API request waits for its answer unless [`Context::with_timeout`] says
/// otherwise.
pub const DEFAULT_API_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a publish keeps trying (no responders while a stream's leader is elected, a
/// lost link with a `Nats-Msg-Id`) before it fails.
pub const DEFAULT_PUBLISH_DEADLINE: Duration = Duration::from_secs(10);

/// Publish acks outstanding at once per context unless [`Context::with_max_pending_acks`]
/// says otherwise.
pub const DEFAULT_MAX_PENDING_ACKS: usize = 256;

/// A JetStream context over a [`Client`]: cheap to clone (two reference counts), shares
/// the client's connection.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) client: Client,
    /// Behind one `Arc`: every publish's ack future holds a clone of the context.
    pub(crate) settings: Arc<Settings>,
}

/// What a [`Context`] is set up with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `$JS.API.` or `$JS.<domain>.API.` or a custom prefix with a trailing dot.
    pub(crate) prefix: String,
    pub(crate) timeout: Duration,
    pub(crate) publish_deadline: Duration,
    /// The publish-ack window (max_pending_acks slots).
    pub(crate) acks: Arc<Semaphore>,
}

impl Context {
    /// A context for the client's account, API prefix `$JS.API`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            settings: Arc::new(Settings {
                prefix: String::from("$JS.API."),
                timeout: DEFAULT_API_TIMEOUT,
                publish_deadline: DEFAULT_PUBLISH_DEADLINE,
                acks: Arc::new(Semaphore::new(DEFAULT_MAX_PENDING_ACKS)),
            }),
        }
    }

    fn settings_mut(&mut self) -> &mut Settings {
        Arc::make_mut(&mut self.settings)
    }

    /// Talk to the JetStream of `domain` (API prefix `$JS.<domain>.API`), as when a leaf
    /// node reaches a hub's JetStream. An empty domain keeps `$JS.API`.
    pub fn with_domain(mut self, domain: &str) -> Self {
        self.settings_mut().prefix = if domain.is_empty() {
            String::from("$JS.API.")
        } else {
            format!("$JS.{domain}.API.")
        };
        self
    }

    /// Use `prefix` instead of `$JS.API` (an account import that maps the API elsewhere).
    /// A trailing dot is optional.
    pub fn with_api_prefix(mut self, prefix: &str) -> Self {
        let p = prefix.trim_end_matches('.');
        self.settings_mut().prefix = format!("{p}.");
        self
    }

    /// How long an API request (stream and consumer management, acks confirmed by the
    /// server) waits for its answer; 5 s by default.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.settings_mut().timeout = timeout;
        self
    }

    /// How long a publish keeps trying before it fails; 10 s by default. See the module
    /// docs for when a publish is sent again.
    pub fn with_publish_deadline(mut self, deadline: Duration) -> Self {
        self.settings_mut().publish_deadline = deadline;
        self
    }

    /// How many publish acks may be outstanding at once (at least 1); 256 by default. A
    /// publish beyond that waits until an earlier ack arrives (awaited or not) or its
    /// first send fails.
    pub fn with_max_pending_acks(mut self, n: usize) -> Self {
        let n = n.max(1);
        self.settings_mut().acks = Arc::new(Semaphore::new(n));
        self
    }

    /// The client this context uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The API prefix, e.g. `$JS.API` (without the trailing dot).
    pub fn api_prefix(&self) -> &str {
        self.settings.prefix.trim_end_matches('.')
    }

    /// The full subject of an API call: prefix plus `tail`, e.g. `STREAM.INFO.ORDERS`.
    pub(crate) fn api_subject(&self, tail: &str) -> String {
        let mut s = String::with_capacity(self.settings.prefix.len() + tail.len());
        s.push_str(&self.settings.prefix);
        s.push_str(tail);
        s
    }
}

impl Client {
    /// A JetStream [`Context`] over this client (`$JS.API`, default timeouts).
    pub fn jetstream(&self) -> Context {
        Context::new(self.clone())
    }
}
