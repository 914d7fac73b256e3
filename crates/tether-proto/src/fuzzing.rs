//! Entry points for fuzz targets and property tests. **Not a stable API**: hidden from
//! the docs and free to change in any release.
//!
//! [`fuzz_decode`] is the oracle of `fuzz/fuzz_targets/decode.rs`: any input must give
//! the same result at every chunking, and every decoded op must survive a round trip
//! through [`encode_server_op`] (STYLE.md part 3 item 10).

use bytes::{BufMut, BytesMut};

use crate::decode::{Decoder, DecoderLimits};
use crate::encode::put_decimal;
use crate::error::ProtocolError;
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
