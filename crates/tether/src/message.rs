//! Messages delivered to subscriptions and request callers.

use bytes::Bytes;
use tether_proto::{HeaderMap, Msg, StatusCode, Subject};

/// A message delivered by the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The subject it was published to.
    pub subject: Subject,
    /// The reply subject, if any.
    pub reply: Option<Subject>,
    /// Headers, if any.
    pub headers: Option<HeaderMap>,
    /// The payload (zero-copy slice of the read buffer).
    pub payload: Bytes,
    /// Header block plus payload, as counted against pending limits.
    pub size: usize,
    /// The publisher sent a header block that could not be parsed; `headers` is `None`.
    pub malformed_headers: bool,
}

impl Message {
    /// The status code from the header line, if any (503 no responders, 408, 100...).
    pub fn status(&self) -> Option<StatusCode> {
        self.headers.as_ref().and_then(HeaderMap::status)
    }

    /// True for the server's no-responders reply: status 503 and an empty body.
    pub fn is_no_responders(&self) -> bool {
        self.status() == Some(StatusCode::NO_RESPONDERS) && self.payload.is_empty()
    }
}

impl From<Msg> for Message {
    fn from(m: Msg) -> Self {
        Self {
            subject: m.subject,
            reply: m.reply,
            headers: m.headers,
            payload: m.payload,
            size: m.wire_size,
            malformed_headers: m.malformed_headers,
        }
    }
}
