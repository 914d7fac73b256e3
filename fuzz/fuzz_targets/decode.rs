//! Decodes arbitrary bytes at several chunkings and round-trips every decoded op
//! (`tether_proto::fuzzing::fuzz_decode`). Run with `scripts/fuzz decode` (see
//! `fuzz/README.md`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tether_proto::fuzzing::fuzz_decode(data);
});
