//! The decoder gives the same ops for any chunking of its input (STYLE.md part 3 item
//! 10): random op sequences split at random points, and every split offset of a fixed
//! input.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tether_proto::fuzzing::{decode_all, encode_server_op, fuzz_decode};
use tether_proto::{
    Decoder, DecoderLimits, HeaderMap, Msg, ServerInfo, ServerOp, StatusCode, Subject,
};

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_\\-]{1,8}"
}

fn subject() -> impl Strategy<Value = Subject> {
    prop::collection::vec(token(), 1..4).prop_map(|t| Subject::from(t.join(".")))
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    (
        prop::option::of((
            0u16..1000,
            prop::option::of("[A-Za-z][A-Za-z ]{0,10}[A-Za-z]"),
        )),
        prop::collection::vec(("[A-Za-z0-9\\-]{1,10}", "[ -~]{0,12}"), 0..4),
    )
        .prop_map(|(status, entries)| {
            let mut h = HeaderMap::new();
            if let Some((code, description)) = status {
                h.set_status(StatusCode(code), description);
            }
            for (n, v) in entries {
                // Decoding trims values, so generate them trimmed.
                h.append(n, v.trim());
            }
            h
        })
}

fn msg() -> impl Strategy<Value = ServerOp> {
    (
        subject(),
        any::<u64>(),
        prop::option::of(subject()),
        prop::option::of(headers()),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(subject, sid, reply, headers, payload)| {
            let wire_size = headers.as_ref().map_or(0, HeaderMap::encoded_len) + payload.len();
            ServerOp::Msg(Msg {
                subject,
                sid,
                reply,
                headers,
                payload: Bytes::from(payload),
                wire_size,
                malformed_headers: false,
            })
        })
}

fn info() -> impl Strategy<Value = ServerOp> {
    (
        token(),
        any::<u16>(),
        any::<bool>(),
        1usize..100_000_000,
        prop::collection::vec("[a-z0-9.:]{1,20}", 0..3),
        prop::option::of(token()),
    )
        .prop_map(|(server_id, port, ldm, max_payload, connect_urls, nonce)| {
            ServerOp::Info(Box::new(ServerInfo {
                server_id,
                port,
                ldm,
                max_payload,
                connect_urls,
                nonce,
                headers: true,
                proto: 1,
                ..ServerInfo::default()
            }))
        })
}

fn server_op() -> impl Strategy<Value = ServerOp> {
    prop_oneof![
        4 => msg(),
        1 => info(),
        1 => Just(ServerOp::Ping),
        1 => Just(ServerOp::Pong),
        1 => Just(ServerOp::Ok),
        // Decoding trims the text, so generate it without surrounding whitespace.
        1 => "([!-~]([ -~]{0,20}[!-~])?)?".prop_map(ServerOp::Err),
    ]
}

fn encode(ops: &[ServerOp]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for op in ops {
        encode_server_op(op, &mut buf);
    }
    buf.to_vec()
}

/// Feeds `data` split at the given (sorted, deduplicated) offsets.
fn decode_split(data: &[u8], splits: &[usize]) -> Vec<ServerOp> {
    let mut decoder = Decoder::new(DecoderLimits::default());
    let mut buf = BytesMut::new();
    let mut ops = Vec::new();
    let mut start = 0;
    for &end in splits.iter().chain(std::iter::once(&data.len())) {
        buf.extend_from_slice(&data[start..end]);
        start = end;
        while let Some(op) = decoder.decode(&mut buf).expect("valid input") {
            ops.push(op);
        }
    }
    assert!(buf.is_empty(), "left over: {buf:?}");
    ops
}

proptest! {
    #[test]
    fn random_ops_random_splits(
        ops in prop::collection::vec(server_op(), 0..12),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let data = encode(&ops);
        let mut splits: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
        splits.sort_unstable();
        splits.dedup();
        prop_assert_eq!(decode_split(&data, &splits), ops);
    }

    #[test]
    fn oracle_holds_for_valid_streams(ops in prop::collection::vec(server_op(), 0..6)) {
        fuzz_decode(&encode(&ops));
    }

    #[test]
    fn oracle_holds_for_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..200)) {
        fuzz_decode(&data);
    }

    #[test]
    fn oracle_holds_for_mutated_streams(
        ops in prop::collection::vec(server_op(), 1..4),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut data = encode(&ops);
        for (at, byte) in flips {
            let i = at.index(data.len());
            data[i] = byte;
        }
        fuzz_decode(&data);
    }
}

#[test]
fn every_split_offset_of_a_fixed_input() {
    let data: &[u8] = b"INFO {\"server_id\":\"S\",\"headers\":true,\"max_payload\":1048576}\r\n\
        PING\r\n\
        MSG foo.bar 1 5\r\nhello\r\n\
        HMSG _INBOX.x.y 2 35 35\r\nNATS/1.0 503\r\nNats-Subject: foo\r\n\r\n\r\n\
        msg\tfoo  3 _INBOX.r 4\r\n\r\n\r\n\r\n\
        HMSG s 4 r 18 23\r\nNATS/1.0\r\nA: 1\r\n\r\nhello\r\n\
        +OK\r\n\
        -ERR 'Permissions Violation for Publish to \"x\"'\r\n\
        PONG\r\n";
    let expected = decode_all(data, 0).unwrap();
    assert_eq!(expected.len(), 9);
    for a in 0..=data.len() {
        assert_eq!(decode_split(data, &[a]), expected, "split at {a}");
    }
    for a in (0..=data.len()).step_by(7) {
        for b in a..=data.len() {
            assert_eq!(decode_split(data, &[a, b]), expected, "split at {a},{b}");
        }
    }
    for chunk in 1..=data.len() {
        assert_eq!(decode_all(data, chunk).unwrap(), expected, "chunk {chunk}");
    }
}
