//! Errors of the protocol core.
//!
//! [`ProtocolError`] means the peer broke the NATS protocol: the connection must be
//! closed. [`ValidationError`] means input given to us (a subject, a header) must not be
//! sent; nothing was buffered.
//!
//! The `Display` text of both is meant for people and is not a stable format; match on
//! the variants and fields instead.

use std::fmt;

/// Longest excerpt of offending bytes kept in an error, in input bytes.
pub(crate) const EXCERPT_LEN: usize = 64;

/// Longest input value kept in a [`ValidationError`], in characters.
const VALUE_LEN: usize = 128;

/// The peer sent bytes that are not valid NATS protocol. The connection must be closed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// A control line grew past `limit` bytes without a line terminator.
    ControlLineTooLong {
        /// The limit in force (`max_control_line`, or `max_info_line` for `INFO`).
        limit: usize,
    },
    /// A `MSG`/`HMSG` declared a payload larger than the inbound limit.
    PayloadTooLarge {
        /// The declared size in bytes (saturated at `usize::MAX`).
        size: usize,
        /// The limit in force (`max_payload`).
        limit: usize,
    },
    /// The control line starts with no operation a server may send.
    UnknownOperation {
        /// The start of the line, escaped.
        excerpt: String,
    },
    /// A known operation whose arguments are wrong.
    Malformed {
        /// The operation, e.g. `"MSG"`.
        op: &'static str,
        /// What was expected, e.g. `"expected a numeric sid"`.
        reason: &'static str,
        /// The start of the control line, escaped.
        excerpt: String,
    },
    /// The JSON of an `INFO` could not be parsed.
    InvalidInfo {
        /// The JSON parser's message.
        reason: String,
    },
    /// The header block of an `HMSG` could not be parsed.
    InvalidHeaders {
        /// What was expected.
        reason: &'static str,
        /// The offending part of the block, escaped.
        excerpt: String,
    },
    /// The bytes after a payload were not CRLF: the declared size was wrong.
    MissingPayloadTerminator {
        /// The two bytes found where CRLF was expected, escaped.
        excerpt: String,
    },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ControlLineTooLong { limit } => write!(
                f,
                "protocol violation: expected a control line of at most {limit} bytes ending in CRLF, got more without CRLF"
            ),
            Self::PayloadTooLarge { size, limit } => write!(
                f,
                "protocol violation: expected a payload of at most {limit} bytes, got a message declaring {size} bytes"
            ),
            Self::UnknownOperation { excerpt } => write!(
                f,
                "protocol violation: expected INFO, MSG, HMSG, PING, PONG, +OK or -ERR, got `{excerpt}`"
            ),
            Self::Malformed { op, reason, excerpt } => {
                write!(f, "malformed {op}: {reason}, got `{excerpt}`")
            }
            Self::InvalidInfo { reason } => {
                write!(f, "malformed INFO: expected a JSON object of server info, got {reason}")
            }
            Self::InvalidHeaders { reason, excerpt } => {
                write!(f, "malformed HMSG headers: {reason}, got `{excerpt}`")
            }
            Self::MissingPayloadTerminator { excerpt } => write!(
                f,
                "protocol violation: expected CRLF after the message payload, got `{excerpt}` (the declared size is wrong)"
            ),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Escapes at most [`EXCERPT_LEN`] bytes of `bytes` for an error message; `…` marks a cut.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    let cut = bytes.len() > EXCERPT_LEN;
    let shown = bytes.get(..EXCERPT_LEN).unwrap_or(bytes);
    let mut out = shown.escape_ascii().to_string();
    if cut {
        out.push('…');
    }
    out
}

/// Which kind of input a [`ValidationError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputKind {
    /// The subject of a publish.
    PublishSubject,
    /// The subject of a subscription (wildcards allowed).
    SubscribeSubject,
    /// The reply subject of a publish or request.
    ReplySubject,
    /// A queue group name.
    QueueGroup,
    /// A header name.
    HeaderName,
    /// A header value (or the status description).
    HeaderValue,
}

impl InputKind {
    fn noun(self) -> &'static str {
        match self {
            Self::PublishSubject => "publish subject",
            Self::SubscribeSubject => "subscribe subject",
            Self::ReplySubject => "reply subject",
            Self::QueueGroup => "queue group",
            Self::HeaderName => "header name",
            Self::HeaderValue => "header value",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Self::PublishSubject | Self::ReplySubject => {
                "subjects are dot-separated tokens without whitespace; the wildcards `*` and `>` are for subscriptions only"
            }
            Self::SubscribeSubject => {
                "subjects are dot-separated tokens without whitespace; `*` and `>` must be whole tokens and `>` the last one"
            }
            Self::QueueGroup => "queue group names are non-empty and contain no whitespace",
            Self::HeaderName => "header names are printable ASCII without `:` or whitespace",
            Self::HeaderValue => "header values must not contain CR or LF",
        }
    }
}

impl fmt::Display for InputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noun())
    }
}

/// Input that must not be sent to the server (DESIGN "Semantics" 14). Nothing was
/// buffered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// What the input was.
    pub kind: InputKind,
    /// The input, truncated to 128 characters.
    pub value: String,
    /// What is wrong with it, e.g. `"empty token"`.
    pub reason: &'static str,
}

impl ValidationError {
    pub(crate) fn new(kind: InputKind, value: &str, reason: &'static str) -> Self {
        Self {
            kind,
            value: value.chars().take(VALUE_LEN).collect(),
            reason,
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} {:?}: {}; {}",
            self.kind.noun(),
            self.value,
            self.reason,
            self.kind.hint()
        )
    }
}

impl std::error::Error for ValidationError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_escapes_and_cuts() {
        assert_eq!(excerpt(b"MSG a\r\n"), "MSG a\\r\\n");
        let long = [b'x'; 100];
        let e = excerpt(&long);
        assert!(e.ends_with('…'));
        assert_eq!(e.chars().filter(|&c| c == 'x').count(), EXCERPT_LEN);
    }

    #[test]
    fn malformed_display_names_expected_and_got() {
        let e = ProtocolError::Malformed {
            op: "MSG",
            reason: "expected a numeric sid",
            excerpt: "MSG foo x 3".into(),
        };
        assert_eq!(
            e.to_string(),
            "malformed MSG: expected a numeric sid, got `MSG foo x 3`"
        );
    }

    #[test]
    fn validation_display_says_what_and_how() {
        let e = ValidationError::new(InputKind::PublishSubject, "foo..bar", "empty token");
        let s = e.to_string();
        assert!(
            s.starts_with("invalid publish subject \"foo..bar\": empty token; subjects are"),
            "{s}"
        );
        let long = "a".repeat(300);
        assert_eq!(
            ValidationError::new(InputKind::QueueGroup, &long, "x")
                .value
                .len(),
            VALUE_LEN
        );
    }
}
