//! Message headers: the `NATS/1.0` block of `HPUB`/`HMSG`.
//!
//! Format (<https://docs.nats.io/reference/reference-protocols/nats-protocol#hpub>, and
//! nats.go `nats.go` `DecodeHeadersMsg`):
//! ```text
//! NATS/1.0[ <3-digit status>[ <description>]]\r\n
//! Name: value\r\n
//! ...
//! \r\n
//! ```

use bytes::{BufMut, BytesMut};

use crate::encode::{decimal_len, put_decimal};
use crate::error::{excerpt, InputKind, ProtocolError, ValidationError};

/// The version prefix every header block starts with.
const VERSION_LINE: &[u8] = b"NATS/1.0";

/// A status code from a header block's first line (`NATS/1.0 503`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusCode(pub u16);

impl StatusCode {
    /// `100`: a JetStream idle heartbeat or flow-control message.
    pub const IDLE_HEARTBEAT: Self = Self(100);
    /// `404`: no messages (JetStream pull).
    pub const NOT_FOUND: Self = Self(404);
    /// `408`: a JetStream pull request timed out.
    pub const REQUEST_TIMEOUT: Self = Self(408);
    /// `503`: a request found no responders.
    pub const NO_RESPONDERS: Self = Self(503);
}

impl std::fmt::Display for StatusCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:03}", self.0)
    }
}

/// Message headers: ordered entries, several values per name allowed, names compared
/// case-sensitively (as nats-server and nats.go do; NATS headers are not HTTP headers),
/// plus the optional status line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    status: Option<StatusCode>,
    description: Option<String>,
    entries: Vec<(String, String)>,
}

impl HeaderMap {
    /// An empty map without status.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value` alone: the first entry of that name keeps its place and
    /// takes the value, later entries of that name are removed.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        if let Some(pos) = self.entries.iter().position(|(n, _)| *n == name) {
            let mut index = 0;
            self.entries.retain(|(n, _)| {
                let keep = index <= pos || *n != name;
                index += 1;
                keep
            });
            if let Some(entry) = self.entries.get_mut(pos) {
                entry.1 = value;
            }
        } else {
            self.entries.push((name, value));
        }
    }

    /// Adds a value for `name` after the existing ones.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.entries.push((name.into(), value.into()));
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every entry, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The number of entries (values, not distinct names).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries (the status line does not count).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The status code, e.g. [`StatusCode::NO_RESPONDERS`].
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The status description, e.g. `"Request Timeout"`.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Sets the status line. An empty description counts as none.
    pub fn set_status(&mut self, status: StatusCode, description: Option<String>) {
        self.status = Some(status);
        self.description = description.filter(|d| !d.is_empty());
    }

    /// Checks that the map can be sent (DESIGN "Semantics" 14): names are non-empty
    /// printable ASCII without `:` or whitespace, values and the description contain no
    /// CR or LF, and the status has three digits.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(StatusCode(code)) = self.status {
            if code > 999 {
                return Err(ValidationError::new(
                    InputKind::HeaderValue,
                    &code.to_string(),
                    "status code has more than three digits",
                ));
            }
        }
        if let Some(d) = &self.description {
            check_value(d)?;
        }
        for (name, value) in &self.entries {
            if name.is_empty() {
                return Err(ValidationError::new(
                    InputKind::HeaderName,
                    name,
                    "empty name",
                ));
            }
            // Printable ASCII is 0x21..=0x7e; that excludes space, controls and non-ASCII.
            if name
                .bytes()
                .any(|b| b == b':' || !(0x21..=0x7e).contains(&b))
            {
                return Err(ValidationError::new(
                    InputKind::HeaderName,
                    name,
                    "name contains `:`, whitespace or a non-printable character",
                ));
            }
            check_value(value)?;
        }
        Ok(())
    }

    /// The exact number of bytes [`encode`](Self::encode) writes.
    pub fn encoded_len(&self) -> usize {
        let mut len = VERSION_LINE.len() + 2 + 2; // version line CRLF, final CRLF
        if let Some(StatusCode(code)) = self.status {
            len += 1 + decimal_len(u64::from(code)).max(3);
            if let Some(d) = &self.description {
                len += 1 + d.len();
            }
        }
        for (n, v) in &self.entries {
            len += n.len() + 2 + v.len() + 2;
        }
        len
    }

    /// Writes the block: `NATS/1.0[ status[ description]]\r\n`, `Name: value\r\n` per
    /// entry, then `\r\n`. Does not validate; call [`validate`](Self::validate) first.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(self.encoded_len());
        buf.put_slice(VERSION_LINE);
        if let Some(StatusCode(code)) = self.status {
            buf.put_u8(b' ');
            // nats.go reads the first three characters as the status, so pad to three.
            if code < 100 {
                buf.put_u8(b'0');
            }
            if code < 10 {
                buf.put_u8(b'0');
            }
            put_decimal(buf, u64::from(code));
            if let Some(d) = &self.description {
                buf.put_u8(b' ');
                buf.put_slice(d.as_bytes());
            }
        }
        buf.put_slice(b"\r\n");
        for (n, v) in &self.entries {
            buf.put_slice(n.as_bytes());
            buf.put_slice(b": ");
            buf.put_slice(v.as_bytes());
            buf.put_slice(b"\r\n");
        }
        buf.put_slice(b"\r\n");
    }

    /// Parses a header block (the first `#hdr bytes` of an `HMSG` payload).
    ///
    /// Tolerant as nats.go is: `NATS/1.0 503` with no description, `Name:value` with or
    /// without a space, surrounding whitespace of values trimmed, a bare LF as line end,
    /// a block without the final empty line. Strict where the format is not in doubt:
    /// the block must start with `NATS/1.0`, a status must be three digits, and every
    /// header line must have a non-empty name and a `:`. Invalid UTF-8 in names and
    /// values is replaced (U+FFFD) rather than refused: headers are written by any
    /// publisher, not by the server.
    pub fn decode(block: &[u8]) -> Result<HeaderMap, ProtocolError> {
        let invalid = |reason: &'static str, bytes: &[u8]| ProtocolError::InvalidHeaders {
            reason,
            excerpt: excerpt(bytes),
        };
        let mut lines = block
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let first = lines.next().unwrap_or_default();
        let Some(rest) = first.strip_prefix(VERSION_LINE) else {
            return Err(invalid("expected a block starting with `NATS/1.0`", first));
        };
        let mut map = HeaderMap::new();
        if !rest.is_empty() && !rest.first().is_some_and(u8::is_ascii_whitespace) {
            return Err(invalid("expected a block starting with `NATS/1.0`", first));
        }
        let status = rest.trim_ascii();
        if !status.is_empty() {
            // nats.go: the first three characters are the status, the rest the description.
            let (code, description) = status.split_at_checked(3).unwrap_or((status, b""));
            if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
                return Err(invalid(
                    "expected a three-digit status after `NATS/1.0`",
                    first,
                ));
            }
            let code = code
                .iter()
                .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
            let description = description.trim_ascii();
            map.status = Some(StatusCode(code));
            if !description.is_empty() {
                map.description = Some(String::from_utf8_lossy(description).into_owned());
            }
        }
        let mut ended = false;
        for line in lines {
            if line.is_empty() {
                ended = true;
                continue;
            }
            if ended {
                return Err(invalid(
                    "expected nothing after the empty line ending the headers",
                    line,
                ));
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(invalid("expected a `Name: value` header line", line));
            };
            let (name, value) = line.split_at(colon);
            if name.is_empty() {
                return Err(invalid("expected a header name before `:`", line));
            }
            let value = value.get(1..).unwrap_or_default().trim_ascii();
            map.entries.push((
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            ));
        }
        Ok(map)
    }
}

fn check_value(value: &str) -> Result<(), ValidationError> {
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(ValidationError::new(
            InputKind::HeaderValue,
            value,
            "value contains CR or LF",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(map: &HeaderMap) -> Vec<u8> {
        let mut buf = BytesMut::new();
        map.encode(&mut buf);
        assert_eq!(buf.len(), map.encoded_len());
        buf.to_vec()
    }

    #[test]
    fn insert_append_get() {
        let mut h = HeaderMap::new();
        assert!(h.is_empty());
        h.append("A", "1");
        h.append("B", "x");
        h.append("A", "2");
        assert_eq!(h.get("A"), Some("1"));
        assert_eq!(h.get("a"), None, "names are case-sensitive");
        assert_eq!(h.get_all("A").collect::<Vec<_>>(), ["1", "2"]);
        h.insert("A", "3");
        assert_eq!(h.iter().collect::<Vec<_>>(), [("A", "3"), ("B", "x")]);
        h.insert("C", "c");
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn encode_and_decode_round_trip() {
        let mut h = HeaderMap::new();
        h.append("Nats-Msg-Id", "abc");
        h.append("X", "");
        assert_eq!(enc(&h), b"NATS/1.0\r\nNats-Msg-Id: abc\r\nX: \r\n\r\n");
        assert_eq!(HeaderMap::decode(&enc(&h)).unwrap(), h);

        h.set_status(StatusCode::REQUEST_TIMEOUT, Some("Request Timeout".into()));
        assert!(enc(&h).starts_with(b"NATS/1.0 408 Request Timeout\r\n"));
        assert_eq!(HeaderMap::decode(&enc(&h)).unwrap(), h);

        h.set_status(StatusCode(7), None);
        assert!(enc(&h).starts_with(b"NATS/1.0 007\r\n"));
        assert_eq!(HeaderMap::decode(&enc(&h)).unwrap(), h);
    }

    #[test]
    fn decode_no_responders_forms() {
        for block in [
            &b"NATS/1.0 503\r\n\r\n"[..],
            b"NATS/1.0 503\r\nNats-Subject: foo\r\n\r\n",
            b"NATS/1.0 503",
            b"NATS/1.0\t503 \r\n",
        ] {
            let h = HeaderMap::decode(block).unwrap();
            assert_eq!(h.status(), Some(StatusCode::NO_RESPONDERS));
            assert_eq!(h.description(), None);
        }
        let h = HeaderMap::decode(b"NATS/1.0 100 Idle Heartbeat\r\n\r\n").unwrap();
        assert_eq!(h.status(), Some(StatusCode::IDLE_HEARTBEAT));
        assert_eq!(h.description(), Some("Idle Heartbeat"));
    }

    #[test]
    fn decode_is_tolerant() {
        let h = HeaderMap::decode(b"NATS/1.0\r\nA:1\r\nB:   two  \nC: \xff\r\n\r\n").unwrap();
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [("A", "1"), ("B", "two"), ("C", "\u{fffd}")]
        );
        assert_eq!(h.status(), None);
    }

    #[test]
    fn decode_errors() {
        for (block, reason_part) in [
            (&b""[..], "NATS/1.0"),
            (b"HTTP/1.1 200\r\n\r\n", "NATS/1.0"),
            (b"NATS/1.01\r\n\r\n", "NATS/1.0"),
            (b"NATS/1.0 5x3\r\n\r\n", "three-digit"),
            (b"NATS/1.0 50\r\n\r\n", "three-digit"),
            (b"NATS/1.0\r\nnocolon\r\n\r\n", "Name: value"),
            (b"NATS/1.0\r\n: v\r\n\r\n", "header name"),
            (b"NATS/1.0\r\n\r\nA: b\r\n", "nothing after"),
        ] {
            match HeaderMap::decode(block) {
                Err(ProtocolError::InvalidHeaders { reason, .. }) => {
                    assert!(reason.contains(reason_part), "{reason}");
                }
                other => panic!("{block:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn validate_rules() {
        let mut h = HeaderMap::new();
        h.append("Good-Name", "any value: with colon");
        assert!(h.validate().is_ok());
        for name in ["", "a b", "a:b", "é", "a\tb"] {
            let mut h = HeaderMap::new();
            h.append(name, "v");
            assert_eq!(h.validate().unwrap_err().kind, InputKind::HeaderName);
        }
        for value in ["a\rb", "a\nb"] {
            let mut h = HeaderMap::new();
            h.append("N", value);
            assert_eq!(h.validate().unwrap_err().kind, InputKind::HeaderValue);
        }
        let mut h = HeaderMap::new();
        h.set_status(StatusCode(1000), None);
        assert!(h.validate().is_err());
        h.set_status(StatusCode(503), Some("bad\r\n".into()));
        assert!(h.validate().is_err());
    }
}
