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

/// The publish path of the connection core without I/O: encode into the outbound buffer,
/// hand chunks to a (pretend) writer, account for what was written.
fn publish_path(c: &mut Criterion) {
    use std::time::Instant;
    use tether_proto::conn::{Auth, Config, Connection, Handshake};
    use tether_proto::outbound::FrameKind;
    let now = Instant::now();
    let config = Config::default();
    let deadline = now + std::time::Duration::from_secs(5);
    let mut hs = Handshake::new(now, deadline, Auth::default(), &config);
    let mut buf = bytes::BytesMut::from(
        &b"INFO {\"headers\":true,\"max_payload\":1048576}\r\nPONG\r\nPONG\r\n"[..],
    );
    hs.handle_read(now, &mut buf);
    while let Some(chunk) = hs.poll_transmit(now) {
        hs.handle_written(now, chunk.len());
    }
    let link = hs.poll_outcome().unwrap().unwrap();
    let mut conn = Connection::new(config, now);
    let _leftover = conn.adopt_link(now, link);
    while let Some(chunk) = conn.poll_transmit(now) {
        conn.handle_written(now, chunk.len());
    }
    let payload = [0u8; 16];
    let mut group = c.benchmark_group("publish_path");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000 x 16 B, chunks of 1000", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                conn.publish("bench.subject", None, None, &payload, FrameKind::Pub)
                    .unwrap();
            }
            while let Some(chunk) = conn.poll_transmit(now) {
                conn.handle_written(now, chunk.len());
            }
            while conn.poll_event().is_some() {}
        });
    });
    group.finish();
}

criterion_group!(benches, decode, encode, publish_path);
criterion_main!(benches);
