//! Parses arbitrary bytes as the JSON of an `INFO` line, round-trips what parses and
//! checks the decoder agrees (`tether_proto::fuzzing::fuzz_info`). Run with
//! `scripts/fuzz info` (see `fuzz/README.md`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tether_proto::fuzzing::fuzz_info(data);
});
