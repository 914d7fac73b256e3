//! Publishing on a connected client does not allocate per message (DESIGN semantics 3).
//! dhat is the global allocator of this test binary only, so no crate needs `unsafe`.

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[test]
fn publishing_does_not_allocate_per_message() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let server = tether_testkit::NatsServer::start().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = tether::connect(server.url()).await.unwrap();
        let payload = [7u8; 16];
        // Warm up: buffers grow to their working size.
        for _ in 0..10_000 {
            client.publish("alloc.test", payload).await.unwrap();
        }
        client.flush().await.unwrap();
        const N: u64 = 10_000;
        let before = dhat::HeapStats::get();
        for i in 0..N {
            client.publish("alloc.test", payload).await.unwrap();
            if i % 100 == 0 {
                // Let the driver write chunks inside the measured window too.
                tokio::task::yield_now().await;
            }
        }
        let after = dhat::HeapStats::get();
        client.flush().await.unwrap();
        let blocks = after.total_blocks - before.total_blocks;
        eprintln!("{blocks} allocations while publishing {N} messages");
        assert!(
            blocks < N / 100,
            "{blocks} allocations while publishing {N} messages: the hot path allocates per message"
        );
        client.close().await;
    });
}
