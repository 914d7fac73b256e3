//! Pull requests: `fetch` a batch, or a continuous `messages()` stream with heartbeats.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use super::consumer::Consumer;
use super::error::JetStreamError;
use super::message::JsMessage;

/// Default messages asked for per pull request.
pub const DEFAULT_BATCH: usize = 500;
/// Default expiry of a pull request.
pub const DEFAULT_EXPIRES: Duration = Duration::from_secs(30);
/// Default idle heartbeat of a pull request (under half of [`DEFAULT_EXPIRES`]).
pub const DEFAULT_IDLE_HEARTBEAT: Duration = Duration::from_secs(10);

/// A pull request's shape: how many messages, how long it waits, its heartbeat.
///
/// The idle heartbeat belongs to the pull, not to the connection: the server sends one
/// when it has had nothing to deliver on this pull for that long, and it must be under
/// half of `expires` (checked when the pull is built). Two heartbeat intervals without
/// a message or heartbeat is a missed heartbeat (see [`PullError::MissedHeartbeat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullOptions {
    pub(crate) batch: usize,
    pub(crate) max_bytes: usize,
    pub(crate) expires: Duration,
    pub(crate) idle_heartbeat: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            batch: DEFAULT_BATCH,
            max_bytes: 0,
            expires: DEFAULT_EXPIRES,
            idle_heartbeat: DEFAULT_IDLE_HEARTBEAT,
        }
    }
}

impl PullOptions {
    /// The defaults: batch 500, expires 30 s, idle heartbeat 10 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages per pull request (at least 1).
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }

    /// Bytes per pull request at most (0: no limit).
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }

    /// How long a pull request waits on the server.
    pub fn expires(mut self, d: Duration) -> Self {
        self.expires = d;
        self
    }

    /// The pull's idle heartbeat: under half of `expires`; zero turns heartbeats off
    /// (a dead link is then found only by the connection's own pings).
    pub fn idle_heartbeat(mut self, d: Duration) -> Self {
        self.idle_heartbeat = d;
        self
    }

    /// Check the options as the server and tether need them.
    pub fn validate(&self) -> Result<(), JetStreamError> {
        if self.batch == 0 {
            return Err(JetStreamError::InvalidOption {
                option: "batch",
                reason: "a batch of 0 asks for nothing; ask for at least 1 message".to_owned(),
            });
        }
        if self.expires < Duration::from_millis(1) {
            return Err(JetStreamError::InvalidOption {
                option: "expires",
                reason: format!(
                    "expires {:?} is too short; give the pull at least 1 ms (seconds are usual)",
                    self.expires
                ),
            });
        }
        if !self.idle_heartbeat.is_zero() && self.idle_heartbeat.saturating_mul(2) >= self.expires {
            return Err(JetStreamError::InvalidOption {
                option: "idle_heartbeat",
                reason: format!(
                    "idle_heartbeat {:?} must be under half of expires {:?} (a pull must see \
                     two heartbeats before it expires); lower it below {:?} or raise expires",
                    self.idle_heartbeat,
                    self.expires,
                    self.expires / 2
                ),
            });
        }
        Ok(())
    }
}

/// Something other than a message on a pull consumer's stream. Only
/// [`PullError::ConsumerDeleted`] (and a closed client) ends the stream.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// No message or heartbeat for two idle_heartbeat intervals: tether sent a PING to
    /// test the link and re-issued the pull.
    #[error("missed idle heartbeat on consumer {consumer:?} of stream {stream:?} (nothing for {silent_for:?}): link probed, pull re-issued")]
    MissedHeartbeat {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
        /// How long nothing arrived.
        silent_for: Duration,
    },
    /// The consumer's leader changed; the pull was re-issued.
    #[error("the leader of consumer {consumer:?} changed; pull re-issued")]
    LeadershipChange {
        /// The consumer.
        consumer: String,
    },
    /// The consumer was deleted: the stream ends.
    #[error("consumer {consumer:?} of stream {stream:?} was deleted: {reason}")]
    ConsumerDeleted {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
        /// The server's status text, or how it was found.
        reason: String,
    },
    /// Another status the server sent for the pull (409 Exceeded MaxWaiting, ...).
    #[error("pull status {code} on consumer {consumer:?}: {description}")]
    Status {
        /// The consumer.
        consumer: String,
        /// The status code.
        code: u16,
        /// The server's description.
        description: String,
    },
    /// Issuing a pull failed (the link is down, say); it is retried.
    #[error("pull request on consumer {consumer:?} failed: {error}")]
    Request {
        /// The consumer.
        consumer: String,
        /// Why.
        error: String,
    },
}

/// A consumer's continuous stream of messages (see [`Consumer::messages`]).
#[derive(Debug)]
pub struct Messages {
    _private: (),
}

impl futures_core::Stream for Messages {
    type Item = Result<JsMessage, PullError>;

    fn poll_next(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(None)
    }
}

#[allow(clippy::unused_async)] // stub until the pull machinery lands
impl Consumer {
    /// One pull request for up to `batch` messages, waiting at most `expires` on the
    /// server; returns what came (possibly nothing).
    pub async fn fetch(
        &self,
        batch: usize,
        expires: Duration,
    ) -> Result<Vec<JsMessage>, JetStreamError> {
        let opts = PullOptions::new()
            .batch(batch)
            .expires(expires)
            .idle_heartbeat(Duration::ZERO);
        opts.validate()?;
        Ok(Vec::new())
    }

    /// A continuous stream of this consumer's messages: pull requests are kept topped up,
    /// re-issued after a reconnect, a leadership change or a missed heartbeat.
    pub async fn messages(&self, opts: PullOptions) -> Result<Messages, JetStreamError> {
        opts.validate()?;
        Ok(Messages { _private: () })
    }
}
