//! Consumers: configuration, info, and their management calls on [`Context`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::api::{self, nanos, validate_name};
use super::context::Context;
use super::error::JetStreamError;
use super::stream::ClusterInfo;
use super::ErrorCode;

/// How a consumer's messages are acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckPolicy {
    /// Each message is acked on its own; unacked ones are redelivered after ack_wait.
    #[default]
    Explicit,
    /// No acks: a message counts as handled once delivered.
    None,
    /// Acking a message acks every earlier one too.
    All,
}

/// Where a new consumer starts in its stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicy {
    /// From the first message.
    #[default]
    All,
    /// From the last message.
    Last,
    /// Only messages stored after it was created.
    New,
    /// From `opt_start_seq`.
    ByStartSequence,
    /// The last message of each subject.
    LastPerSubject,
}

/// A pull consumer's configuration. [`ConsumerConfig::durable`] names one that outlives
/// its clients; [`ConsumerConfig::ephemeral`] one the server removes after
/// `inactive_threshold` without pulls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// The consumer's name (for an ephemeral one, empty lets the server choose).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Set for a durable consumer (equal to `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable_name: Option<String>,
    /// A free-text description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where it starts.
    #[serde(default)]
    pub deliver_policy: DeliverPolicy,
    /// The start sequence for [`DeliverPolicy::ByStartSequence`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_start_seq: Option<u64>,
    /// How messages are acked.
    #[serde(default)]
    pub ack_policy: AckPolicy,
    /// How long the server waits for an ack before redelivering; zero takes the
    /// server's default (30 s).
    #[serde(default, with = "nanos", skip_serializing_if = "api::is_zero")]
    pub ack_wait: Duration,
    /// Deliveries of a message at most; -1 unlimited.
    #[serde(default = "unlimited")]
    pub max_deliver: i64,
    /// Only messages on this subject (empty: all of the stream's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub filter_subject: String,
    /// Only messages on these subjects (not together with `filter_subject`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter_subjects: Vec<String>,
    /// `instant`: deliver as fast as pulled.
    #[serde(default = "instant")]
    pub replay_policy: String,
    /// Messages delivered and not yet acked at most; then the server delivers no more
    /// until acks come. Zero takes the server's default (1000).
    #[serde(default, skip_serializing_if = "api::is_zero_i64")]
    pub max_ack_pending: i64,
    /// Pull requests waiting at once at most; zero takes the server's default (512).
    #[serde(default, skip_serializing_if = "api::is_zero_i64")]
    pub max_waiting: i64,
    /// The largest batch one pull may ask for; zero: no limit. A bigger pull is refused
    /// (`409 Exceeded MaxRequestBatch`).
    #[serde(default, skip_serializing_if = "api::is_zero_i64")]
    pub max_batch: i64,
    /// The longest expiry one pull may ask for; zero: no limit.
    #[serde(default, with = "nanos", skip_serializing_if = "api::is_zero")]
    pub max_expires: Duration,
    /// Redelivery delays, one per delivery (the last repeats); overrides ack_wait.
    #[serde(default, with = "nanos::vec", skip_serializing_if = "Vec::is_empty")]
    pub backoff: Vec<Duration>,
    /// An ephemeral consumer goes after this long without pulls; zero takes the
    /// server's default (5 s).
    #[serde(default, with = "nanos", skip_serializing_if = "api::is_zero")]
    pub inactive_threshold: Duration,
    /// Replicas; zero follows the stream.
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub num_replicas: usize,
    /// Keep its state in memory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mem_storage: bool,
}

fn unlimited() -> i64 {
    -1
}

fn instant() -> String {
    "instant".to_owned()
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
fn is_zero_usize(n: &usize) -> bool {
    *n == 0
}

impl ConsumerConfig {
    fn base() -> Self {
        Self {
            name: None,
            durable_name: None,
            description: None,
            deliver_policy: DeliverPolicy::All,
            opt_start_seq: None,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::ZERO,
            max_deliver: -1,
            filter_subject: String::new(),
            filter_subjects: Vec::new(),
            replay_policy: instant(),
            max_ack_pending: 0,
            max_waiting: 0,
            max_batch: 0,
            max_expires: Duration::ZERO,
            backoff: Vec::new(),
            inactive_threshold: Duration::ZERO,
            num_replicas: 0,
            mem_storage: false,
        }
    }

    /// A durable pull consumer named `name` (explicit acks, from the first message).
    pub fn durable(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            name: Some(name.clone()),
            durable_name: Some(name),
            ..Self::base()
        }
    }

    /// An ephemeral pull consumer whose name the server chooses.
    pub fn ephemeral() -> Self {
        Self::base()
    }

    /// Only messages on these subjects.
    pub fn filter_subjects<S: Into<String>>(
        mut self,
        subjects: impl IntoIterator<Item = S>,
    ) -> Self {
        self.filter_subjects = subjects.into_iter().map(Into::into).collect();
        self
    }

    /// Set the ack policy.
    pub fn ack_policy(mut self, p: AckPolicy) -> Self {
        self.ack_policy = p;
        self
    }

    /// Set the deliver policy.
    pub fn deliver_policy(mut self, p: DeliverPolicy) -> Self {
        self.deliver_policy = p;
        self
    }

    /// Redeliver unacked messages after `d`.
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }

    /// Deliver a message at most `n` times.
    pub fn max_deliver(mut self, n: i64) -> Self {
        self.max_deliver = n;
        self
    }

    /// At most `n` messages delivered and unacked.
    pub fn max_ack_pending(mut self, n: i64) -> Self {
        self.max_ack_pending = n;
        self
    }

    /// Pulls may ask for at most `n` messages.
    pub fn max_batch(mut self, n: i64) -> Self {
        self.max_batch = n;
        self
    }

    /// Pulls may wait at most `d`.
    pub fn max_expires(mut self, d: Duration) -> Self {
        self.max_expires = d;
        self
    }

    /// Redelivery delays.
    pub fn backoff(mut self, delays: Vec<Duration>) -> Self {
        self.backoff = delays;
        self
    }

    /// An ephemeral consumer goes after `d` without pulls.
    pub fn inactive_threshold(mut self, d: Duration) -> Self {
        self.inactive_threshold = d;
        self
    }

    /// Keep its state in memory.
    pub fn mem_storage(mut self, on: bool) -> Self {
        self.mem_storage = on;
        self
    }

    fn validate(&self) -> Result<(), JetStreamError> {
        if let Some(n) = &self.name {
            validate_name("consumer", n)?;
        }
        if let Some(d) = &self.durable_name {
            validate_name("consumer", d)?;
            if self.name.as_deref().is_some_and(|n| n != d) {
                return Err(JetStreamError::InvalidOption {
                    option: "durable_name",
                    reason: format!(
                        "durable_name {d:?} differs from name {:?}; set one, or both alike",
                        self.name.as_deref().unwrap_or_default()
                    ),
                });
            }
        }
        if !self.filter_subject.is_empty() && !self.filter_subjects.is_empty() {
            return Err(JetStreamError::InvalidOption {
                option: "filter_subjects",
                reason: "set filter_subject or filter_subjects, not both".to_owned(),
            });
        }
        for s in std::iter::once(&self.filter_subject)
            .filter(|s| !s.is_empty())
            .chain(&self.filter_subjects)
        {
            if tether_proto::subject::validate_subscribe_subject(s).is_err() {
                return Err(JetStreamError::InvalidOption {
                    option: "filter_subjects",
                    reason: format!("{s:?} is not a valid subject"),
                });
            }
        }
        Ok(())
    }

    /// The name the create request goes to, if the config has one.
    fn target_name(&self) -> Option<&str> {
        self.name.as_deref().or(self.durable_name.as_deref())
    }
}

/// A consumer's sequence pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct SequenceInfo {
    /// The consumer's own sequence.
    #[serde(default)]
    pub consumer_seq: u64,
    /// The stream's sequence.
    #[serde(default)]
    pub stream_seq: u64,
}

/// A consumer's configuration and state, as the server reports them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct ConsumerInfo {
    /// Its stream.
    pub stream_name: String,
    /// Its name.
    pub name: String,
    /// Its configuration.
    pub config: ConsumerConfig,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub created: String,
    /// The last message delivered.
    #[serde(default)]
    pub delivered: SequenceInfo,
    /// Everything up to here is acked.
    #[serde(default)]
    pub ack_floor: SequenceInfo,
    /// Delivered and not yet acked.
    #[serde(default)]
    pub num_ack_pending: u64,
    /// Redelivered and not yet acked.
    #[serde(default)]
    pub num_redelivered: u64,
    /// Pull requests waiting.
    #[serde(default)]
    pub num_waiting: u64,
    /// Messages not yet delivered.
    #[serde(default)]
    pub num_pending: u64,
    /// Its placement in a cluster.
    #[serde(default)]
    pub cluster: Option<ClusterInfo>,
}

/// A pull consumer on a stream: fetch batches or consume continuously.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub(crate) ctx: Context,
    pub(crate) stream: String,
    pub(crate) name: String,
    pub(crate) info: ConsumerInfo,
}

impl Consumer {
    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The info returned when this handle was made.
    pub fn cached_info(&self) -> &ConsumerInfo {
        &self.info
    }

    /// The consumer's current info from the server.
    pub async fn info(&mut self) -> Result<&ConsumerInfo, JetStreamError> {
        self.info = self.ctx.consumer_info(&self.stream, &self.name).await?;
        Ok(&self.info)
    }
}

#[derive(Serialize)]
struct CreateRequest<'a> {
    stream_name: &'a str,
    config: &'a ConsumerConfig,
    #[serde(skip_serializing_if = "str::is_empty")]
    action: &'a str,
}

#[derive(Deserialize)]
struct Success {
    #[serde(default)]
    success: bool,
}

#[derive(Serialize)]
struct Page {
    offset: usize,
}

#[derive(Deserialize)]
struct NamesPage {
    #[serde(default)]
    total: usize,
    #[serde(default)]
    consumers: Option<Vec<String>>,
}

impl Context {
    async fn put_consumer(
        &self,
        stream: &str,
        config: ConsumerConfig,
        action: &str,
    ) -> Result<Consumer, JetStreamError> {
        validate_name("stream", stream)?;
        config.validate()?;
        let tail = match config.target_name() {
            Some(n) => format!("CONSUMER.CREATE.{stream}.{n}"),
            None => format!("CONSUMER.CREATE.{stream}"),
        };
        let body = CreateRequest {
            stream_name: stream,
            config: &config,
            action,
        };
        let info: ConsumerInfo = self.api_json(&tail, &body).await.map_err(|e| match e {
            JetStreamError::Api { error, .. }
                if error.error_code() == ErrorCode::CONSUMER_EXISTS =>
            {
                JetStreamError::ConsumerExists {
                    stream: stream.to_owned(),
                    consumer: config.target_name().unwrap_or_default().to_owned(),
                    error,
                }
            }
            e => e.for_names(stream, config.target_name()),
        })?;
        Ok(Consumer {
            ctx: self.clone(),
            stream: stream.to_owned(),
            name: info.name.clone(),
            info,
        })
    }

    /// Create a pull consumer on `stream`. Creating one that exists with the same
    /// configuration returns it; with a different one,
    /// [`JetStreamError::ConsumerExists`].
    pub async fn create_consumer(
        &self,
        stream: &str,
        config: ConsumerConfig,
    ) -> Result<Consumer, JetStreamError> {
        self.put_consumer(stream, config, "create").await
    }

    /// Change an existing consumer's configuration.
    pub async fn update_consumer(
        &self,
        stream: &str,
        config: ConsumerConfig,
    ) -> Result<Consumer, JetStreamError> {
        self.put_consumer(stream, config, "update").await
    }

    /// A handle on an existing consumer.
    pub async fn consumer(&self, stream: &str, name: &str) -> Result<Consumer, JetStreamError> {
        let info = self.consumer_info(stream, name).await?;
        Ok(Consumer {
            ctx: self.clone(),
            stream: stream.to_owned(),
            name: name.to_owned(),
            info,
        })
    }

    /// A consumer's configuration and state.
    pub async fn consumer_info(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<ConsumerInfo, JetStreamError> {
        validate_name("stream", stream)?;
        validate_name("consumer", name)?;
        self.api_request(&format!("CONSUMER.INFO.{stream}.{name}"), b"")
            .await
            .map_err(|e| e.for_names(stream, Some(name)))
    }

    /// Delete a consumer.
    pub async fn delete_consumer(&self, stream: &str, name: &str) -> Result<(), JetStreamError> {
        validate_name("stream", stream)?;
        validate_name("consumer", name)?;
        let r: Success = self
            .api_request(&format!("CONSUMER.DELETE.{stream}.{name}"), b"")
            .await
            .map_err(|e| e.for_names(stream, Some(name)))?;
        if r.success {
            Ok(())
        } else {
            Err(JetStreamError::Decode {
                subject: format!("CONSUMER.DELETE.{stream}.{name}"),
                error: "the server answered without success".to_owned(),
            })
        }
    }

    /// The names of a stream's consumers (all pages).
    pub async fn consumer_names(&self, stream: &str) -> Result<Vec<String>, JetStreamError> {
        validate_name("stream", stream)?;
        let mut out = Vec::new();
        loop {
            let page: NamesPage = self
                .api_json(
                    &format!("CONSUMER.NAMES.{stream}"),
                    &Page { offset: out.len() },
                )
                .await
                .map_err(|e| e.for_names(stream, None))?;
            let got = page.consumers.unwrap_or_default();
            let empty = got.is_empty();
            out.extend(got);
            if empty || out.len() >= page.total {
                return Ok(out);
            }
        }
    }
}
