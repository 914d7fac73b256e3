//! Every committed seed of `fuzz/corpus/<target>/` passes its target's oracle, so the
//! fuzz oracles and seeds are checked by `cargo test` on stable, without cargo-fuzz.

use std::fs;
use std::path::PathBuf;

use tether_proto::fuzzing::{fuzz_decode, fuzz_headers, fuzz_info};

/// Runs `oracle` on each file of `fuzz/corpus/<target>/`; returns how many there were.
fn run_seeds(target: &str, oracle: fn(&[u8])) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // The path in the panic message says which seed broke the oracle.
        eprintln!("{}", path.display());
        oracle(&data);
        count += 1;
    }
    count
}

#[test]
fn decode_seeds() {
    assert!(run_seeds("decode", fuzz_decode) >= 10);
}

#[test]
fn info_seeds() {
    assert!(run_seeds("info", fuzz_info) >= 5);
}

#[test]
fn headers_seeds() {
    assert!(run_seeds("headers", fuzz_headers) >= 5);
}

/// The seeds are what they claim: real server frames decode to the expected ops.
#[test]
fn seeds_decode_as_named() {
    use tether_proto::fuzzing::decode_all;
    use tether_proto::{ServerOp, StatusCode};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decode");
    let read = |name: &str| fs::read(dir.join(name)).unwrap();
    let one = |name: &str| {
        let ops = decode_all(&read(name), 0).unwrap();
        assert_eq!(ops.len(), 1, "{name}: {ops:?}");
        ops.into_iter().next().unwrap()
    };
    for (name, status) in [
        ("hmsg_503", 503),
        ("hmsg_408_request_timeout", 408),
        ("hmsg_408_requests_pending", 408),
        ("hmsg_100_idle_heartbeat", 100),
        ("hmsg_reply_flowcontrol", 100),
    ] {
        let ServerOp::Msg(msg) = one(name) else {
            panic!("{name}: not a message")
        };
        let headers = msg.headers.expect(name);
        assert_eq!(headers.status(), Some(StatusCode(status)), "{name}");
    }
    let ServerOp::Msg(msg) = one("hmsg_multi_value") else {
        panic!("hmsg_multi_value: not a message")
    };
    let headers = msg.headers.unwrap();
    assert_eq!(headers.get_all("A").collect::<Vec<_>>(), ["1", "2"]);
    let ServerOp::Info(info) = one("info_2.15_jetstream") else {
        panic!("info_2.15_jetstream: not INFO")
    };
    assert!(info.jetstream && info.headers);
    assert_eq!(info.version, "2.15.1");
    assert!(
        decode_all(&read("hmsg_bad_headers"), 0).is_ok_and(|ops| matches!(
            ops.as_slice(),
            [ServerOp::Msg(m)] if m.malformed_headers
        ))
    );
}
