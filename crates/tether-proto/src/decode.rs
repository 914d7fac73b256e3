//! The incremental decoder of server operations.
//!
//! Grammar (<https://docs.nats.io/reference/reference-protocols/nats-protocol>):
//! ```text
//! INFO {json}\r\n
//! MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n
//! HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>\r\n<headers+payload>\r\n
//! PING\r\n   PONG\r\n   +OK\r\n   -ERR '<text>'\r\n
//! ```
//! Leniency follows what the reference parsers accept (nats-server `server/parser.go`,
//! nats.go `parser.go`): operation names in any case, arguments separated by runs of
//! spaces or tabs, a control line ended by LF with or without the CR. The payload
//! terminator must be exactly CRLF (`MSG_END_R`/`MSG_END_N` in `server/parser.go`).
//!
//! # Contract
//! - `Ok(Some(op))`: the op's bytes were removed from the front of the buffer.
//! - `Ok(None)`: more bytes are needed; the buffer is untouched. Append to it and call
//!   again. The decoder remembers how far it scanned and, for `MSG`/`HMSG`, the parsed
//!   control line, so feeding one byte at a time stays linear.
//! - `Err(_)`: the peer broke the protocol; close the connection. Nothing was consumed.
//!
//! The decoder belongs to one byte stream: between calls the buffer may only be appended
//! to. Any chunking of a stream yields the same ops and the same error.

use bytes::{Buf, BytesMut};
use memchr::memchr;

use crate::error::{excerpt, ProtocolError};
use crate::headers::HeaderMap;
use crate::info::ServerInfo;
use crate::op::{Msg, ServerOp, Subject};

/// Default cap on an inbound control line: 64 KiB (DESIGN "Semantics" 8). nats-server's
/// own `max_control_line` default is 4 KiB (`MAX_CONTROL_LINE_SIZE` in
/// `server/const.go`), but a delivery's control line carries subjects of any length the
/// server accepted from publishers.
pub const DEFAULT_MAX_INBOUND_CONTROL_LINE: usize = 64 * 1024;
/// Default cap on an inbound `INFO` line: 1 MiB (`connect_urls` of large clusters).
pub const DEFAULT_MAX_INBOUND_INFO_LINE: usize = 1024 * 1024;
/// Default cap on an inbound payload (header block + payload): 64 MiB, nats-server's
/// largest configurable `max_payload` (`MAX_PAYLOAD_MAX_SIZE` in `server/const.go`).
/// Never INFO's `max_payload`: the server may add headers to what a publisher sent.
pub const DEFAULT_MAX_INBOUND_PAYLOAD: usize = 64 * 1024 * 1024;

/// Caps that keep hostile input from growing memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderLimits {
    /// Longest control line, CRLF excluded [`DEFAULT_MAX_INBOUND_CONTROL_LINE`].
    pub max_control_line: usize,
    /// Longest `INFO` line, CRLF excluded [`DEFAULT_MAX_INBOUND_INFO_LINE`].
    pub max_info_line: usize,
    /// Largest `MSG`/`HMSG` payload, header block included
    /// [`DEFAULT_MAX_INBOUND_PAYLOAD`].
    pub max_payload: usize,
}

impl Default for DecoderLimits {
    fn default() -> Self {
        Self {
            max_control_line: DEFAULT_MAX_INBOUND_CONTROL_LINE,
            max_info_line: DEFAULT_MAX_INBOUND_INFO_LINE,
            max_payload: DEFAULT_MAX_INBOUND_PAYLOAD,
        }
    }
}

/// The incremental decoder; see the [module docs](self) for the contract.
///
/// ```
/// use bytes::BytesMut;
/// use tether_proto::{Decoder, DecoderLimits, ServerOp};
///
/// let mut decoder = Decoder::new(DecoderLimits::default());
/// let mut buf = BytesMut::from(&b"-ERR 'Authorization Violation'\r\n"[..]);
/// assert_eq!(
///     decoder.decode(&mut buf).unwrap(),
///     Some(ServerOp::Err("Authorization Violation".into()))
/// );
/// assert!(buf.is_empty());
/// ```
#[derive(Debug)]
pub struct Decoder {
    limits: DecoderLimits,
    state: State,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Looking for the end of a control line; the first `scanned` bytes hold no LF.
    Line { scanned: usize },
    /// A `MSG`/`HMSG` control line is parsed; waiting for its payload.
    Payload(PendingMsg),
}

/// A parsed `MSG`/`HMSG` control line. Offsets are into the buffer, which still holds
/// the control line (so that `Ok(None)` leaves the buffer untouched).
#[derive(Debug, Clone, Copy)]
struct PendingMsg {
    /// Control line length including its terminator: where the payload starts.
    line_len: usize,
    subject: (usize, usize),
    reply: Option<(usize, usize)>,
    sid: u64,
    header_len: Option<usize>,
    total_len: usize,
}

/// What a control line turned out to be.
enum Parsed {
    Op(ServerOp),
    Msg(PendingMsg),
}

/// The most arguments any server op has (`HMSG` with a reply subject).
const MAX_ARGS: usize = 5;

impl Decoder {
    /// A decoder with the given caps.
    pub fn new(limits: DecoderLimits) -> Self {
        Self {
            limits,
            state: State::Line { scanned: 0 },
        }
    }

    /// The caps in force.
    pub fn limits(&self) -> DecoderLimits {
        self.limits
    }

    /// Ok(Some(op)) consumes that op's bytes from buf; Ok(None) = need more bytes (buf
    /// untouched); Err = protocol violation (connection must close).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<ServerOp>, ProtocolError> {
        let pending = match self.state {
            State::Payload(pending) => pending,
            State::Line { scanned } => {
                // Resume the LF search where the last call stopped.
                let from = scanned.min(buf.len());
                let found = buf
                    .get(from..)
                    .and_then(|rest| memchr(b'\n', rest))
                    .map(|i| from + i);
                let Some(lf) = found else {
                    self.state = State::Line { scanned: buf.len() };
                    self.check_partial_line(buf)?;
                    return Ok(None);
                };
                // server/parser.go takes LF as the end of a control line and drops a CR
                // before it.
                let line_end = match lf.checked_sub(1) {
                    Some(cr) if buf.get(cr) == Some(&b'\r') => cr,
                    _ => lf,
                };
                let line = buf.get(..line_end).unwrap_or_default();
                let limit = self.line_limit(line);
                if line.len() > limit {
                    return Err(ProtocolError::ControlLineTooLong { limit });
                }
                match self.parse_line(line, lf + 1)? {
                    Parsed::Op(op) => {
                        buf.advance(lf + 1);
                        self.state = State::Line { scanned: 0 };
                        return Ok(Some(op));
                    }
                    Parsed::Msg(pending) => pending,
                }
            }
        };
        self.take_payload(buf, pending)
    }

    /// The cap for a line starting with `start`: `INFO` lines get their own.
    fn line_limit(&self, start: &[u8]) -> usize {
        let n = start.len().min(4);
        let may_be_info = matches!(
            (start.get(..n), b"INFO".get(..n)),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b)
        );
        if may_be_info {
            self.limits.max_info_line
        } else {
            self.limits.max_control_line
        }
    }

    /// Refuses an unterminated control line already over its cap, so a peer that never
    /// sends LF cannot make the buffer grow without bound.
    fn check_partial_line(&self, buf: &[u8]) -> Result<(), ProtocolError> {
        // A trailing CR may be the first half of the terminator.
        let content = buf.strip_suffix(b"\r").unwrap_or(buf);
        let limit = self.line_limit(content);
        if content.len() > limit {
            return Err(ProtocolError::ControlLineTooLong { limit });
        }
        Ok(())
    }

    fn parse_line(&self, line: &[u8], line_len: usize) -> Result<Parsed, ProtocolError> {
        let op_end = line
            .iter()
            .position(|&b| is_separator(b))
            .unwrap_or(line.len());
        let (op, rest) = line.split_at(op_end);
        // MSG first: it is the hot path.
        if op.eq_ignore_ascii_case(b"MSG") {
            return self.parse_msg(line, op_end, line_len, false);
        }
        if op.eq_ignore_ascii_case(b"HMSG") {
            return self.parse_msg(line, op_end, line_len, true);
        }
        let no_args = |name: &'static str, reason: &'static str, op: ServerOp| {
            if rest.iter().all(|&b| is_separator(b)) {
                Ok(Parsed::Op(op))
            } else {
                Err(malformed(name, reason, line))
            }
        };
        if op.eq_ignore_ascii_case(b"PING") {
            return no_args("PING", "expected nothing after PING", ServerOp::Ping);
        }
        if op.eq_ignore_ascii_case(b"PONG") {
            return no_args("PONG", "expected nothing after PONG", ServerOp::Pong);
        }
        if op.eq_ignore_ascii_case(b"+OK") {
            return no_args("+OK", "expected nothing after +OK", ServerOp::Ok);
        }
        if op.eq_ignore_ascii_case(b"-ERR") {
            return Ok(Parsed::Op(ServerOp::Err(parse_err_text(rest))));
        }
        if op.eq_ignore_ascii_case(b"INFO") {
            let info = ServerInfo::from_json(rest)?;
            return Ok(Parsed::Op(ServerOp::Info(Box::new(info))));
        }
        Err(ProtocolError::UnknownOperation {
            excerpt: excerpt(line),
        })
    }

    /// Parses the arguments of `MSG`/`HMSG` (nats.go `processMsgArgs`/`processHeaderMsgArgs`).
    fn parse_msg(
        &self,
        line: &[u8],
        args_start: usize,
        line_len: usize,
        with_headers: bool,
    ) -> Result<Parsed, ProtocolError> {
        let (name, usage) = if with_headers {
            (
                "HMSG",
                "expected `HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>`",
            )
        } else {
            ("MSG", "expected `MSG <subject> <sid> [reply-to] <#bytes>`")
        };
        let mut args = [(0usize, 0usize); MAX_ARGS];
        let count =
            split_args(line, args_start, &mut args).ok_or_else(|| malformed(name, usage, line))?;
        let args = args.get(..count).unwrap_or_default();
        let (subject, sid, reply, sizes) = match (with_headers, args) {
            (false, [subject, sid, size]) => (*subject, *sid, None, (None, *size)),
            (false, [subject, sid, reply, size]) => (*subject, *sid, Some(*reply), (None, *size)),
            (true, [subject, sid, hdr, size]) => (*subject, *sid, None, (Some(*hdr), *size)),
            (true, [subject, sid, reply, hdr, size]) => {
                (*subject, *sid, Some(*reply), (Some(*hdr), *size))
            }
            _ => return Err(malformed(name, usage, line)),
        };
        let arg = |(start, end): (usize, usize)| line.get(start..end).unwrap_or_default();

        let sid =
            parse_u64(arg(sid)).ok_or_else(|| malformed(name, "expected a numeric sid", line))?;
        let total = parse_u64(arg(sizes.1))
            .ok_or_else(|| malformed(name, "expected a numeric byte count", line))?;
        let total = usize::try_from(total).unwrap_or(usize::MAX);
        // Refuse before waiting for the payload, so it is never buffered.
        if total > self.limits.max_payload {
            return Err(ProtocolError::PayloadTooLarge {
                size: total,
                limit: self.limits.max_payload,
            });
        }
        let header_len = match sizes.0 {
            None => None,
            Some(h) => {
                let h = parse_u64(arg(h))
                    .ok_or_else(|| malformed(name, "expected a numeric header byte count", line))?;
                let h = usize::try_from(h).unwrap_or(usize::MAX);
                if h > total {
                    return Err(malformed(
                        name,
                        "expected a header byte count no larger than the total byte count",
                        line,
                    ));
                }
                Some(h)
            }
        };
        if !is_utf8(arg(subject)) {
            return Err(malformed(name, "expected a UTF-8 subject", line));
        }
        if reply.is_some_and(|r| !is_utf8(arg(r))) {
            return Err(malformed(name, "expected a UTF-8 reply subject", line));
        }
        Ok(Parsed::Msg(PendingMsg {
            line_len,
            subject,
            reply,
            sid,
            header_len,
            total_len: total,
        }))
    }

    /// Emits the message once its payload and CRLF are in `buf`.
    fn take_payload(
        &mut self,
        buf: &mut BytesMut,
        p: PendingMsg,
    ) -> Result<Option<ServerOp>, ProtocolError> {
        let payload_end = p.line_len.saturating_add(p.total_len);
        let frame_len = payload_end.saturating_add(2);
        let Some(terminator) = buf.get(payload_end..frame_len) else {
            self.state = State::Payload(p);
            return Ok(None);
        };
        if terminator != b"\r\n" {
            self.state = State::Payload(p);
            return Err(ProtocolError::MissingPayloadTerminator {
                excerpt: excerpt(terminator),
            });
        }
        let mut malformed_headers = false;
        let headers = match p.header_len {
            None => None,
            Some(h) => {
                let block = buf.get(p.line_len..p.line_len + h).unwrap_or_default();
                // Any publisher can write a header block: a bad one must not close our
                // connection (the frame itself is well delimited), so deliver without it.
                if let Ok(map) = HeaderMap::decode(block) {
                    Some(map)
                } else {
                    malformed_headers = true;
                    None
                }
            }
        };
        // One reference for the frame, one for the subject (and one for the reply): the
        // frame itself becomes the payload. Each reference is an atomic operation, and
        // those dominate the cost of a small message.
        let mut payload = buf.split_to(payload_end).freeze();
        buf.advance(2);
        self.state = State::Line { scanned: 0 };
        // Every range lies within the control line, so within `payload` before advancing.
        let subject = Subject::from_checked(payload.slice(p.subject.0..p.subject.1));
        let reply = p
            .reply
            .map(|(start, end)| Subject::from_checked(payload.slice(start..end)));
        payload.advance(p.line_len + p.header_len.unwrap_or(0));
        Ok(Some(ServerOp::Msg(Msg {
            subject,
            sid: p.sid,
            reply,
            headers,
            payload,
            wire_size: p.total_len,
            malformed_headers,
        })))
    }
}

/// Argument separators: space and tab, as in nats.go `processMsgArgs`, which also splits
/// on a stray CR.
#[inline]
fn is_separator(b: u8) -> bool {
    // The first comparison settles the common case (a printable byte) alone.
    b <= b' ' && matches!(b, b' ' | b'\t' | b'\r')
}

/// Splits `line[from..]` into at most [`MAX_ARGS`] arguments; `None` if there are more.
#[inline]
fn split_args(line: &[u8], from: usize, out: &mut [(usize, usize); MAX_ARGS]) -> Option<usize> {
    let mut i = from;
    let mut count = 0;
    loop {
        while line.get(i).is_some_and(|&b| is_separator(b)) {
            i += 1;
        }
        if i >= line.len() {
            return Some(count);
        }
        let start = i;
        while line.get(i).is_some_and(|&b| !is_separator(b)) {
            i += 1;
        }
        *out.get_mut(count)? = (start, i);
        count += 1;
    }
}

/// UTF-8 check with a fast path for the usual all-ASCII subject.
#[inline]
fn is_utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

/// A decimal without sign; `None` if empty, not digits, or over `u64::MAX`.
#[inline]
fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &c in digits {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d))?;
    }
    Some(n)
}

/// The text of `-ERR 'text'`: trimmed, one pair of surrounding quotes removed (nats.go
/// `normalizeErr` trims the quotes the server puts around it, `server/client.go`
/// `sendErr`).
fn parse_err_text(rest: &[u8]) -> String {
    let text = rest.trim_ascii();
    let text = text.strip_prefix(b"'").unwrap_or(text);
    let text = text.strip_suffix(b"'").unwrap_or(text);
    String::from_utf8_lossy(text.trim_ascii()).into_owned()
}

fn malformed(op: &'static str, reason: &'static str, line: &[u8]) -> ProtocolError {
    ProtocolError::Malformed {
        op,
        reason,
        excerpt: excerpt(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::StatusCode;

    fn decoder() -> Decoder {
        Decoder::new(DecoderLimits::default())
    }

    /// Decodes everything in `input` at once.
    fn all(input: &[u8]) -> Result<Vec<ServerOp>, ProtocolError> {
        let mut d = decoder();
        let mut buf = BytesMut::from(input);
        let mut ops = Vec::new();
        while let Some(op) = d.decode(&mut buf)? {
            ops.push(op);
        }
        Ok(ops)
    }

    fn one(input: &[u8]) -> ServerOp {
        let ops = all(input).unwrap();
        assert_eq!(ops.len(), 1, "{ops:?}");
        ops.into_iter().next().unwrap()
    }

    fn msg(input: &[u8]) -> Msg {
        match one(input) {
            ServerOp::Msg(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn simple_ops_any_case() {
        assert_eq!(
            all(b"PING\r\nPONG\r\n+OK\r\nping\r\nPong\r\n+ok\r\nPING \r\n").unwrap(),
            [
                ServerOp::Ping,
                ServerOp::Pong,
                ServerOp::Ok,
                ServerOp::Ping,
                ServerOp::Pong,
                ServerOp::Ok,
                ServerOp::Ping
            ]
        );
    }

    #[test]
    fn bare_lf_ends_a_control_line() {
        assert_eq!(
            all(b"PING\nPONG\n").unwrap(),
            [ServerOp::Ping, ServerOp::Pong]
        );
    }

    #[test]
    fn err_text() {
        assert_eq!(
            one(b"-ERR 'Authorization Violation'\r\n"),
            ServerOp::Err("Authorization Violation".into())
        );
        assert_eq!(
            one(b"-err   ' Stale Connection '  \r\n"),
            ServerOp::Err("Stale Connection".into())
        );
        assert_eq!(
            one(b"-ERR no quotes\r\n"),
            ServerOp::Err("no quotes".into())
        );
        assert_eq!(one(b"-ERR\r\n"), ServerOp::Err(String::new()));
        assert_eq!(
            one(b"-ERR 'Permissions Violation for Publish to \"x\"'\r\n"),
            ServerOp::Err("Permissions Violation for Publish to \"x\"".into())
        );
    }

    #[test]
    fn info() {
        let ServerOp::Info(info) = one(
            b"INFO {\"server_id\":\"S1\",\"version\":\"2.10.0\",\"headers\":true,\"max_payload\":2048,\"proto\":1,\"new\":{}}\r\n",
        ) else {
            panic!()
        };
        assert_eq!(info.server_id, "S1");
        assert!(info.headers);
        assert_eq!(info.max_payload, 2048);
        assert!(matches!(
            all(b"INFO {not json}\r\n"),
            Err(ProtocolError::InvalidInfo { .. })
        ));
        assert!(matches!(
            all(b"INFO\r\n"),
            Err(ProtocolError::InvalidInfo { .. })
        ));
    }

    #[test]
    fn msg_plain_and_with_reply() {
        let m = msg(b"MSG foo.bar 9 11\r\nHello World\r\n");
        assert_eq!(m.subject, "foo.bar");
        assert_eq!(m.sid, 9);
        assert_eq!(m.reply, None);
        assert_eq!(m.headers, None);
        assert_eq!(&m.payload[..], b"Hello World");
        assert_eq!(m.wire_size, 11);

        let m = msg(b"msg  foo.bar\t9  _INBOX.34 5\r\nhello\r\n");
        assert_eq!(m.reply.as_ref().unwrap(), "_INBOX.34");
        assert_eq!(&m.payload[..], b"hello");

        let m = msg(b"MSG e 1 0\r\n\r\n");
        assert!(m.payload.is_empty());
    }

    #[test]
    fn payload_may_hold_crlf() {
        let m = msg(b"MSG a 1 4\r\n\r\n\r\n\r\n");
        assert_eq!(&m.payload[..], b"\r\n\r\n");
    }

    #[test]
    fn hmsg_no_responders() {
        // "NATS/1.0 503\r\n" (14) + "Nats-Subject: foo\r\n" (19) + "\r\n" (2) = 35.
        let block = b"NATS/1.0 503\r\nNats-Subject: foo\r\n\r\n";
        assert_eq!(block.len(), 35);
        let m = msg(b"HMSG _INBOX.x.y 1 35 35\r\nNATS/1.0 503\r\nNats-Subject: foo\r\n\r\n\r\n");
        let h = m.headers.unwrap();
        assert_eq!(h.status(), Some(StatusCode::NO_RESPONDERS));
        assert_eq!(h.get("Nats-Subject"), Some("foo"));
        assert!(m.payload.is_empty());
        assert_eq!(m.wire_size, 35);
        assert_eq!(m.subject, "_INBOX.x.y");
        // Miscounted sizes (28 instead of 35) are caught at the payload terminator.
        assert!(matches!(
            all(b"HMSG _INBOX.x.y 1 28 28\r\nNATS/1.0 503\r\nNats-Subject: foo\r\n\r\n\r\n"),
            Err(ProtocolError::MissingPayloadTerminator { .. })
        ));
    }

    #[test]
    fn hmsg_no_responders_old_form() {
        // "NATS/1.0 503\r\n\r\n" is 16 bytes.
        let m = msg(b"HMSG _INBOX.x.y 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n");
        let h = m.headers.unwrap();
        assert_eq!(h.status(), Some(StatusCode::NO_RESPONDERS));
        assert!(h.is_empty());
        assert!(m.payload.is_empty());
    }

    #[test]
    fn hmsg_with_reply_and_payload() {
        // "NATS/1.0\r\nA: 1\r\n\r\n" is 18 bytes; + "hello" = 23.
        let m = msg(b"HMSG s 2 r 18 23\r\nNATS/1.0\r\nA: 1\r\n\r\nhello\r\n");
        assert_eq!(m.reply.as_ref().unwrap(), "r");
        assert_eq!(m.headers.unwrap().get("A"), Some("1"));
        assert_eq!(&m.payload[..], b"hello");
        assert_eq!(m.wire_size, 23);
    }

    #[test]
    fn truncated_input_needs_more() {
        let full = b"MSG foo 1 5\r\nhello\r\n";
        for cut in 0..full.len() {
            let mut d = decoder();
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(d.decode(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(&buf[..], &full[..cut], "buffer untouched");
            buf.extend_from_slice(&full[cut..]);
            assert!(matches!(d.decode(&mut buf), Ok(Some(ServerOp::Msg(_)))));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn one_byte_at_a_time_keeps_parsed_line() {
        let full = b"HMSG a 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\n";
        let mut d = decoder();
        let mut buf = BytesMut::new();
        let mut ops = Vec::new();
        for &b in full {
            buf.extend_from_slice(&[b]);
            while let Some(op) = d.decode(&mut buf).unwrap() {
                ops.push(op);
            }
        }
        assert_eq!(ops, all(full).unwrap());
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn control_line_over_limit_errors_without_crlf() {
        let mut d = Decoder::new(DecoderLimits {
            max_control_line: 16,
            ..DecoderLimits::default()
        });
        let mut buf = BytesMut::from(&b"MSG aaaaaaaaaaaa"[..]); // 16 bytes: still fine
        assert_eq!(d.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"\r"); // could be the terminator's first half
        assert_eq!(d.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"x");
        assert_eq!(
            d.decode(&mut buf),
            Err(ProtocolError::ControlLineTooLong { limit: 16 })
        );
        // With the terminator present the same line errors too.
        assert_eq!(
            Decoder::new(DecoderLimits {
                max_control_line: 4,
                ..DecoderLimits::default()
            })
            .decode(&mut BytesMut::from(&b"MSG a 1 0\r\n\r\n"[..])),
            Err(ProtocolError::ControlLineTooLong { limit: 4 })
        );
        // A never-ending line of garbage at the default limit.
        let mut d = decoder();
        let mut buf = BytesMut::from(&vec![b'x'; DEFAULT_MAX_INBOUND_CONTROL_LINE + 1][..]);
        assert_eq!(
            d.decode(&mut buf),
            Err(ProtocolError::ControlLineTooLong {
                limit: DEFAULT_MAX_INBOUND_CONTROL_LINE
            })
        );
    }

    #[test]
    fn info_line_has_its_own_limit() {
        let limits = DecoderLimits {
            max_control_line: 8,
            max_info_line: 64,
            ..DecoderLimits::default()
        };
        let mut buf = BytesMut::from(&b"INFO {\"port\":4222}\r\nPING\r\n"[..]);
        let mut d = Decoder::new(limits);
        assert!(matches!(d.decode(&mut buf), Ok(Some(ServerOp::Info(_)))));
        assert_eq!(d.decode(&mut buf), Ok(Some(ServerOp::Ping)));
        let mut buf = BytesMut::from(&[b"info ".as_slice(), &[b' '; 64]].concat()[..]);
        assert_eq!(
            Decoder::new(limits).decode(&mut buf),
            Err(ProtocolError::ControlLineTooLong { limit: 64 })
        );
    }

    #[test]
    fn huge_declared_payload_errors_at_once() {
        let mut buf = BytesMut::from(&b"MSG foo 1 67108865\r\n"[..]);
        assert_eq!(
            decoder().decode(&mut buf),
            Err(ProtocolError::PayloadTooLarge {
                size: 67_108_865,
                limit: DEFAULT_MAX_INBOUND_PAYLOAD
            })
        );
        let mut buf = BytesMut::from(&b"HMSG foo 1 10 99999999999\r\n"[..]);
        assert!(matches!(
            decoder().decode(&mut buf),
            Err(ProtocolError::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn missing_payload_terminator() {
        assert_eq!(
            all(b"MSG foo 1 3\r\nhello\r\n"),
            Err(ProtocolError::MissingPayloadTerminator {
                excerpt: "lo".into()
            })
        );
        // Incomplete terminator: wait.
        assert_eq!(all(b"MSG foo 1 3\r\nhel\r"), Ok(vec![]));
    }

    #[test]
    fn malformed_msgs() {
        for (input, op, reason_part) in [
            (&b"MSG foo x 3\r\n"[..], "MSG", "numeric sid"),
            (b"MSG foo 1 x\r\n", "MSG", "numeric byte count"),
            (b"MSG foo 1 -3\r\n", "MSG", "numeric byte count"),
            (
                b"MSG foo 1 99999999999999999999999\r\n",
                "MSG",
                "numeric byte count",
            ),
            (b"MSG foo 1\r\n", "MSG", "MSG <subject>"),
            (b"MSG\r\n", "MSG", "MSG <subject>"),
            (b"MSG a b c d e f\r\n", "MSG", "MSG <subject>"),
            (b"MSG \xff 1 0\r\n", "MSG", "UTF-8 subject"),
            (b"MSG a 1 \xfe 0\r\n", "MSG", "UTF-8 reply"),
            (b"HMSG foo 1 5\r\n", "HMSG", "HMSG <subject>"),
            (b"HMSG foo 1 5 4\r\n", "HMSG", "no larger than"),
            (b"HMSG foo 1 x 4\r\n", "HMSG", "header byte count"),
            (b"PING x\r\n", "PING", "nothing after"),
            (b"PONG x\r\n", "PONG", "nothing after"),
            (b"+OK x\r\n", "+OK", "nothing after"),
        ] {
            match all(input) {
                Err(ProtocolError::Malformed {
                    op: got_op, reason, ..
                }) => {
                    assert_eq!(got_op, op, "{input:?}");
                    assert!(reason.contains(reason_part), "{input:?}: {reason}");
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
        let e = all(b"MSG foo x 3\r\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed MSG: expected a numeric sid, got `MSG foo x 3`"
        );
    }

    #[test]
    fn invalid_headers_are_delivered_without_headers() {
        let ops = all(b"HMSG a 1 5 7\r\nHTTP/hi\r\nPING\r\n").unwrap();
        let ServerOp::Msg(m) = &ops[0] else {
            panic!("{ops:?}")
        };
        assert!(m.malformed_headers && m.headers.is_none());
        assert_eq!(&m.payload[..], b"hi");
        assert_eq!(ops[1], ServerOp::Ping, "the connection goes on");
    }

    #[test]
    fn garbage_and_unknown_ops() {
        for input in [
            &b"HTTP/1.1 400 Bad Request\r\n"[..],
            b"\r\n",
            b" PING\r\n",
            b"PINGX\r\n",
            b"\x00\x01\x02\n",
            b"SUB foo 1\r\n",
        ] {
            assert!(
                matches!(all(input), Err(ProtocolError::UnknownOperation { .. })),
                "{input:?}"
            );
        }
        let e = all(b"\x16\x03\x01 tls hello\r\n").unwrap_err();
        assert_eq!(
            e,
            ProtocolError::UnknownOperation {
                excerpt: "\\x16\\x03\\x01 tls hello".into()
            }
        );
    }

    #[test]
    fn error_leaves_buffer_and_repeats() {
        let mut d = decoder();
        let mut buf = BytesMut::from(&b"BOGUS\r\n"[..]);
        let first = d.decode(&mut buf);
        assert!(first.is_err());
        assert_eq!(&buf[..], b"BOGUS\r\n");
        assert_eq!(d.decode(&mut buf), first);
    }

    #[test]
    fn zero_copy_slices_share_the_frame() {
        let mut d = decoder();
        let mut buf = BytesMut::from(&b"MSG subj 1 rep 3\r\nabc\r\n"[..]);
        let Some(ServerOp::Msg(m)) = d.decode(&mut buf).unwrap() else {
            panic!()
        };
        let frame_start = m.subject.as_bytes().as_ptr() as usize - 4;
        assert_eq!(m.payload.as_ptr() as usize, frame_start + 18);
    }

    #[test]
    fn limits_accessor() {
        let l = DecoderLimits {
            max_payload: 5,
            ..DecoderLimits::default()
        };
        assert_eq!(Decoder::new(l).limits(), l);
    }
}
