//! Per-operation errors. Each carries the context needed to act on it; match on the
//! variants, not on the Display text, which is unspecified.

use std::fmt;
use std::time::Duration;

use tether_proto::ValidationError;

/// One failed attempt to reach a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// The server as configured or discovered.
    pub server: String,
    /// The socket address tried, when resolution got that far.
    pub address: Option<String>,
    /// What went wrong.
    pub error: String,
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            Some(a) => write!(f, "{} ({a}): {}", self.server, self.error),
            None => write!(f, "{}: {}", self.server, self.error),
        }
    }
}

fn list(attempts: &[AttemptError]) -> String {
    attempts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Options that contradict each other or make no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// Two options that cannot hold together.
    #[error("contradictory options: {first} with {second}: {fix}")]
    Contradiction {
        /// The first option and its value.
        first: String,
        /// The second option and its value.
        second: String,
        /// What to change.
        fix: String,
    },
    /// An option with a value that cannot work.
    #[error("invalid option {option} = {value}: {fix}")]
    Invalid {
        /// The option.
        option: &'static str,
        /// Its value.
        value: String,
        /// What to change.
        fix: String,
    },
}

/// Connecting failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The options contradict each other.
    #[error(transparent)]
    Options(OptionsError),
    /// A server URL could not be parsed.
    #[error("invalid server URL: {0}")]
    InvalidUrl(String),
    /// Every server was tried once and none completed a handshake.
    #[error("could not connect to any server: {}", list(.attempts))]
    AllFailed {
        /// Every server and address tried, and why it failed.
        attempts: Vec<AttemptError>,
    },
    /// The client was closed while connecting.
    #[error("the client was closed")]
    Closed,
    /// Must be called from within a tokio runtime.
    #[error("no tokio runtime: call connect from within a tokio runtime")]
    NoRuntime,
}

/// A publish was refused. Nothing was buffered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The outbound buffer is at its bounds.
    #[error("outbound buffer full ({bytes} bytes, {msgs} messages buffered, {}): {}",
        if *.connected { "connected" } else { "disconnected" },
        if *.connected { "the server is not keeping up; slow down or raise outbound_buffer" } else { "wait for the reconnect, or raise outbound_buffer" })]
    BufferFull {
        /// Encoded bytes buffered.
        bytes: u64,
        /// Messages buffered.
        msgs: u64,
        /// Whether a link was up.
        connected: bool,
    },
    /// This single frame exceeds the buffer's byte bound.
    #[error("frame of {frame} bytes exceeds the outbound buffer of {limit} bytes; raise outbound_buffer")]
    TooLargeForBuffer {
        /// Encoded frame size.
        frame: usize,
        /// The byte bound.
        limit: usize,
    },
    /// Header block plus payload exceeds the server's max_payload.
    #[error("message of {size} bytes exceeds the server's max_payload of {limit} bytes; split it or raise max_payload on the server")]
    MaxPayload {
        /// Header block plus payload.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The control line (subject, reply, sizes) is too long.
    #[error("control line of {len} bytes exceeds max_control_line {limit}; use shorter subjects")]
    ControlLineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A subject, reply subject or header is invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The server does not support headers.
    #[error("the server does not support headers (INFO headers: false); publish without headers")]
    HeadersNotSupported,
    /// Disconnected, and buffer_while_disconnected is off.
    #[error("disconnected and buffer_while_disconnected is off; retry after Reconnected")]
    Disconnected,
    /// The client is draining its publishes.
    #[error("the client is draining: publishing is closed")]
    Draining,
    /// The client is closed.
    #[error("the client is closed")]
    Closed,
    /// The first (lazy) connect failed.
    #[error(transparent)]
    Connect(Box<ConnectError>),
}

/// A subscription failed or ended with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The subject or queue group is invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The control line is too long.
    #[error("control line of {len} bytes exceeds max_control_line {limit}; use a shorter subject")]
    ControlLineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The server denied the subscription.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The server refused it: too many subscriptions.
    #[error("the server refused the subscription: {0}")]
    MaxSubscriptionsExceeded(String),
    /// Pending limits of zero would drop every message.
    #[error("pending limits of {msgs} messages / {bytes} bytes would drop every message; allow at least 1 of each (usize::MAX for no bound)")]
    InvalidPendingLimits {
        /// The message limit given.
        msgs: usize,
        /// The byte limit given.
        bytes: usize,
    },
    /// The client is closed or draining.
    #[error("the client is closed")]
    Closed,
    /// The first (lazy) connect failed.
    #[error(transparent)]
    Connect(Box<ConnectError>),
}

/// A request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No subscriber on the subject (the server's 503 status).
    #[error("no responders on subject {subject}")]
    NoResponders {
        /// The request subject.
        subject: String,
    },
    /// No reply within the timeout. A reply may still arrive later and is then dropped.
    #[error("request to {subject} timed out after {elapsed:?}")]
    Timeout {
        /// The request subject.
        subject: String,
        /// Time waited.
        elapsed: Duration,
    },
    /// The link dropped after the request was written.
    #[error("connection lost while waiting for the reply from {subject} (the request may have been processed: {maybe_processed})")]
    ConnectionLost {
        /// The request subject.
        subject: String,
        /// True when the frame was written, so a responder may have acted on it.
        maybe_processed: bool,
    },
    /// The server denied publishing the request.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The server refused the subscription of the reply inbox (permissions on
    /// `<inbox_prefix>.>`, or too many subscriptions): no reply can arrive. The next
    /// request subscribes a new inbox.
    #[error("the reply inbox for the request to {subject} was refused: {message} (the request may have been processed: {maybe_processed}); allow subscribing to the inbox prefix or set inbox_prefix")]
    InboxDenied {
        /// The request subject.
        subject: String,
        /// The server's text.
        message: String,
        /// True when the request's frame was written, so a responder may have acted on it.
        maybe_processed: bool,
    },
    /// The request could not be published.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The client is closed.
    #[error("the client is closed")]
    Closed,
}

/// A flush failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlushError {
    /// No PONG within flush_timeout.
    #[error("flush timed out after {0:?}")]
    Timeout(Duration),
    /// The link dropped before the PONG; these frames may be lost.
    #[error("connection lost before the flush was confirmed ({unconfirmed_msgs} messages, {unconfirmed_bytes} bytes unconfirmed)")]
    ConnectionLost {
        /// Messages written and not confirmed.
        unconfirmed_msgs: u64,
        /// Their bytes.
        unconfirmed_bytes: u64,
    },
    /// The client is closed.
    #[error("the client is closed")]
    Closed,
    /// The first (lazy) connect failed.
    #[error(transparent)]
    Connect(Box<ConnectError>),
}

/// A drain did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DrainError {
    /// Already closed.
    #[error("the client is already closed")]
    Closed,
}

/// Any tether error, for code that does not care which operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// See [`ConnectError`].
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// See [`PublishError`].
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// See [`SubscribeError`].
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// See [`RequestError`].
    #[error(transparent)]
    Request(#[from] RequestError),
    /// See [`FlushError`].
    #[error(transparent)]
    Flush(#[from] FlushError),
    /// See [`DrainError`].
    #[error(transparent)]
    Drain(#[from] DrainError),
}

/// What a retry layer should do with an error. Retrying never duplicates work the
/// server may already have done unless the answer says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryMethod {
    /// Retrying cannot help (invalid input, permissions, closed client).
    NoRetry,
    /// Retry now: nothing was done, and the client itself waits for the link (a request
    /// lost with its link before it was written, a flush whose link dropped).
    RetryImmediately,
    /// Retry after a backoff: nothing was done (buffer full, no responders, no server
    /// reachable, a flush that timed out).
    WaitAndRetry,
    /// The operation may already have taken effect (a request that timed out, or whose
    /// link dropped after it was written): retry after a backoff only if it is
    /// idempotent, else it may run twice.
    RetryIfIdempotent,
}

impl Error {
    /// What a retry layer should do.
    pub fn retry_method(&self) -> RetryMethod {
        match self {
            Error::Publish(p) | Error::Request(RequestError::Publish(p)) => publish_retry(p),
            Error::Request(r) => match r {
                RequestError::NoResponders { .. } => RetryMethod::WaitAndRetry,
                RequestError::Timeout { .. }
                | RequestError::ConnectionLost {
                    maybe_processed: true,
                    ..
                } => RetryMethod::RetryIfIdempotent,
                RequestError::ConnectionLost {
                    maybe_processed: false,
                    ..
                } => RetryMethod::RetryImmediately,
                _ => RetryMethod::NoRetry,
            },
            Error::Flush(FlushError::Timeout(_)) => RetryMethod::WaitAndRetry,
            Error::Flush(FlushError::ConnectionLost { .. }) => RetryMethod::RetryImmediately,
            Error::Flush(FlushError::Connect(_))
            | Error::Connect(ConnectError::AllFailed { .. }) => RetryMethod::WaitAndRetry,
            _ => RetryMethod::NoRetry,
        }
    }
}

fn publish_retry(p: &PublishError) -> RetryMethod {
    match p {
        PublishError::BufferFull { .. } | PublishError::Disconnected | PublishError::Connect(_) => {
            RetryMethod::WaitAndRetry
        }
        _ => RetryMethod::NoRetry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrying_never_runs_a_maybe_processed_request_twice_unless_told_so() {
        let lost = |maybe_processed| {
            Error::Request(RequestError::ConnectionLost {
                subject: "s".into(),
                maybe_processed,
            })
        };
        let timeout = Error::Request(RequestError::Timeout {
            subject: "s".into(),
            elapsed: Duration::from_secs(1),
        });
        assert_eq!(lost(true).retry_method(), RetryMethod::RetryIfIdempotent);
        assert_eq!(timeout.retry_method(), RetryMethod::RetryIfIdempotent);
        assert_eq!(lost(false).retry_method(), RetryMethod::RetryImmediately);
        // A request that could not be published is retried like a publish.
        for p in [
            PublishError::Disconnected,
            PublishError::BufferFull {
                bytes: 1,
                msgs: 1,
                connected: true,
            },
            PublishError::Connect(Box::new(ConnectError::Closed)),
        ] {
            assert_eq!(
                Error::Request(RequestError::Publish(p.clone())).retry_method(),
                Error::Publish(p).retry_method()
            );
        }
        assert_eq!(
            Error::Publish(PublishError::Closed).retry_method(),
            RetryMethod::NoRetry
        );
        assert_eq!(
            Error::Request(RequestError::PermissionDenied("x".into())).retry_method(),
            RetryMethod::NoRetry
        );
    }
}
