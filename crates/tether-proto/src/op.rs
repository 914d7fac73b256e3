//! Operations a server sends, and the [`Subject`] type they carry.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

use crate::headers::HeaderMap;
use crate::info::ServerInfo;

/// A subject: UTF-8 checked, zero-copy over [`Bytes`].
///
/// A subject decoded from a `MSG` shares the read buffer's memory. This type does not
/// check NATS subject rules (see [`crate::subject`]); it only guarantees UTF-8.
///
/// [`as_str`](Self::as_str) re-checks UTF-8 on each call (crate-wide
/// `forbid(unsafe_code)` rules out the unchecked conversion); for subjects of a few dozen
/// ASCII bytes that is a few nanoseconds.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Subject(Bytes);

impl Subject {
    /// A subject from a string constant, without copying.
    pub fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// A subject from bytes, which must be UTF-8.
    pub fn from_bytes(b: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&b)?;
        Ok(Self(b))
    }

    /// Wraps bytes already checked to be UTF-8.
    pub(crate) fn from_checked(b: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&b).is_ok());
        Self(b)
    }

    /// The subject as a string.
    pub fn as_str(&self) -> &str {
        // Every constructor checks UTF-8, so the error arm cannot be taken.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The subject's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The underlying bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<String> for Subject {
    fn from(s: String) -> Self {
        Self(Bytes::from(s.into_bytes()))
    }
}

impl From<&str> for Subject {
    /// Copies the string.
    fn from(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl AsRef<str> for Subject {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Deref for Subject {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for Subject {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Subject {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// A message delivered by `MSG` or `HMSG`.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    /// The subject it was published to.
    pub subject: Subject,
    /// The subscription id it was delivered for.
    pub sid: u64,
    /// The reply subject, if the publisher gave one.
    pub reply: Option<Subject>,
    /// The headers (`HMSG` only; `Some` even when the block is empty).
    pub headers: Option<HeaderMap>,
    /// The payload, sharing the read buffer's memory.
    pub payload: Bytes,
    /// Bytes of header block + payload as given by the frame.
    pub wire_size: usize,
    /// The header block could not be parsed; `headers` is `None`. Header blocks come from
    /// any publisher and the server does not check them, so a bad one is delivered (and
    /// counted) rather than closing the connection, as nats.go does.
    pub malformed_headers: bool,
}

/// An operation sent by the server.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerOp {
    /// `INFO {json}`: at connect, and later on cluster changes or lame duck mode.
    Info(Box<ServerInfo>),
    /// `MSG` or `HMSG`: a delivery.
    Msg(Msg),
    /// `PING`: answer with `PONG`.
    Ping,
    /// `PONG`: the answer to our oldest unanswered `PING`.
    Pong,
    /// `+OK`: sent only in verbose mode.
    Ok,
    /// `-ERR 'text'`: the text without quotes, trimmed.
    Err(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_conversions() {
        let s = Subject::from_static("foo.bar");
        assert_eq!(s, "foo.bar");
        assert_eq!(s.as_str(), "foo.bar");
        assert_eq!(s.len(), 7); // via Deref<Target = str>
        assert_eq!(format!("{s} {s:?}"), "foo.bar \"foo.bar\"");
        assert_eq!(Subject::from(String::from("a")), Subject::from("a"));
        assert!(Subject::from_bytes(Bytes::from_static(b"\xff")).is_err());
        assert_eq!(
            Subject::from_bytes(Bytes::from_static(b"x"))
                .unwrap()
                .into_bytes(),
            Bytes::from_static(b"x")
        );
        let r: &str = s.as_ref();
        assert_eq!(r, "foo.bar");
    }
}
