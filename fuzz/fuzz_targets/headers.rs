//! Decodes arbitrary bytes as an `HMSG` header block (status line included), round-trips
//! what decodes and checks the decoder agrees (`tether_proto::fuzzing::fuzz_headers`).
//! Run with `scripts/fuzz headers` (see `fuzz/README.md`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tether_proto::fuzzing::fuzz_headers(data);
});
