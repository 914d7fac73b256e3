//! Entry points for fuzz targets and property tests. **Not a stable API**: hidden from
//! the docs and free to change in any release.
//!
//! One oracle per entry point that takes the server's bytes, each the body of a target in
//! `fuzz/fuzz_targets/` (run them with `scripts/fuzz`, see `fuzz/README.md`):
//! - [`fuzz_decode`] (`decode`): any input gives the same result at every chunking, and
//!   every decoded op survives a round trip through [`encode_server_op`] (STYLE.md part 3
//!   item 10).
//! - [`fuzz_info`] (`info`): the JSON of an `INFO` line; a parsed `ServerInfo` survives a
//!   JSON round trip, and the decoder reads `INFO <json>` exactly as the JSON alone.
//! - [`fuzz_headers`] (`headers`): an `HMSG` header block with its status line; a decoded
//!   map survives encode → decode, and the decoder delivers the same map in a frame.
//!
//! Every error any of them returns must display on one line: errors end up in logs, and
//! bytes from the network must not be able to forge log lines.

use bytes::{BufMut, BytesMut};

use crate::decode::{Decoder, DecoderLimits, DEFAULT_MAX_INBOUND_INFO_LINE};
use crate::encode::put_decimal;
use crate::error::ProtocolError;
use crate::headers::HeaderMap;
use crate::info::ServerInfo;
use crate::op::{Msg, ServerOp};

/// Decodes `data` fed in chunks of `chunk` bytes (`0` means all at once) with the
/// default limits, calling `decode` until it needs more after each chunk. Bytes of an
/// unfinished op at the end are ignored.
pub fn decode_all(data: &[u8], chunk: usize) -> Result<Vec<ServerOp>, ProtocolError> {
    let mut decoder = Decoder::new(DecoderLimits::default());
    let mut buf = BytesMut::new();
    let mut ops = Vec::new();
    let chunk = if chunk == 0 { data.len().max(1) } else { chunk };
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(op) = decoder.decode(&mut buf)? {
            ops.push(op);
        }
    }
    Ok(ops)
}

/// Writes `op` as a server would: `INFO {json}`, `MSG`/`HMSG` (by whether headers are
/// present), `PING`, `PONG`, `+OK`, `-ERR 'text'`. `Msg::wire_size` is ignored; sizes are
/// computed from the headers and payload.
pub fn encode_server_op(op: &ServerOp, buf: &mut BytesMut) {
    match op {
        ServerOp::Info(info) => {
            buf.put_slice(b"INFO ");
            // ServerInfo has only strings, integers, bools and lists of strings, so
            // serializing it cannot fail; a test helper may still say so loudly.
            serde_json::to_writer(buf.writer(), info).expect("ServerInfo serializes");
            buf.put_slice(b"\r\n");
        }
        ServerOp::Msg(msg) => encode_msg(msg, buf),
        ServerOp::Ping => buf.put_slice(b"PING\r\n"),
        ServerOp::Pong => buf.put_slice(b"PONG\r\n"),
        ServerOp::Ok => buf.put_slice(b"+OK\r\n"),
        ServerOp::Err(text) => {
            buf.put_slice(b"-ERR '");
            buf.put_slice(text.as_bytes());
            buf.put_slice(b"'\r\n");
        }
    }
}

fn encode_msg(msg: &Msg, buf: &mut BytesMut) {
    let headers_len = msg.headers.as_ref().map(crate::HeaderMap::encoded_len);
    buf.put_slice(if headers_len.is_some() {
        b"HMSG "
    } else {
        b"MSG "
    });
    buf.put_slice(msg.subject.as_bytes());
    buf.put_u8(b' ');
    put_decimal(buf, msg.sid);
    buf.put_u8(b' ');
    if let Some(reply) = &msg.reply {
        buf.put_slice(reply.as_bytes());
        buf.put_u8(b' ');
    }
    if let Some(h) = headers_len {
        put_decimal(buf, h as u64);
        buf.put_u8(b' ');
    }
    put_decimal(buf, (headers_len.unwrap_or(0) + msg.payload.len()) as u64);
    buf.put_slice(b"\r\n");
    if let Some(headers) = &msg.headers {
        headers.encode(buf);
    }
    buf.put_slice(&msg.payload);
    buf.put_slice(b"\r\n");
}

/// `op` with `wire_size` as [`encode_server_op`] would write it.
fn canonical_wire_size(op: ServerOp) -> ServerOp {
    match op {
        ServerOp::Msg(mut m) => {
            // A malformed header block is dropped on decode and not written again.
            m.malformed_headers = false;
            m.wire_size =
                m.headers.as_ref().map_or(0, crate::HeaderMap::encoded_len) + m.payload.len();
            ServerOp::Msg(m)
        }
        other => other,
    }
}

/// The fuzz oracle: decodes `data` one byte at a time, in chunks of 7 and all at once,
/// asserts the three results are equal, then re-encodes every decoded op and asserts
/// that decoding the result gives equal ops (`Msg::wire_size` aside, which follows the
/// re-encoded header block).
///
/// # Panics
/// When a property fails; that is the point.
pub fn fuzz_decode(data: &[u8]) {
    let whole = decode_all(data, 0);
    if let Err(e) = &whole {
        assert_one_line(e);
    }
    assert_eq!(decode_all(data, 1), whole, "one byte at a time differs");
    assert_eq!(decode_all(data, 7), whole, "chunks of 7 differ");
    if let Ok(ops) = whole {
        let mut buf = BytesMut::new();
        for op in &ops {
            encode_server_op(op, &mut buf);
        }
        let again = decode_all(&buf, 0).expect("re-encoded ops decode");
        // A header block may be re-encoded canonically ("K:v" becomes "K: v"), which
        // changes the frame's size but nothing else.
        let canonical: Vec<ServerOp> = ops.into_iter().map(canonical_wire_size).collect();
        assert_eq!(again, canonical, "round trip differs");
    }
}

/// The oracle of the `info` target: parses `json` as the decoder parses what follows
/// `INFO`, then asserts that
/// - a parsed `ServerInfo` serializes, parses back equal, and serializes again to the
///   same bytes;
/// - the decoder gives the same result (the same info or the same error) for the line
///   `INFO <json>\r\n`, whenever `json` fits on one line;
/// - an error displays on one line.
///
/// # Panics
/// When a property fails.
pub fn fuzz_info(json: &[u8]) {
    let parsed = ServerInfo::from_json(json);
    match &parsed {
        Ok(info) => {
            let encoded = serde_json::to_vec(info).expect("ServerInfo serializes");
            let again = ServerInfo::from_json(&encoded).expect("re-encoded INFO parses");
            assert_eq!(&again, info, "INFO round trip differs");
            let encoded_again = serde_json::to_vec(&again).expect("ServerInfo serializes");
            assert_eq!(encoded_again, encoded, "INFO serialization is not stable");
        }
        Err(e) => {
            assert!(
                matches!(e, ProtocolError::InvalidInfo { .. }),
                "unexpected error {e:?}"
            );
            assert_one_line(e);
        }
    }
    // A LF would end the line early; past the cap the decoder refuses the line.
    if !json.contains(&b'\n') && json.len() + b"INFO ".len() <= DEFAULT_MAX_INBOUND_INFO_LINE {
        let mut line = Vec::with_capacity(json.len() + 7);
        line.extend_from_slice(b"INFO ");
        line.extend_from_slice(json);
        line.extend_from_slice(b"\r\n");
        let expected = parsed.map(|info| vec![ServerOp::Info(Box::new(info))]);
        assert_eq!(
            decode_all(&line, 0),
            expected,
            "decoder reads INFO differently"
        );
    }
}

/// The oracle of the `headers` target: decodes `block` as the header block of an
/// `HMSG`, then asserts that
/// - a decoded map has a description only with a status, never an empty one; it
///   encodes to [`HeaderMap::encoded_len`] bytes, which decode to an equal map (status,
///   description, entries in order) and encode again to the same bytes;
/// - an error is [`ProtocolError::InvalidHeaders`] and displays on one line;
/// - the decoder, given `block` as the header block of an `HMSG` frame, delivers the
///   message with the same map, or flagged `malformed_headers` without one.
///
/// # Panics
/// When a property fails.
pub fn fuzz_headers(block: &[u8]) {
    let decoded = HeaderMap::decode(block);
    match &decoded {
        Ok(map) => {
            assert!(
                map.status().is_some() || map.description().is_none(),
                "description without status: {map:?}"
            );
            assert_ne!(map.description(), Some(""), "empty description kept");
            let mut encoded = BytesMut::new();
            map.encode(&mut encoded);
            assert_eq!(encoded.len(), map.encoded_len(), "encoded_len is wrong");
            let again = HeaderMap::decode(&encoded).expect("re-encoded header block decodes");
            assert_eq!(&again, map, "header round trip differs");
            let mut encoded_again = BytesMut::new();
            again.encode(&mut encoded_again);
            assert_eq!(encoded_again, encoded, "header encoding is not stable");
        }
        Err(e) => {
            assert!(
                matches!(e, ProtocolError::InvalidHeaders { .. }),
                "unexpected error {e:?}"
            );
            assert_one_line(e);
        }
    }
    if block.len() <= DecoderLimits::default().max_payload {
        let mut frame = BytesMut::new();
        frame.put_slice(b"HMSG s 1 ");
        put_decimal(&mut frame, block.len() as u64);
        frame.put_u8(b' ');
        put_decimal(&mut frame, block.len() as u64);
        frame.put_slice(b"\r\n");
        frame.put_slice(block);
        frame.put_slice(b"\r\n");
        let ops = decode_all(&frame, 0).expect("an HMSG frame decodes whatever its headers");
        let [ServerOp::Msg(msg)] = ops.as_slice() else {
            panic!("expected one message, got {ops:?}");
        };
        assert_eq!(
            msg.headers.as_ref(),
            decoded.as_ref().ok(),
            "frame headers differ"
        );
        assert_eq!(
            msg.malformed_headers,
            decoded.is_err(),
            "malformed flag differs"
        );
        assert!(msg.payload.is_empty(), "payload is not empty");
    }
}

/// Errors are logged: bytes from the network must not break their line.
fn assert_one_line(e: &ProtocolError) {
    let text = e.to_string();
    assert!(
        !text.contains(['\r', '\n']),
        "error displays on several lines: {text:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oracle_on_samples() {
        for sample in [
            &b""[..],
            b"PING\r\nPONG\r\n+OK\r\n-ERR 'x'\r\n",
            b"INFO {\"server_id\":\"a\",\"connect_urls\":[\"h:1\"]}\r\n",
            b"MSG a 1 r 3\r\nabc\r\nHMSG b 2 22 24\r\nNATS/1.0 503 d\r\nK:v\r\n\r\nxy\r\n",
            b"HMSG b 2 12 12\r\nNATS/1.0\r\n\r\n\r\nMSG partial 1 10\r\nabc",
            b"MSG a 1 3\r\nabcd",
            b"garbage",
            b"garbage\r\n",
            b"-ERR ''a''\r\n-ERR 'b\rc'\r\n",
        ] {
            fuzz_decode(sample);
        }
    }

    #[test]
    fn info_oracle_on_samples() {
        for sample in [
            &b""[..],
            b"{}",
            b" {\"server_id\":\"a\",\"nonce\":null,\"future\":[1,{}]}\x0c",
            b"{\"port\":70000}",
            b"{\"server_id\":\"\\u00e9\\n\"}",
            b"{\"server_id\":\"\\ud800\"}",
            b"{\"headers\":\"yes\\r\\nforged log line\"}",
            b"{\"a\":1}\n{}",
            b"[1,2]",
        ] {
            fuzz_info(sample);
        }
        assert!(matches!(
            ServerInfo::from_json(b"{\"port\":70000}"),
            Err(ProtocolError::InvalidInfo { .. })
        ));
    }

    #[test]
    fn headers_oracle_on_samples() {
        for sample in [
            &b""[..],
            b"NATS/1.0\r\n\r\n",
            b"NATS/1.0 503\r\n\r\n",
            b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1\r\n\r\n",
            b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 0\r\n\r\n",
            b"NATS/1.0\t5031\nK:v\nK:  w \r\nC: \xff\r\nX\r: a\rb",
            b"NATS/1.0 5x3\r\n\r\n",
            b"NATS/1.0\r\n\r\nA: b\r\n",
            b"NATS/1.0\r\nno colon\r\nand a\nsecond line",
        ] {
            fuzz_headers(sample);
        }
    }

    #[test]
    fn encode_server_op_sizes_match_decode() {
        let ops = decode_all(
            b"HMSG s 9 rep 16 19\r\nNATS/1.0 408\r\n\r\nabc\r\nMSG s 1 2\r\nhi\r\n",
            0,
        )
        .unwrap();
        let mut buf = BytesMut::new();
        for op in &ops {
            encode_server_op(op, &mut buf);
        }
        assert_eq!(
            &buf[..],
            b"HMSG s 9 rep 16 19\r\nNATS/1.0 408\r\n\r\nabc\r\nMSG s 1 2\r\nhi\r\n"
        );
    }
}
