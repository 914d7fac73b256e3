//! Errors of JetStream management calls.

use super::api::{ApiError, ErrorCode};
use crate::error::RequestError;

/// Why a JetStream call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum JetStreamError {
    /// Nobody answers on the API subject: JetStream is not enabled on this server or for
    /// this account (or the domain/prefix is wrong).
    #[error(
        "JetStream is not enabled: no responders on {subject} (start nats-server with -js or \
         a `jetstream {{}}` block, enable it for the account, or check the domain/API prefix)"
    )]
    NotEnabled {
        /// The API subject nobody answered.
        subject: String,
    },
    /// The stream does not exist.
    #[error("stream {stream:?} not found (create it first, or check the name)")]
    StreamNotFound {
        /// The stream's name.
        stream: String,
    },
    /// The consumer does not exist on the stream.
    #[error("consumer {consumer:?} not found on stream {stream:?} (create it first, or check the names)")]
    ConsumerNotFound {
        /// The stream's name.
        stream: String,
        /// The consumer's name.
        consumer: String,
    },
    /// `create_stream` found a stream of that name with a different configuration.
    #[error(
        "stream {stream:?} already exists with a different configuration ({error}): use \
         update_stream to change it, or delete it first"
    )]
    StreamExists {
        /// The stream's name.
        stream: String,
        /// The server's error.
        error: ApiError,
    },
    /// `create_consumer` found a consumer of that name with a different configuration.
    #[error(
        "consumer {consumer:?} already exists on stream {stream:?} with a different \
         configuration ({error}): use update_consumer to change it, or delete it first"
    )]
    ConsumerExists {
        /// The stream's name.
        stream: String,
        /// The consumer's name.
        consumer: String,
        /// The server's error.
        error: ApiError,
    },
    /// The server refused the request.
    #[error("JetStream API error on {subject}: {error}")]
    Api {
        /// The API subject.
        subject: String,
        /// The server's error.
        error: ApiError,
    },
    /// A stream or consumer name the server would refuse; no request was sent.
    #[error("invalid {kind} name {name:?}: {reason}; use letters, digits, '-' and '_'")]
    InvalidName {
        /// `stream` or `consumer`.
        kind: &'static str,
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An option out of range or contradicting another; no request was sent.
    #[error("invalid {option}: {reason}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The core request failed (timeout, lost link, closed client...).
    #[error(transparent)]
    Request(RequestError),
    /// A pull (`fetch`) got no messages because of this.
    #[error(transparent)]
    Pull(super::pull::PullError),
    /// The server's answer was not the JSON expected.
    #[error("unexpected answer on {subject}: {error}")]
    Decode {
        /// The API subject.
        subject: String,
        /// What could not be decoded.
        error: String,
    },
}

impl JetStreamError {
    /// An error envelope from the API; "not enabled" codes become [`Self::NotEnabled`].
    pub(crate) fn from_api(subject: &str, error: ApiError) -> Self {
        match error.error_code() {
            ErrorCode::NOT_ENABLED | ErrorCode::NOT_ENABLED_FOR_ACCOUNT => Self::NotEnabled {
                subject: subject.to_owned(),
            },
            _ => Self::Api {
                subject: subject.to_owned(),
                error,
            },
        }
    }

    /// The server's error, when the server refused the request.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Self::Api { error, .. }
            | Self::StreamExists { error, .. }
            | Self::ConsumerExists { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Not-found codes become [`Self::StreamNotFound`] / [`Self::ConsumerNotFound`].
    pub(crate) fn for_names(self, stream: &str, consumer: Option<&str>) -> Self {
        let code = self.api_error().map(ApiError::error_code);
        match (code, consumer) {
            (Some(ErrorCode::STREAM_NOT_FOUND), _) => Self::StreamNotFound {
                stream: stream.to_owned(),
            },
            (Some(ErrorCode::CONSUMER_NOT_FOUND), Some(c)) => Self::ConsumerNotFound {
                stream: stream.to_owned(),
                consumer: c.to_owned(),
            },
            _ => self,
        }
    }
}
