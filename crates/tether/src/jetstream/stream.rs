//! Streams: configuration, info, and their management calls on [`Context`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::api::{self, nanos, validate_name};
use super::context::Context;
use super::error::JetStreamError;

/// How a stream decides that a message may go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetentionPolicy {
    /// Kept until a limit (max_msgs, max_bytes, max_age...) removes it.
    #[default]
    Limits,
    /// Kept while a consumer that has not acked it exists.
    Interest,
    /// Removed once acked by its (single) consumer: a work queue.
    #[serde(rename = "workqueue")]
    WorkQueue,
}

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    /// On disk.
    #[default]
    File,
    /// In memory (lost when the server stops).
    Memory,
}

/// What a full stream does with a new message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscardPolicy {
    /// Remove the oldest messages to make room.
    #[default]
    Old,
    /// Refuse the new message (the publish gets an error).
    New,
}

/// A stream's configuration. [`StreamConfig::new`] plus the builder methods cover the
/// common fields; limits of -1 mean "unlimited", as on the wire.
///
/// Fields the server knows and tether does not model are not kept: an
/// [`update_stream`](Context::update_stream) with a config read by
/// [`stream_info`](Context::stream_info) resets them to their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StreamConfig {
    /// The stream's name (letters, digits, `-`, `_`).
    pub name: String,
    /// Subjects it captures (wildcards allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// A free-text description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Retention policy.
    #[serde(default)]
    pub retention: RetentionPolicy,
    /// Storage type.
    #[serde(default)]
    pub storage: StorageType,
    /// Most messages kept; -1 unlimited.
    #[serde(default = "unlimited")]
    pub max_msgs: i64,
    /// Most bytes kept; -1 unlimited.
    #[serde(default = "unlimited")]
    pub max_bytes: i64,
    /// Oldest message kept; zero keeps them forever.
    #[serde(default, with = "nanos")]
    pub max_age: Duration,
    /// Largest message accepted; -1 unlimited (the server's max_payload still applies).
    #[serde(default = "unlimited_i32")]
    pub max_msg_size: i32,
    /// Most messages kept per subject; -1 unlimited.
    #[serde(default = "unlimited")]
    pub max_msgs_per_subject: i64,
    /// Most consumers; -1 unlimited.
    #[serde(default = "unlimited_i32")]
    pub max_consumers: i32,
    /// What happens when a limit is reached.
    #[serde(default)]
    pub discard: DiscardPolicy,
    /// Replicas in a cluster (1 to 5).
    #[serde(default = "one")]
    pub num_replicas: usize,
    /// How long a `Nats-Msg-Id` is remembered for dedupe; zero takes the server's
    /// default (2 minutes).
    #[serde(default, with = "nanos", skip_serializing_if = "api::is_zero")]
    pub duplicate_window: Duration,
}

fn unlimited() -> i64 {
    -1
}

fn unlimited_i32() -> i32 {
    -1
}

fn one() -> usize {
    1
}

impl StreamConfig {
    /// A stream named `name` capturing `subjects`, with the server's defaults (limits
    /// retention, file storage, no limits, one replica).
    pub fn new<S: Into<String>>(
        name: impl Into<String>,
        subjects: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            description: None,
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_msgs: -1,
            max_bytes: -1,
            max_age: Duration::ZERO,
            max_msg_size: -1,
            max_msgs_per_subject: -1,
            max_consumers: -1,
            discard: DiscardPolicy::Old,
            num_replicas: 1,
            duplicate_window: Duration::ZERO,
        }
    }

    /// Set the retention policy.
    pub fn retention(mut self, r: RetentionPolicy) -> Self {
        self.retention = r;
        self
    }

    /// Set the storage type.
    pub fn storage(mut self, s: StorageType) -> Self {
        self.storage = s;
        self
    }

    /// Keep messages at most this long.
    pub fn max_age(mut self, d: Duration) -> Self {
        self.max_age = d;
        self
    }

    /// Keep at most this many bytes.
    pub fn max_bytes(mut self, n: i64) -> Self {
        self.max_bytes = n;
        self
    }

    /// Keep at most this many messages.
    pub fn max_msgs(mut self, n: i64) -> Self {
        self.max_msgs = n;
        self
    }

    /// Accept messages of at most this many bytes.
    pub fn max_msg_size(mut self, n: i32) -> Self {
        self.max_msg_size = n;
        self
    }

    /// Keep this many replicas in a cluster.
    pub fn replicas(mut self, n: usize) -> Self {
        self.num_replicas = n;
        self
    }

    /// Remember `Nats-Msg-Id`s this long.
    pub fn duplicate_window(mut self, d: Duration) -> Self {
        self.duplicate_window = d;
        self
    }

    /// Set the discard policy.
    pub fn discard(mut self, d: DiscardPolicy) -> Self {
        self.discard = d;
        self
    }

    /// Set the description.
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = Some(d.into());
        self
    }
}

/// A stream's configuration and state, as the server reports them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct StreamInfo {
    /// Its configuration (with the server's defaults filled in).
    pub config: StreamConfig,
    /// Its state.
    pub state: StreamState,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub created: String,
    /// Its cluster placement, in a cluster.
    #[serde(default)]
    pub cluster: Option<ClusterInfo>,
}

/// How many messages a stream holds and which sequences.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct StreamState {
    /// Messages stored.
    #[serde(default)]
    pub messages: u64,
    /// Bytes stored.
    #[serde(default)]
    pub bytes: u64,
    /// First sequence stored.
    #[serde(default)]
    pub first_seq: u64,
    /// Last sequence stored.
    #[serde(default)]
    pub last_seq: u64,
    /// Consumers on the stream.
    #[serde(default)]
    pub consumer_count: usize,
}

/// Where a replicated stream or consumer lives.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct ClusterInfo {
    /// The cluster's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The leader's server name.
    #[serde(default)]
    pub leader: Option<String>,
    /// The other replicas.
    #[serde(default)]
    pub replicas: Vec<PeerInfo>,
}

/// A replica of a stream or consumer.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The server's name.
    pub name: String,
    /// Whether it is up to date with the leader.
    #[serde(default)]
    pub current: bool,
    /// Whether it is unreachable.
    #[serde(default)]
    pub offline: bool,
    /// Operations it lags behind.
    #[serde(default)]
    pub lag: u64,
}

/// What a purge removes: everything, or by subject, up to a sequence, or all but the
/// last `keep`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PurgeOptions {
    /// Only messages on this subject (wildcards allowed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Messages below this sequence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Keep this many of the newest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep: Option<u64>,
}

impl PurgeOptions {
    /// Purge everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only messages on `subject`.
    pub fn filter(mut self, subject: impl Into<String>) -> Self {
        self.filter = Some(subject.into());
        self
    }

    /// Messages below `seq`.
    pub fn up_to(mut self, seq: u64) -> Self {
        self.seq = Some(seq);
        self
    }

    /// Keep the newest `n`.
    pub fn keep(mut self, n: u64) -> Self {
        self.keep = Some(n);
        self
    }
}

#[derive(Deserialize)]
struct Success {
    #[serde(default)]
    success: bool,
}

#[derive(Deserialize)]
struct Purged {
    #[serde(default)]
    purged: u64,
}

#[derive(Serialize)]
struct Page<'a> {
    offset: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
}

#[derive(Deserialize)]
struct NamesPage {
    #[serde(default)]
    total: usize,
    #[serde(default)]
    streams: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct ListPage {
    #[serde(default)]
    total: usize,
    #[serde(default)]
    streams: Option<Vec<StreamInfo>>,
}

impl Context {
    /// Create a stream. Creating one that exists with the same configuration returns its
    /// info; with a different one, [`JetStreamError::StreamExists`].
    pub async fn create_stream(&self, config: StreamConfig) -> Result<StreamInfo, JetStreamError> {
        validate_name("stream", &config.name)?;
        let name = config.name.clone();
        self.api_json(&format!("STREAM.CREATE.{name}"), &config)
            .await
            .map_err(|e| match e {
                JetStreamError::Api { error, .. }
                    if error.error_code() == super::ErrorCode::STREAM_NAME_IN_USE =>
                {
                    JetStreamError::StreamExists {
                        stream: name.clone(),
                        error,
                    }
                }
                e => e,
            })
    }

    /// Change a stream's configuration (the server refuses changes it cannot make, such
    /// as the storage type).
    pub async fn update_stream(&self, config: StreamConfig) -> Result<StreamInfo, JetStreamError> {
        validate_name("stream", &config.name)?;
        let name = config.name.clone();
        self.api_json(&format!("STREAM.UPDATE.{name}"), &config)
            .await
            .map_err(|e| e.for_names(&name, None))
    }

    /// A stream's configuration and state.
    pub async fn stream_info(&self, name: &str) -> Result<StreamInfo, JetStreamError> {
        validate_name("stream", name)?;
        self.api_request(&format!("STREAM.INFO.{name}"), b"")
            .await
            .map_err(|e| e.for_names(name, None))
    }

    /// Delete a stream and everything in it.
    pub async fn delete_stream(&self, name: &str) -> Result<(), JetStreamError> {
        validate_name("stream", name)?;
        let r: Success = self
            .api_request(&format!("STREAM.DELETE.{name}"), b"")
            .await
            .map_err(|e| e.for_names(name, None))?;
        success(r, "STREAM.DELETE", name)
    }

    /// Remove messages from a stream; returns how many went.
    pub async fn purge_stream(
        &self,
        name: &str,
        opts: PurgeOptions,
    ) -> Result<u64, JetStreamError> {
        validate_name("stream", name)?;
        let r: Purged = self
            .api_json(&format!("STREAM.PURGE.{name}"), &opts)
            .await
            .map_err(|e| e.for_names(name, None))?;
        Ok(r.purged)
    }

    /// Every stream's info (all pages).
    pub async fn streams(&self) -> Result<Vec<StreamInfo>, JetStreamError> {
        let mut out = Vec::new();
        loop {
            let page: ListPage = self
                .api_json(
                    "STREAM.LIST",
                    &Page {
                        offset: out.len(),
                        subject: None,
                    },
                )
                .await?;
            let got = page.streams.unwrap_or_default();
            let empty = got.is_empty();
            out.extend(got);
            if empty || out.len() >= page.total {
                return Ok(out);
            }
        }
    }

    /// The names of every stream, or with `subject` only of those whose subjects overlap
    /// it (all pages).
    pub async fn stream_names(&self, subject: Option<&str>) -> Result<Vec<String>, JetStreamError> {
        let mut out = Vec::new();
        loop {
            let page: NamesPage = self
                .api_json(
                    "STREAM.NAMES",
                    &Page {
                        offset: out.len(),
                        subject,
                    },
                )
                .await?;
            let got = page.streams.unwrap_or_default();
            let empty = got.is_empty();
            out.extend(got);
            if empty || out.len() >= page.total {
                return Ok(out);
            }
        }
    }
}

fn success(r: Success, what: &str, name: &str) -> Result<(), JetStreamError> {
    if r.success {
        Ok(())
    } else {
        Err(JetStreamError::Decode {
            subject: format!("{what}.{name}"),
            error: "the server answered without success".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_goes_out_with_nanosecond_durations_and_lowercase_policies() {
        let c = StreamConfig::new("S", ["a.>"])
            .retention(RetentionPolicy::WorkQueue)
            .storage(StorageType::Memory)
            .max_age(Duration::from_secs(1))
            .duplicate_window(Duration::from_millis(5));
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["retention"], "workqueue");
        assert_eq!(v["storage"], "memory");
        assert_eq!(v["max_age"], 1_000_000_000u64);
        assert_eq!(v["duplicate_window"], 5_000_000u64);
        let back: StreamConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }
}
