//! The `$JS.API` request protocol: JSON in, JSON or a typed server error out.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::context::Context;
use super::error::JetStreamError;
use crate::error::RequestError;

/// A JetStream API error as the server sent it: an HTTP-like status, the server's own
/// error code and its description.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ApiError {
    /// HTTP-like status (400, 404, 500, 503...).
    #[serde(default)]
    pub code: u16,
    /// The server's JetStream error code (see [`ErrorCode`]); 0 when it sent none.
    #[serde(default)]
    pub err_code: u16,
    /// The server's description.
    #[serde(default)]
    pub description: String,
}

impl ApiError {
    /// The error code as an [`ErrorCode`].
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode(self.err_code)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (err_code {}, status {})",
            self.description, self.err_code, self.code
        )
    }
}

impl std::error::Error for ApiError {}

/// nats-server's JetStream error codes (`err_code`) that tether names. Any other code is
/// still carried in [`ApiError::err_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// JetStream is not enabled for the account.
    pub const NOT_ENABLED_FOR_ACCOUNT: ErrorCode = ErrorCode(10039);
    /// JetStream is not enabled on the server.
    pub const NOT_ENABLED: ErrorCode = ErrorCode(10076);
    /// Stream not found.
    pub const STREAM_NOT_FOUND: ErrorCode = ErrorCode(10059);
    /// A stream with that name exists with a different configuration.
    pub const STREAM_NAME_IN_USE: ErrorCode = ErrorCode(10058);
    /// The stream's subjects overlap another stream's.
    pub const SUBJECT_OVERLAP: ErrorCode = ErrorCode(10065);
    /// Consumer not found.
    pub const CONSUMER_NOT_FOUND: ErrorCode = ErrorCode(10014);
    /// A consumer with that name exists with a different configuration.
    pub const CONSUMER_EXISTS: ErrorCode = ErrorCode(10148);
    /// The expected stream does not match (`Nats-Expected-Stream`).
    pub const STREAM_MISMATCH: ErrorCode = ErrorCode(10060);
    /// Wrong last sequence (`Nats-Expected-Last-Sequence`).
    pub const WRONG_LAST_SEQUENCE: ErrorCode = ErrorCode(10071);
    /// Wrong last message id (`Nats-Expected-Last-Msg-Id`).
    pub const WRONG_LAST_MSG_ID: ErrorCode = ErrorCode(10070);
    /// The message is larger than the stream's max_msg_size.
    pub const MESSAGE_TOO_LARGE: ErrorCode = ErrorCode(10054);
}

/// Any answer of the API may be an error envelope.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    error: Option<ApiError>,
}

/// The answer to an API request: the error envelope when there is one, else `R`.
pub(crate) fn decode<R: DeserializeOwned>(
    subject: &str,
    payload: &[u8],
) -> Result<R, JetStreamError> {
    let env: Envelope = serde_json::from_slice(payload).map_err(|e| JetStreamError::Decode {
        subject: subject.to_owned(),
        error: e.to_string(),
    })?;
    if let Some(error) = env.error {
        return Err(JetStreamError::from_api(subject, error));
    }
    serde_json::from_slice(payload).map_err(|e| JetStreamError::Decode {
        subject: subject.to_owned(),
        error: e.to_string(),
    })
}

/// The server's answer to a request that got no reply because nobody listens on the API
/// subject: JetStream is not enabled there.
pub(crate) fn map_request_error(subject: &str, e: RequestError) -> JetStreamError {
    match e {
        RequestError::NoResponders { .. } => JetStreamError::NotEnabled {
            subject: subject.to_owned(),
        },
        e => JetStreamError::Request(e),
    }
}

impl Context {
    /// Send `body` to the API subject `<prefix><tail>` and decode the answer.
    pub(crate) async fn api_request<R: DeserializeOwned>(
        &self,
        tail: &str,
        body: &[u8],
    ) -> Result<R, JetStreamError> {
        let subject = self.api_subject(tail);
        let msg = self
            .client
            .request_with(&subject, None, body, self.settings.timeout)
            .await
            .map_err(|e| map_request_error(&subject, e))?;
        decode(&subject, &msg.payload)
    }

    /// [`api_request`](Self::api_request) with a JSON body.
    pub(crate) async fn api_json<B: Serialize, R: DeserializeOwned>(
        &self,
        tail: &str,
        body: &B,
    ) -> Result<R, JetStreamError> {
        let body = serde_json::to_vec(body).map_err(|e| JetStreamError::Decode {
            subject: self.api_subject(tail),
            error: e.to_string(),
        })?;
        self.api_request(tail, &body).await
    }
}

/// Durations on the wire are nanoseconds.
pub(crate) mod nanos {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        // The server sends -1 or 0 for "none" in a few places; both are zero here.
        let n = i64::deserialize(d)?;
        Ok(Duration::from_nanos(n.max(0) as u64))
    }

    /// A list of durations (a consumer's backoff).
    pub(crate) mod vec {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(
                v.iter()
                    .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            )
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<Duration>, D::Error> {
            let v = Option::<Vec<i64>>::deserialize(d)?.unwrap_or_default();
            Ok(v.into_iter()
                .map(|n| Duration::from_nanos(n.max(0) as u64))
                .collect())
        }
    }
}

/// `true` when `d` is zero (skipped when serializing).
pub(crate) fn is_zero(d: &std::time::Duration) -> bool {
    d.is_zero()
}

/// `true` when `n` is zero (serde passes a reference).
#[allow(clippy::trivially_copy_pass_by_ref)]
pub(crate) fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

/// Names of streams and consumers: not empty, at most 255 bytes, none of `.`, `*`, `>`,
/// whitespace or path separators (the server stores them as directory names).
pub(crate) fn validate_name(kind: &'static str, name: &str) -> Result<(), JetStreamError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 255 {
        Some("it is longer than 255 bytes")
    } else if name
        .chars()
        .any(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control())
    {
        Some("it contains '.', '*', '>', '/', '\\', whitespace or a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(JetStreamError::InvalidName {
            kind,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_tokens_wildcards_or_spaces_are_refused_before_any_request() {
        for bad in ["", "a.b", "a*", "a>", "a b", "a/b", "a\tb"] {
            let e = validate_name("stream", bad).expect_err(bad);
            let text = e.to_string();
            assert!(text.contains("stream name"), "{text}");
        }
        validate_name("stream", "ORDERS-1_x").unwrap();
        assert!(validate_name("stream", &"x".repeat(256)).is_err());
    }

    #[test]
    fn an_error_envelope_becomes_a_typed_error_with_the_servers_code() {
        let body = br#"{"type":"io.nats.jetstream.api.v1.stream_info_response","error":{"code":404,"err_code":10059,"description":"stream not found"}}"#;
        let e = decode::<serde_json::Value>("$JS.API.STREAM.INFO.X", body).unwrap_err();
        match e {
            JetStreamError::Api { error, .. } => {
                assert_eq!(error.error_code(), ErrorCode::STREAM_NOT_FOUND);
                assert_eq!(error.code, 404);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_from_the_server_is_a_decode_error_not_a_panic() {
        let e = decode::<serde_json::Value>("s", b"\xff{").unwrap_err();
        assert!(matches!(e, JetStreamError::Decode { .. }), "{e:?}");
    }
}
