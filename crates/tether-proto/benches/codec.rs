//! Parser and encoder micro-benchmarks (DESIGN "Performance": criterion for parser and
//! encoder; never a timed test in CI).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tether_proto::encode::encode_pub;
use tether_proto::{Decoder, DecoderLimits, ServerOp};

const FRAMES: usize = 10_000;
const PAYLOAD: &[u8; 16] = b"0123456789abcdef";

fn msg_stream() -> BytesMut {
    let mut buf = BytesMut::new();
    for i in 0..FRAMES {
        buf.extend_from_slice(format!("MSG bench.subject.{} 1 16\r\n", i % 10).as_bytes());
        buf.extend_from_slice(PAYLOAD);
        buf.extend_from_slice(b"\r\n");
    }
    buf
}

fn decode(c: &mut Criterion) {
    let stream = msg_stream();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function("msg_16b_x10k", |b| {
        b.iter_batched(
            || stream.clone(),
            |mut buf| {
                let mut decoder = Decoder::new(DecoderLimits::default());
                let mut n = 0usize;
                while let Ok(Some(op)) = decoder.decode(&mut buf) {
                    if let ServerOp::Msg(m) = op {
                        n += m.payload.len();
                    }
                    black_box(());
                }
                assert_eq!(n, FRAMES * PAYLOAD.len());
                n
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    let mut buf = BytesMut::with_capacity(64 * 1024);
    group.bench_function("pub_16b", |b| {
        b.iter(|| {
            if buf.len() > 60 * 1024 {
                buf.clear();
            }
            encode_pub(
                &mut buf,
                black_box("bench.subject.1"),
                black_box(Some("_INBOX.abcdef.1")),
                black_box(PAYLOAD),
            );
        });
    });
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
