//! Client operations, written into the caller's buffer.
//!
//! Formats are those of the protocol page
//! (<https://docs.nats.io/reference/reference-protocols/nats-protocol>):
//! ```text
//! CONNECT {json}\r\n
//! PUB <subject> [reply-to] <#bytes>\r\n<payload>\r\n
//! HPUB <subject> [reply-to] <#header bytes> <#total bytes>\r\n<headers><payload>\r\n
//! SUB <subject> [queue group] <sid>\r\n
//! UNSUB <sid> [max_msgs]\r\n
//! PING\r\n   PONG\r\n
//! ```
//! These functions are the publish hot path: they reserve the exact frame length once
//! and allocate nothing else. They do not validate; callers check subjects and headers
//! with [`crate::subject`] and [`HeaderMap::validate`] before encoding.

use bytes::{BufMut, BytesMut};

use crate::headers::HeaderMap;
use crate::info::ConnectInfo;

/// The number of decimal digits of `n`.
pub(crate) fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Writes `n` in decimal without going through `fmt`.
pub(crate) fn put_decimal(buf: &mut BytesMut, mut n: u64) {
    // u64::MAX has 20 digits.
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
        start -= 1;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(digits.get(start..).unwrap_or_default());
}

/// Writes `CONNECT {json}\r\n`.
pub fn encode_connect(buf: &mut BytesMut, info: &ConnectInfo) {
    let start = buf.len();
    buf.put_slice(b"CONNECT ");
    if serde_json::to_writer(buf.writer(), info).is_err() {
        // Unreachable: ConnectInfo is strings, bools and integers, and writing to a
        // BytesMut cannot fail. Keep the buffer whole anyway.
        buf.truncate(start);
        return;
    }
    buf.put_slice(b"\r\n");
}

/// Writes `PUB <subject> [reply] <#bytes>\r\n<payload>\r\n`.
pub fn encode_pub(buf: &mut BytesMut, subject: &str, reply: Option<&str>, payload: &[u8]) {
    buf.reserve(pub_frame_len(subject, reply, None, payload.len()));
    put_pub(buf, subject, reply, payload);
}

/// [`encode_pub`] into a buffer the caller has already reserved the frame's length in.
pub(crate) fn put_pub(buf: &mut BytesMut, subject: &str, reply: Option<&str>, payload: &[u8]) {
    buf.put_slice(b"PUB ");
    put_subject_reply(buf, subject, reply);
    put_decimal(buf, payload.len() as u64);
    buf.put_slice(b"\r\n");
    buf.put_slice(payload);
    buf.put_slice(b"\r\n");
}

/// Writes `HPUB <subject> [reply] <#hdr bytes> <#total bytes>\r\n<headers><payload>\r\n`.
pub fn encode_hpub(
    buf: &mut BytesMut,
    subject: &str,
    reply: Option<&str>,
    headers: &HeaderMap,
    payload: &[u8],
) {
    let headers_len = headers.encoded_len();
    buf.reserve(pub_frame_len(
        subject,
        reply,
        Some(headers_len),
        payload.len(),
    ));
    buf.put_slice(b"HPUB ");
    put_subject_reply(buf, subject, reply);
    put_decimal(buf, headers_len as u64);
    buf.put_u8(b' ');
    put_decimal(buf, (headers_len + payload.len()) as u64);
    buf.put_slice(b"\r\n");
    headers.encode(buf);
    buf.put_slice(payload);
    buf.put_slice(b"\r\n");
}

fn put_subject_reply(buf: &mut BytesMut, subject: &str, reply: Option<&str>) {
    buf.put_slice(subject.as_bytes());
    buf.put_u8(b' ');
    if let Some(reply) = reply {
        buf.put_slice(reply.as_bytes());
        buf.put_u8(b' ');
    }
}

/// Writes `SUB <subject> [queue] <sid>\r\n`.
pub fn encode_sub(buf: &mut BytesMut, subject: &str, queue: Option<&str>, sid: u64) {
    buf.reserve(sub_control_line_len(subject, queue, sid) + 2);
    buf.put_slice(b"SUB ");
    put_subject_reply(buf, subject, queue);
    put_decimal(buf, sid);
    buf.put_slice(b"\r\n");
}

/// Writes `UNSUB <sid>[ <max>]\r\n`; with `max`, the server unsubscribes after that many
/// messages in total.
pub fn encode_unsub(buf: &mut BytesMut, sid: u64, max: Option<u64>) {
    buf.reserve(6 + 20 + 1 + 20 + 2);
    buf.put_slice(b"UNSUB ");
    put_decimal(buf, sid);
    if let Some(max) = max {
        buf.put_u8(b' ');
        put_decimal(buf, max);
    }
    buf.put_slice(b"\r\n");
}

/// Writes `PING\r\n`.
pub fn encode_ping(buf: &mut BytesMut) {
    buf.put_slice(b"PING\r\n");
}

/// Writes `PONG\r\n`.
pub fn encode_pong(buf: &mut BytesMut) {
    buf.put_slice(b"PONG\r\n");
}

/// Length of the control line (without CRLF) a PUB/HPUB would have; used to refuse
/// frames over max_control_line before buffering.
///
/// `headers_len` is the encoded header block length ([`HeaderMap::encoded_len`]);
/// `Some` makes it an `HPUB`.
pub fn pub_control_line_len(
    subject: &str,
    reply: Option<&str>,
    headers_len: Option<usize>,
    payload_len: usize,
) -> usize {
    let reply_len = reply.map_or(0, |r| r.len() + 1);
    match headers_len {
        None => 4 + subject.len() + 1 + reply_len + decimal_len(payload_len as u64),
        Some(h) => {
            5 + subject.len()
                + 1
                + reply_len
                + decimal_len(h as u64)
                + 1
                + decimal_len(h.saturating_add(payload_len) as u64)
        }
    }
}

/// Length of the control line (without CRLF) of a `SUB`.
pub fn sub_control_line_len(subject: &str, queue: Option<&str>, sid: u64) -> usize {
    4 + subject.len() + 1 + queue.map_or(0, |q| q.len() + 1) + decimal_len(sid)
}

/// Total encoded frame length of a PUB/HPUB.
pub fn pub_frame_len(
    subject: &str,
    reply: Option<&str>,
    headers_len: Option<usize>,
    payload_len: usize,
) -> usize {
    pub_control_line_len(subject, reply, headers_len, payload_len)
        + 2
        + headers_len.unwrap_or(0)
        + payload_len
        + 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::StatusCode;

    #[test]
    fn decimals() {
        for n in [0, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut buf = BytesMut::new();
            put_decimal(&mut buf, n);
            assert_eq!(buf, n.to_string().as_bytes());
            assert_eq!(decimal_len(n), n.to_string().len());
        }
    }

    #[test]
    fn pub_frames() {
        let mut buf = BytesMut::new();
        encode_pub(&mut buf, "foo", None, b"hello");
        assert_eq!(buf, &b"PUB foo 5\r\nhello\r\n"[..]);
        assert_eq!(buf.len(), pub_frame_len("foo", None, None, 5));
        assert_eq!(pub_control_line_len("foo", None, None, 5), 9);

        let mut buf = BytesMut::new();
        encode_pub(&mut buf, "foo", Some("_INBOX.1"), b"");
        assert_eq!(buf, &b"PUB foo _INBOX.1 0\r\n\r\n"[..]);
        assert_eq!(buf.len(), pub_frame_len("foo", Some("_INBOX.1"), None, 0));
    }

    #[test]
    fn hpub_frames() {
        let mut h = HeaderMap::new();
        h.append("A", "b");
        let mut buf = BytesMut::new();
        encode_hpub(&mut buf, "foo", Some("r"), &h, b"xy");
        // "NATS/1.0\r\nA: b\r\n\r\n" is 18 bytes; 18 + 2 = 20.
        assert_eq!(
            buf,
            &b"HPUB foo r 18 20\r\nNATS/1.0\r\nA: b\r\n\r\nxy\r\n"[..]
        );
        assert_eq!(buf.len(), pub_frame_len("foo", Some("r"), Some(18), 2));
        assert_eq!(pub_control_line_len("foo", Some("r"), Some(18), 2), 16);

        let mut h = HeaderMap::new();
        h.set_status(StatusCode::NO_RESPONDERS, None);
        let mut buf = BytesMut::new();
        encode_hpub(&mut buf, "a", None, &h, b"");
        assert_eq!(buf, &b"HPUB a 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"[..]);
    }

    #[test]
    fn sub_unsub_ping_pong() {
        let mut buf = BytesMut::new();
        encode_sub(&mut buf, "foo.*", None, 1);
        encode_sub(
            &mut buf,
            "foo.>",
            Some("workers"),
            18_446_744_073_709_551_615,
        );
        encode_unsub(&mut buf, 1, None);
        encode_unsub(&mut buf, 2, Some(10));
        encode_ping(&mut buf);
        encode_pong(&mut buf);
        assert_eq!(
            buf,
            &b"SUB foo.* 1\r\nSUB foo.> workers 18446744073709551615\r\nUNSUB 1\r\nUNSUB 2 10\r\nPING\r\nPONG\r\n"[..]
        );
        assert_eq!(sub_control_line_len("foo.*", None, 1), 11);
        assert_eq!(
            sub_control_line_len("foo.>", Some("workers"), u64::MAX),
            "SUB foo.> workers 18446744073709551615".len()
        );
    }

    #[test]
    fn connect_frame() {
        let mut buf = BytesMut::new();
        encode_connect(&mut buf, &ConnectInfo::default());
        assert!(buf.starts_with(b"CONNECT {\"verbose\":false,"));
        assert!(buf.ends_with(b"}\r\n"));
    }
}
