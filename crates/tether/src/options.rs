//! Connection options: one by-value builder, every default a documented const, checked
//! when built.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tether_proto::conn;
use tether_proto::outbound::BufferLimits;

use crate::error::{ConnectError, OptionsError};
use crate::events::Event;
use crate::server_pool::ServerAddr;
use crate::Client;

/// Default server when none is given.
pub const DEFAULT_SERVER: &str = "nats://127.0.0.1:4222";
/// Default for [`ConnectOptions::connection_timeout`]: the whole handshake.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`ConnectOptions::ping_interval`].
pub const DEFAULT_PING_INTERVAL: Duration = conn::DEFAULT_PING_INTERVAL;
/// Upper bound of the default pong timeout: the smaller of this and the ping interval.
pub const DEFAULT_PONG_TIMEOUT: Duration = conn::DEFAULT_PONG_TIMEOUT;
/// Default for [`ConnectOptions::max_pings_outstanding`].
pub const DEFAULT_MAX_PINGS_OUTSTANDING: usize = conn::DEFAULT_MAX_PINGS_OUTSTANDING;
/// Default for [`ConnectOptions::write_stall_timeout`].
pub const DEFAULT_WRITE_STALL_TIMEOUT: Duration = conn::DEFAULT_WRITE_STALL_TIMEOUT;
/// Default byte bound of the outbound buffer: 8 MiB.
pub const DEFAULT_BUFFER_BYTES: usize = conn::DEFAULT_BUFFER_BYTES;
/// Default message bound of the outbound buffer: 1,000,000.
pub const DEFAULT_BUFFER_MSGS: usize = conn::DEFAULT_BUFFER_MSGS;
/// Default for [`ConnectOptions::block_deadline`].
pub const DEFAULT_BLOCK_DEADLINE: Duration = Duration::from_secs(5);
/// Default for [`ConnectOptions::confirm_interval`]: 20 ms (see
/// [`tether_proto::conn::DEFAULT_CONFIRM_INTERVAL`] for why).
pub const DEFAULT_CONFIRM_INTERVAL: Duration = conn::DEFAULT_CONFIRM_INTERVAL;
/// Default for [`ConnectOptions::assumed_max_payload`]: 1 MiB until the first INFO.
pub const DEFAULT_ASSUMED_MAX_PAYLOAD: usize = conn::DEFAULT_ASSUMED_MAX_PAYLOAD;
/// Default for [`ConnectOptions::max_control_line`].
pub const DEFAULT_MAX_CONTROL_LINE: usize = conn::DEFAULT_MAX_CONTROL_LINE;
/// Default for [`ConnectOptions::max_inbound_payload`]: 64 MiB.
pub const DEFAULT_MAX_INBOUND_PAYLOAD: usize = tether_proto::decode::DEFAULT_MAX_INBOUND_PAYLOAD;
/// Default pending message limit per subscription.
pub const DEFAULT_PENDING_MSGS: usize = 65_536;
/// Default pending byte limit per subscription: 64 MiB.
pub const DEFAULT_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// Default for [`ConnectOptions::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`ConnectOptions::flush_timeout`].
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`ConnectOptions::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`ConnectOptions::inbox_prefix`].
pub const DEFAULT_INBOX_PREFIX: &str = "_INBOX";
/// Default for [`ConnectOptions::event_queue`].
pub const DEFAULT_EVENT_QUEUE: usize = 1024;
/// Default for [`ConnectOptions::reconnect_wait`]: the backoff cap after the first 10 s.
pub const DEFAULT_RECONNECT_WAIT: Duration = Duration::from_secs(2);
/// Backoff cap during the first [`EARLY_OUTAGE`] of an outage.
pub const DEFAULT_EARLY_RECONNECT_CAP: Duration = Duration::from_millis(500);
/// How long an outage counts as early for the backoff cap.
pub const EARLY_OUTAGE: Duration = Duration::from_secs(10);
/// Base of the exponential backoff.
pub const DEFAULT_RECONNECT_BASE: Duration = Duration::from_millis(50);
/// Default for [`ConnectOptions::reconnect_jitter_tls`].
pub const DEFAULT_RECONNECT_JITTER_TLS: Duration = Duration::from_secs(1);
/// Default for [`ConnectOptions::ldm_jitter`]: 500 ms, so a client moves well inside a
/// 1 s `lame_duck_grace_period` as well as inside nats-server's default 10 s.
pub const DEFAULT_LDM_JITTER: Duration = Duration::from_millis(500);
/// Default for [`ConnectOptions::ldm_overlap`].
pub const DEFAULT_LDM_OVERLAP: Duration = Duration::from_secs(1);

/// Upper bound of the timeouts and intervals (connection_timeout, ping_interval,
/// pong_timeout, write_stall_timeout, confirm_interval, block_deadline, drain_timeout,
/// flush_timeout, request_timeout): 24 hours. Larger values are rejected when the options
/// are built; they are almost always a unit mistake, and "never" is better said by
/// another option (allow_reconnect, a buffering policy).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Upper bound of the reconnect and lame-duck delays (reconnect_wait,
/// reconnect_jitter_tls, ldm_jitter, ldm_overlap): 1 hour.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(3600);
/// Upper bound of jwt_refresh_lead: 365 days.
pub const MAX_JWT_REFRESH_LEAD: Duration = Duration::from_secs(365 * 24 * 3600);

/// What `connect` does when the first attempt fails (DESIGN semantics 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectPolicy {
    /// Try every server once; fail with an error listing each server, address and why.
    #[default]
    FailFast,
    /// Return a handle at once and keep trying through the reconnect loop, buffering
    /// publishes meanwhile. The first success emits `Connected`.
    Retry,
    /// Connect on first use, with FailFast's rules for that attempt. A failed attempt
    /// returns to `Idle`; the next use tries again.
    Lazy,
}

/// What a publish does when the outbound buffer is full while disconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Fail at once with `PublishError::BufferFull { connected: false, .. }`.
    #[default]
    Error,
    /// Wait for room up to `block_deadline`, then fail.
    Block,
}

/// What happens to a server that keeps refusing our credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthFailurePolicy {
    /// Two strikes in a row, at least reconnect_wait apart with unchanged credentials,
    /// remove the server from the pool.
    #[default]
    RemoveServer,
    /// Keep retrying with the backoff.
    KeepRetrying,
}

/// A custom reconnect delay: (server, consecutive failures, outage elapsed) → delay.
pub type ReconnectDelayFn = Arc<dyn Fn(&str, u32, Duration) -> Duration + Send + Sync>;
/// An event callback; runs on a runtime task (see [`ConnectOptions::event_callback`]).
pub type EventCallback = Arc<dyn Fn(Event) + Send + Sync>;

/// Options for a connection. Build with [`ConnectOptions::new`], set what you need, then
/// [`ConnectOptions::connect`].
///
/// Contradictory options are rejected by [`ConnectOptions::connect`] (and
/// [`ConnectOptions::validate`]) with an error naming both values.
///
/// ```no_run
/// # async fn doc() -> Result<(), tether::ConnectError> {
/// use std::time::Duration;
/// let client = tether::ConnectOptions::new()
///     .name("orders-service")
///     .ping_interval(Duration::from_secs(5))
///     .connect("nats://127.0.0.1:4222")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConnectOptions {
    /// What the session core is configured with (ping, buffer, payload limits, CONNECT
    /// fields); its `pong_timeout` is set from [`Self::effective_pong_timeout`].
    pub(crate) core: conn::Config,
    pub(crate) no_randomize: bool,
    pub(crate) ignore_discovered_servers: bool,
    pub(crate) connect_policy: ConnectPolicy,
    pub(crate) connection_timeout: Duration,
    pub(crate) allow_reconnect: bool,
    pub(crate) max_reconnects: Option<u32>,
    pub(crate) auth_failure_policy: AuthFailurePolicy,
    pub(crate) reconnect_wait: Duration,
    pub(crate) reconnect_jitter_tls: Duration,
    pub(crate) reconnect_delay: Option<ReconnectDelayFn>,
    pub(crate) ldm_jitter: Duration,
    pub(crate) ldm_overlap: Duration,
    pub(crate) pong_timeout: Option<Duration>,
    pub(crate) overflow: OverflowPolicy,
    pub(crate) block_deadline: Duration,
    pub(crate) pending_msgs: usize,
    pub(crate) pending_bytes: usize,
    pub(crate) drain_timeout: Duration,
    pub(crate) flush_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) inbox_prefix: String,
    pub(crate) event_queue: usize,
    pub(crate) event_callback: Option<EventCallback>,
    pub(crate) user: Option<(String, String)>,
    pub(crate) token: Option<String>,
    pub(crate) keys: Option<crate::credentials::KeySource>,
    pub(crate) jwt_refresh_lead: Option<Duration>,
    pub(crate) tls: crate::tls::TlsOptions,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("name", &self.core.name)
            .field("connect_policy", &self.connect_policy)
            .field("connection_timeout", &self.connection_timeout)
            .field("allow_reconnect", &self.allow_reconnect)
            .field("max_reconnects", &self.max_reconnects)
            .field("ping_interval", &self.core.ping_interval)
            .field("pong_timeout", &self.effective_pong_timeout())
            .field("buffer_bytes", &self.core.buffer.max_bytes)
            .field("buffer_msgs", &self.core.buffer.max_msgs)
            .field("overflow", &self.overflow)
            .field("resend_unconfirmed", &self.core.resend_unconfirmed)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("keys", &self.keys)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self::new()
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        #[must_use]
        pub fn $name(mut self, value: $ty) -> Self {
            self.$name = value;
            self
        }
    };
}

/// A setter of a field of the embedded core configuration.
macro_rules! core_setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty => $($field:ident).+) => {
        $(#[$doc])*
        #[must_use]
        pub fn $name(mut self, value: $ty) -> Self {
            self.core.$($field).+ = value;
            self
        }
    };
}

impl ConnectOptions {
    /// Options with every default.
    pub fn new() -> Self {
        Self {
            // Every default of the core is this crate's default too (the DEFAULT_*
            // constants above are the core's).
            core: conn::Config {
                version: crate::VERSION.to_owned(),
                ..conn::Config::default()
            },
            no_randomize: false,
            ignore_discovered_servers: false,
            connect_policy: ConnectPolicy::FailFast,
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            allow_reconnect: true,
            max_reconnects: None,
            auth_failure_policy: AuthFailurePolicy::RemoveServer,
            reconnect_wait: DEFAULT_RECONNECT_WAIT,
            reconnect_jitter_tls: DEFAULT_RECONNECT_JITTER_TLS,
            reconnect_delay: None,
            ldm_jitter: DEFAULT_LDM_JITTER,
            ldm_overlap: DEFAULT_LDM_OVERLAP,
            pong_timeout: None,
            overflow: OverflowPolicy::Error,
            block_deadline: DEFAULT_BLOCK_DEADLINE,
            pending_msgs: DEFAULT_PENDING_MSGS,
            pending_bytes: DEFAULT_PENDING_BYTES,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            inbox_prefix: DEFAULT_INBOX_PREFIX.to_owned(),
            event_queue: DEFAULT_EVENT_QUEUE,
            event_callback: None,
            user: None,
            token: None,
            keys: None,
            jwt_refresh_lead: None,
            tls: crate::tls::TlsOptions::default(),
        }
    }

    /// Connection name shown by the server's monitoring. Default: none.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.core.name = Some(name.into());
        self
    }

    setter!(
        /// Keep the given server order instead of shuffling. Default: false.
        no_randomize: bool
    );
    setter!(
        /// Ignore servers announced by INFO `connect_urls`. Default: false.
        ignore_discovered_servers: bool
    );
    setter!(
        /// What to do when the first connect fails. Default: [`ConnectPolicy::FailFast`].
        connect_policy: ConnectPolicy
    );
    setter!(
        /// Bound on the whole handshake: TCP, INFO, CONNECT and the PONGs. Default: 5 s;
        /// at most [`MAX_TIMEOUT`].
        connection_timeout: Duration
    );
    setter!(
        /// Reconnect when a link drops. Default: true.
        allow_reconnect: bool
    );
    setter!(
        /// Consecutive failures after which a server leaves the pool. Default: None (unlimited).
        max_reconnects: Option<u32>
    );
    setter!(
        /// What to do with a server that keeps refusing the credentials. Default: RemoveServer.
        auth_failure_policy: AuthFailurePolicy
    );
    setter!(
        /// The cap of the reconnect backoff, not a fixed wait. After a link drops, the
        /// first attempt goes out at once; later attempts to a server wait an exponential
        /// delay from 50 ms with full jitter, capped at 500 ms during the first 10 s of an
        /// outage (so a server back after a restart is found within about half a second)
        /// and at `reconnect_wait` after that. It also spaces auth strikes (see
        /// [`AuthFailurePolicy`]). For the same wait before every retry, use
        /// [`fixed_reconnect_wait`](Self::fixed_reconnect_wait). Default: 2 s; at most
        /// [`MAX_RECONNECT_DELAY`].
        reconnect_wait: Duration
    );
    setter!(
        /// A uniform 0..this added to every reconnect delay but the first for a server
        /// reached over TLS (a `tls://` URL, or any TLS option set), so a fleet does not
        /// hammer a TLS server's handshakes at once. A `reconnect_delay` callback replaces
        /// it with the backoff. Default: 1 s; at most [`MAX_RECONNECT_DELAY`].
        reconnect_jitter_tls: Duration
    );
    setter!(
        /// Spread of the random wait (uniform in `0..ldm_jitter`) before moving off a
        /// server that entered lame duck mode, so its clients do not all move at once.
        /// Default: 500 ms ([`DEFAULT_LDM_JITTER`]); at most [`MAX_RECONNECT_DELAY`].
        ///
        /// Keep it under the servers' `lame_duck_grace_period` (nats-server's default is
        /// 10 s): the server starts closing links when the grace ends, and a link closed
        /// while its client still waits is a plain disconnect (the client then reconnects
        /// at once, its subscriptions replayed before anything else). Raise it for fleets
        /// of thousands of clients per node, where 500 ms would bunch the new handshakes.
        ldm_jitter: Duration
    );
    setter!(
        /// The bound on how long a planned switch keeps the old link's subscriptions.
        /// They end as soon as the cluster knows the new link's interest: a probe subject
        /// (under `inbox_prefix`) subscribed on the new link after the replayed
        /// subscriptions is published on the old link until it arrives on the new one,
        /// then one more probe trip passes (for publishers on a third node), the two
        /// links' streams are cut at a marker so that nothing arrives twice, and the old
        /// link gets UNSUB. Only when the probe never arrives (the two servers are not in
        /// one cluster, or the user may not publish or subscribe to the probe subject)
        /// does the overlap last this long, counted from when the new server confirmed
        /// the replayed subscriptions; messages published during it can then arrive
        /// twice. Default: 1 s; at most [`MAX_RECONNECT_DELAY`].
        ldm_overlap: Duration
    );
    core_setter!(
        /// A PING goes out after this long without inbound bytes. Default: 30 s; at most
        /// [`MAX_TIMEOUT`].
        ping_interval: Duration => ping_interval
    );
    core_setter!(
        /// Unanswered PINGs above this count mark the link stale. Default: 2.
        max_pings_outstanding: usize => max_pings_outstanding
    );
    core_setter!(
        /// Data pending and no byte accepted by the socket for this long marks the link
        /// stale. Default: 10 s; positive, at most [`MAX_TIMEOUT`].
        write_stall_timeout: Duration => write_stall_timeout
    );
    core_setter!(
        /// Accept publishes while disconnected (up to the buffer bounds). Default: true.
        buffer_while_disconnected: bool => buffer_while_disconnected
    );
    setter!(
        /// What a publish does when the buffer is full while disconnected. Default: Error.
        overflow: OverflowPolicy
    );
    setter!(
        /// How long `publish().await` waits for room. Default: 5 s; at most [`MAX_TIMEOUT`].
        block_deadline: Duration
    );
    core_setter!(
        /// Retain written, unconfirmed publishes and resend them after a reconnect
        /// (at-least-once for core NATS; duplicates possible). Default: false.
        resend_unconfirmed: bool => resend_unconfirmed
    );
    core_setter!(
        /// While unconfirmed data exists, a confirm PING at least this often (also after
        /// every 1 MiB written). A `Disconnected` reports as possibly lost what was
        /// written in the last `confirm_interval` plus one round trip before the link was
        /// found dead: with the default 20 ms, at most about 25 messages at 1,000 msg/s on
        /// a local network when the loss shows at once (a reset, a closed socket). A link
        /// that goes silent is found only after `pong_timeout`, and what was written
        /// meanwhile is reported too. Longer
        /// intervals send fewer PINGs and report more; the default's throughput cost
        /// against 1 s is under 2 % (`tether bench pub --confirm-interval 20ms,1s`).
        /// Default: 20 ms; positive, at most [`MAX_TIMEOUT`].
        confirm_interval: Duration => confirm_interval
    );
    core_setter!(
        /// Keep written requests pending across a reconnect and resend them. Default: false.
        request_retry_after_reconnect: bool => retain_requests
    );
    core_setter!(
        /// max_payload assumed until the first INFO. Default: 1 MiB.
        assumed_max_payload: usize => assumed_max_payload
    );
    core_setter!(
        /// Outbound control lines longer than this are refused. Default: 4096.
        max_control_line: usize => max_control_line
    );
    core_setter!(
        /// Largest inbound payload accepted; more is a protocol error. Default: 64 MiB.
        max_inbound_payload: usize => decoder.max_payload
    );
    setter!(
        /// Time bound of `drain()`. Default: 30 s; at most [`MAX_TIMEOUT`].
        drain_timeout: Duration
    );
    setter!(
        /// Time bound of `flush()` and of the flush inside `close()`. Default: 10 s; at most
        /// [`MAX_TIMEOUT`].
        flush_timeout: Duration
    );
    setter!(
        /// Default request timeout. Default: 10 s; at most [`MAX_TIMEOUT`] (a per-call
        /// timeout given to `request_with` may be anything, `Duration::MAX` included).
        request_timeout: Duration
    );
    /// Do not receive this connection's own publishes. Default: false.
    #[must_use]
    pub fn no_echo(mut self, value: bool) -> Self {
        self.core.echo = !value;
        self
    }
    setter!(
        /// Capacity of the event queue. Default: 1024.
        event_queue: usize
    );

    /// How long a written PING may wait for its PONG. Default: the smaller of 10 s and
    /// the ping interval; at most [`MAX_TIMEOUT`].
    #[must_use]
    pub fn pong_timeout(mut self, value: Duration) -> Self {
        self.pong_timeout = Some(value);
        self
    }

    /// Outbound buffer bounds: encoded bytes and messages, whichever is reached first.
    /// Default: 8 MiB and 1,000,000.
    #[must_use]
    pub fn outbound_buffer(mut self, bytes: usize, msgs: usize) -> Self {
        self.core.buffer = BufferLimits {
            max_bytes: bytes,
            max_msgs: msgs,
        };
        self
    }

    /// Pending limits per subscription. Default: 65,536 messages and 64 MiB.
    #[must_use]
    pub fn pending_limits(mut self, msgs: usize, bytes: usize) -> Self {
        self.pending_msgs = msgs;
        self.pending_bytes = bytes;
        self
    }

    /// Prefix of the request inbox. Default: `_INBOX`.
    #[must_use]
    pub fn inbox_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.inbox_prefix = prefix.into();
        self
    }

    /// User and password sent in CONNECT.
    #[must_use]
    pub fn user_and_password(mut self, user: impl Into<String>, pass: impl Into<String>) -> Self {
        self.user = Some((user.into(), pass.into()));
        self
    }

    /// Use TLS with every server, whatever its URL's scheme (`nats://` URLs too); a
    /// server whose INFO offers no TLS fails the attempt. Without any TLS option, a
    /// `tls://` URL still uses TLS, and a `nats://` one upgrades when the server's INFO
    /// says `tls_required` (trusting the system's roots). See [`crate::tls`].
    #[must_use]
    pub fn tls_required(mut self, value: bool) -> Self {
        self.tls.required = value;
        self
    }

    /// Trust the CA certificates of this PEM file (and no others) for the servers'
    /// certificates; implies TLS on every server. The file is read and checked when the
    /// client is created: a file that cannot be read or holds no PEM certificate is an
    /// [`OptionsError`] naming it.
    #[must_use]
    pub fn tls_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Present this client certificate (a PEM chain) with its private key (PEM: PKCS#8,
    /// PKCS#1 or SEC1) to servers that verify clients (mTLS); implies TLS on every
    /// server. Both files are read when the client is created, and a key that does not
    /// belong to the certificate is an [`OptionsError`] naming the files.
    #[must_use]
    pub fn tls_client_cert(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.tls.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Run the TLS handshake before the server's INFO, for servers configured with
    /// `handshake_first` (nats-server's `tls { handshake_first: true }`); implies TLS.
    /// Such a server does not talk to a client that waits for INFO first.
    #[must_use]
    pub fn tls_first(mut self, value: bool) -> Self {
        self.tls.first = value;
        self
    }

    /// Token sent in CONNECT.
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Decentralized (JWT) auth from a `.creds` file: the user JWT and nkey seed, as
    /// `nsc` writes them. The file is read again at every connect attempt, so a rotated
    /// file is used without a restart; a JWT with an expiry is refreshed ahead of it (see
    /// [`jwt_refresh_lead`](Self::jwt_refresh_lead)). A file that cannot be read or
    /// parsed fails that attempt with an error naming the file.
    #[must_use]
    pub fn credentials_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.keys = Some(crate::credentials::KeySource::File(path.into()));
        self
    }

    /// Nkey auth: the user's nkey seed (`SU...`) signs the server's nonce; CONNECT
    /// carries the public key. A seed that is not valid is rejected when the options are
    /// built.
    #[must_use]
    pub fn nkey(mut self, seed: impl Into<String>) -> Self {
        self.keys = Some(crate::credentials::KeySource::Seed(seed.into()));
        self
    }

    /// Credentials from a callback, called (and awaited) at every connect attempt and
    /// at every JWT refresh: for secret managers and vaults, where the current secret is
    /// fetched when it is needed. It returns [`Credentials`](crate::Credentials) (user
    /// and password, token, nkey seed, user JWT and seed, or a `.creds` text), or an error
    /// whose text fails that attempt (and is shown: never put a secret in it). An answer
    /// slower than connection_timeout fails the attempt. Credentials that change between
    /// attempts count as new for the auth rules (a refusal of new ones is no strike).
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), tether::ConnectError> {
    /// let client = tether::ConnectOptions::new()
    ///     .credentials_callback(|| async {
    ///         // e.g. fetch the current password from a secret manager
    ///         Ok::<_, std::io::Error>(tether::Credentials::user_and_password("svc", "s3cret"))
    ///     })
    ///     .connect("nats://127.0.0.1:4222")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn credentials_callback<F, Fut, E>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<crate::Credentials, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.keys = Some(crate::credentials::KeySource::Callback(
            std::sync::Arc::new(move || {
                let fut = f();
                Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
            }),
        ));
        self
    }

    /// How long before the user JWT's `exp` the client reads the credentials again and,
    /// if the fresh JWT expires later, moves to a new link with them by the planned
    /// make-before-break switch (`EventKind::Migrated`); if not, it emits
    /// `EventKind::CredentialsExpiring` and waits for the server to end the link, then
    /// reconnects at once with credentials read again. Default: none set, which means
    /// min(max(30 s, 10 % of the JWT's lifetime), 50 % of it); at most
    /// [`MAX_JWT_REFRESH_LEAD`].
    #[must_use]
    pub fn jwt_refresh_lead(mut self, lead: Duration) -> Self {
        self.jwt_refresh_lead = Some(lead);
        self
    }

    /// A custom reconnect delay, overriding the backoff: `f(server, consecutive failures,
    /// time since the outage began)` returns the wait before the next attempt to that
    /// server (the first attempt after a link drops still goes out at once). It runs on
    /// the connection's task: keep it quick, and do not panic (a panic closes the client
    /// with `ClosedReason::DriverFailed`).
    #[must_use]
    pub fn reconnect_delay(
        mut self,
        f: impl Fn(&str, u32, Duration) -> Duration + Send + Sync + 'static,
    ) -> Self {
        self.reconnect_delay = Some(Arc::new(f));
        self
    }

    /// The same wait before every reconnect attempt to a server, instead of the jittered
    /// backoff (the first attempt after a link drops still goes out at once). Shorthand
    /// for [`reconnect_delay`](Self::reconnect_delay) returning `wait`.
    #[must_use]
    pub fn fixed_reconnect_wait(self, wait: Duration) -> Self {
        self.reconnect_delay(move |_, _, _| wait)
    }

    /// A callback for every event, starting with
    /// [`EventKind::CurrentState`](crate::EventKind::CurrentState) (the state at connect)
    /// and ending with `Closed`. Default: none.
    ///
    /// It runs on a task of the runtime (never an OS thread of its own). The connection
    /// never waits for it: events wait in the callback's bounded queue (`event_queue`),
    /// where a slow callback only makes them merge (loss counts add up, state changes
    /// collapse, other events are counted by `EventsLagged`). While it runs, though, it
    /// holds a runtime worker, so it must not block for long: hand slow or blocking work
    /// to `tokio::spawn`, `tokio::task::spawn_blocking` or a channel.
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), tether::ConnectError> {
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// let client = tether::ConnectOptions::new()
    ///     .event_callback(move |e| {
    ///         let _ = tx.send(e); // cheap; the slow part runs elsewhere
    ///     })
    ///     .connect("nats://127.0.0.1:4222")
    ///     .await?;
    /// tokio::spawn(async move {
    ///     while let Some(e) = rx.recv().await {
    ///         eprintln!("{e}"); // or slow work: a database, a remote audit log
    ///     }
    /// });
    /// # drop(client); Ok(()) }
    /// ```
    #[must_use]
    pub fn event_callback(mut self, f: impl Fn(Event) + Send + Sync + 'static) -> Self {
        self.event_callback = Some(Arc::new(f));
        self
    }

    pub(crate) fn effective_pong_timeout(&self) -> Duration {
        self.pong_timeout
            .unwrap_or_else(|| DEFAULT_PONG_TIMEOUT.min(self.core.ping_interval))
    }

    /// Check the options for contradictions.
    #[allow(clippy::too_many_lines)] // a flat list of independent checks: kept as one list on purpose
    pub fn validate(&self) -> Result<(), OptionsError> {
        let contradiction = |first: String, second: String, fix: &str| {
            Err(OptionsError::Contradiction {
                first,
                second,
                fix: fix.to_owned(),
            })
        };
        let methods: Vec<&str> = [
            self.user.as_ref().map(|_| "user_and_password"),
            self.token.as_ref().map(|_| "token"),
            self.keys.as_ref().map(|k| match k {
                crate::credentials::KeySource::File(_) => "credentials_file",
                crate::credentials::KeySource::Seed(_) => "nkey",
                crate::credentials::KeySource::Callback(_) => "credentials_callback",
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let [first, second, ..] = methods[..] {
            return contradiction(
                first.to_owned(),
                second.to_owned(),
                "a connection authenticates one way; keep only the method your server expects",
            );
        }
        if let Some(crate::credentials::KeySource::Seed(seed)) = &self.keys {
            crate::credentials::check_seed(seed).map_err(|e| OptionsError::Invalid {
                option: "nkey",
                value: "<redacted>".into(),
                fix: e.to_string(),
            })?;
        }
        self.tls.check()?;
        if self.jwt_refresh_lead.is_some_and(|l| l.is_zero()) {
            return Err(OptionsError::Invalid {
                option: "jwt_refresh_lead",
                value: "0s".into(),
                fix:
                    "refresh ahead of expiry: use a positive lead such as 30s, or leave the default"
                        .into(),
            });
        }
        let c = &self.core;
        let bounded = [
            ("connection_timeout", self.connection_timeout, MAX_TIMEOUT),
            ("ping_interval", c.ping_interval, MAX_TIMEOUT),
            ("pong_timeout", self.effective_pong_timeout(), MAX_TIMEOUT),
            ("write_stall_timeout", c.write_stall_timeout, MAX_TIMEOUT),
            ("confirm_interval", c.confirm_interval, MAX_TIMEOUT),
            ("block_deadline", self.block_deadline, MAX_TIMEOUT),
            ("drain_timeout", self.drain_timeout, MAX_TIMEOUT),
            ("flush_timeout", self.flush_timeout, MAX_TIMEOUT),
            ("request_timeout", self.request_timeout, MAX_TIMEOUT),
            ("reconnect_wait", self.reconnect_wait, MAX_RECONNECT_DELAY),
            (
                "reconnect_jitter_tls",
                self.reconnect_jitter_tls,
                MAX_RECONNECT_DELAY,
            ),
            ("ldm_jitter", self.ldm_jitter, MAX_RECONNECT_DELAY),
            ("ldm_overlap", self.ldm_overlap, MAX_RECONNECT_DELAY),
            (
                "jwt_refresh_lead",
                self.jwt_refresh_lead.unwrap_or_default(),
                MAX_JWT_REFRESH_LEAD,
            ),
        ];
        for (option, value, max) in bounded {
            if value > max {
                return Err(OptionsError::Invalid {
                    option,
                    value: format!("{value:?}"),
                    fix: format!(
                        "the bound is {max:?}; a larger value is almost always a unit mistake"
                    ),
                });
            }
        }
        for (option, value) in [
            ("write_stall_timeout", c.write_stall_timeout),
            ("confirm_interval", c.confirm_interval),
        ] {
            if value.is_zero() {
                return Err(OptionsError::Invalid {
                    option,
                    value: "0s".into(),
                    fix: "use a positive duration (every write would count as a stall or call for a PING)".into(),
                });
            }
        }
        if c.max_pings_outstanding == 0 {
            return contradiction(
                "max_pings_outstanding = 0".into(),
                format!("ping_interval = {:?}", c.ping_interval),
                "a keepalive PING would count as stale at once; set max_pings_outstanding to 1 or more",
            );
        }
        if c.ping_interval.is_zero() {
            return Err(OptionsError::Invalid {
                option: "ping_interval",
                value: "0s".into(),
                fix: "use a positive interval, for example 30s".into(),
            });
        }
        if self.effective_pong_timeout().is_zero() {
            return Err(OptionsError::Invalid {
                option: "pong_timeout",
                value: "0s".into(),
                fix: "use a positive timeout, for example 10s".into(),
            });
        }
        if c.buffer.max_bytes < c.assumed_max_payload {
            return contradiction(
                format!("outbound_buffer bytes = {}", c.buffer.max_bytes),
                format!("assumed_max_payload = {}", c.assumed_max_payload),
                "a message of max_payload could never be buffered; raise the buffer or lower assumed_max_payload",
            );
        }
        if c.buffer.max_msgs == 0 {
            return Err(OptionsError::Invalid {
                option: "outbound_buffer msgs",
                value: "0".into(),
                fix: "allow at least one message".into(),
            });
        }
        if self.overflow == OverflowPolicy::Block && !c.buffer_while_disconnected {
            return contradiction(
                "overflow = Block".into(),
                "buffer_while_disconnected = false".into(),
                "Block waits for room in the disconnected buffer, which is off; enable buffering or use OverflowPolicy::Error",
            );
        }
        if self.connection_timeout.is_zero() {
            return Err(OptionsError::Invalid {
                option: "connection_timeout",
                value: "0s".into(),
                fix: "use a positive timeout, for example 5s".into(),
            });
        }
        if self.pending_msgs == 0 || self.pending_bytes == 0 {
            return Err(OptionsError::Invalid {
                option: "pending_limits",
                value: format!("{} msgs / {} bytes", self.pending_msgs, self.pending_bytes),
                fix: "allow at least one message and one byte".into(),
            });
        }
        if self.event_queue == 0 {
            return Err(OptionsError::Invalid {
                option: "event_queue",
                value: "0".into(),
                fix: "use a capacity of at least 1".into(),
            });
        }
        tether_proto::subject::validate_publish_subject(&self.inbox_prefix).map_err(|e| {
            OptionsError::Invalid {
                option: "inbox_prefix",
                value: self.inbox_prefix.clone(),
                fix: e.to_string(),
            }
        })?;
        Ok(())
    }

    pub(crate) fn core_config(&self) -> conn::Config {
        conn::Config {
            pong_timeout: self.effective_pong_timeout(),
            ..self.core.clone()
        }
    }

    /// Connect to one or more servers (a URL, a comma-separated list, or a slice).
    ///
    /// With [`ConnectPolicy::FailFast`] (the default) every server is tried once and the
    /// error lists each server, address and why. Must be called within a tokio runtime.
    pub async fn connect(self, servers: impl IntoServers) -> Result<Client, ConnectError> {
        self.validate().map_err(ConnectError::Options)?;
        let servers = servers.into_servers()?;
        Client::connect_with(self, servers).await
    }
}

/// Anything that names one or more servers.
pub trait IntoServers {
    /// Parse into server addresses.
    fn into_servers(self) -> Result<Vec<ServerAddr>, ConnectError>;
}

fn parse_list<'a>(
    items: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<ServerAddr>, ConnectError> {
    let mut out = Vec::new();
    for item in items {
        for part in item.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            out.push(ServerAddr::parse(part).map_err(|e| ConnectError::InvalidUrl(e.to_string()))?);
        }
    }
    if out.is_empty() {
        out.push(
            ServerAddr::parse(DEFAULT_SERVER)
                .map_err(|e| ConnectError::InvalidUrl(e.to_string()))?,
        );
    }
    Ok(out)
}

impl IntoServers for &str {
    fn into_servers(self) -> Result<Vec<ServerAddr>, ConnectError> {
        parse_list([self])
    }
}
impl IntoServers for String {
    fn into_servers(self) -> Result<Vec<ServerAddr>, ConnectError> {
        parse_list([self.as_str()])
    }
}
impl IntoServers for &String {
    fn into_servers(self) -> Result<Vec<ServerAddr>, ConnectError> {
        parse_list([self.as_str()])
    }
}
impl IntoServers for Vec<String> {
    fn into_servers(self) -> Result<Vec<ServerAddr>, ConnectError> {
        parse_list(self.iter().map(String::as_str))
    }
}
impl IntoServers for &[String] {
    fn into_servers(self) -> Result<Vec<ServerAddr>, ConnectError> {
        parse_list(self.iter().map(String::as_str))
    }
}
impl IntoServers for &[&str] {
    fn into_servers(self) -> Result<Vec<ServerAddr>, ConnectError> {
        parse_list(self.iter().copied())
    }
}
impl<const N: usize> IntoServers for [&str; N] {
    fn into_servers(self) -> Result<Vec<ServerAddr>, ConnectError> {
        parse_list(self.iter().copied())
    }
}
impl IntoServers for Vec<ServerAddr> {
    fn into_servers(self) -> Result<Vec<ServerAddr>, ConnectError> {
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        ConnectOptions::new().validate().unwrap();
        assert_eq!(
            ConnectOptions::new()
                .ping_interval(Duration::from_secs(2))
                .effective_pong_timeout(),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn the_core_gets_this_crates_defaults_and_every_setter() {
        let c = ConnectOptions::new().core_config();
        assert_eq!(
            (c.ping_interval, c.pong_timeout, c.max_pings_outstanding),
            (
                DEFAULT_PING_INTERVAL,
                DEFAULT_PONG_TIMEOUT,
                DEFAULT_MAX_PINGS_OUTSTANDING
            )
        );
        assert_eq!(
            (c.write_stall_timeout, c.confirm_interval, c.confirm_bytes),
            (
                DEFAULT_WRITE_STALL_TIMEOUT,
                DEFAULT_CONFIRM_INTERVAL,
                conn::DEFAULT_CONFIRM_BYTES
            )
        );
        assert_eq!(
            (c.buffer.max_bytes, c.buffer.max_msgs),
            (DEFAULT_BUFFER_BYTES, DEFAULT_BUFFER_MSGS)
        );
        assert!(c.buffer_while_disconnected && c.echo);
        assert!(!c.resend_unconfirmed && !c.retain_requests);
        assert_eq!(
            (c.assumed_max_payload, c.max_control_line),
            (DEFAULT_ASSUMED_MAX_PAYLOAD, DEFAULT_MAX_CONTROL_LINE)
        );
        assert_eq!(c.decoder.max_payload, DEFAULT_MAX_INBOUND_PAYLOAD);
        assert_eq!((c.name, c.version.as_str()), (None, crate::VERSION));
        let c = ConnectOptions::new()
            .name("n")
            .ping_interval(Duration::from_secs(3))
            .pong_timeout(Duration::from_secs(1))
            .outbound_buffer(10, 2)
            .no_echo(true)
            .request_retry_after_reconnect(true)
            .max_inbound_payload(99)
            .core_config();
        assert_eq!(c.name.as_deref(), Some("n"));
        assert_eq!(
            (c.ping_interval, c.pong_timeout),
            (Duration::from_secs(3), Duration::from_secs(1))
        );
        assert_eq!((c.buffer.max_bytes, c.buffer.max_msgs), (10, 2));
        assert!(!c.echo && c.retain_requests);
        assert_eq!(c.decoder.max_payload, 99);
    }

    #[test]
    fn contradictions_name_both_values() {
        let e = ConnectOptions::new()
            .overflow(OverflowPolicy::Block)
            .buffer_while_disconnected(false)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Block") && e.contains("buffer_while_disconnected"),
            "{e}"
        );
        let e = ConnectOptions::new()
            .outbound_buffer(1000, 10)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1000") && e.contains("assumed_max_payload"),
            "{e}"
        );
        assert!(ConnectOptions::new()
            .max_pings_outstanding(0)
            .validate()
            .is_err());
        assert!(ConnectOptions::new()
            .ping_interval(Duration::ZERO)
            .validate()
            .is_err());
        assert!(ConnectOptions::new()
            .pong_timeout(Duration::ZERO)
            .validate()
            .is_err());
    }
}
