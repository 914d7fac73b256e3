//! S1 of the semantics review: a client flooded with deliveries keeps writing. Its own
//! binary, so the 10 s flood runs alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tether::{ConnectOptions, EventKind, State, SubscribeOptions};
use tether_testkit::{NatsServer, ServerConfig};

/// How long a test waits for any one thing.
const T: Duration = Duration::from_secs(15);
/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(10);
/// Messages published and not yet received, at most: keeps the subscriber's socket full
/// without letting the server's pending data for it grow toward its slow-consumer limit.
const WINDOW: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_client_answers_pings_sends_its_own_and_flushes_within_a_second() {
    // The server pings every second and drops a client that leaves 2 unanswered.
    let server = NatsServer::start_with(ServerConfig {
        extra_config: Some("ping_interval: \"1s\"\nping_max: 2\n".into()),
        ..ServerConfig::default()
    })
    .unwrap();
    let flooded = ConnectOptions::new()
        .name("flooded")
        .connect(server.url())
        .await
        .unwrap();
    let mut events = flooded.events();
    let mut sub = flooded
        .subscribe_with("flood", SubscribeOptions::new().unlimited_pending())
        .await
        .unwrap();
    flooded.flush().await.unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    let consumer = tokio::spawn(async move {
        while sub.next().await.is_some() {
            count.fetch_add(1, Ordering::Relaxed);
        }
        sub.dropped()
    });

    let publisher = tether::connect(server.url()).await.unwrap();
    let (seen, stop) = (received.clone(), Instant::now() + FLOOD);
    let producer = tokio::spawn(async move {
        let payload = [7u8; 128];
        let mut sent = 0u64;
        while Instant::now() < stop {
            if sent - seen.load(Ordering::Relaxed) < WINDOW {
                publisher.publish("flood", payload).await.unwrap();
                sent += 1;
            } else {
                tokio::task::yield_now().await;
            }
        }
        publisher.flush().await.unwrap();
        sent
    });

    // First half: the flooded client sends nothing of its own, so the server PINGs it
    // every second (it skips its PINGs while a client sends) and closes the link as
    // stale unless the PONGs get out through the flood.
    tokio::time::sleep(FLOOD / 2).await;
    assert_eq!(flooded.status(), State::Connected, "PONGs got out");
    // Second half: it flushes (its own PINGs) every 100 ms.
    let mut worst = Duration::ZERO;
    let mut flushes = 0u32;
    while Instant::now() < stop {
        let t = Instant::now();
        tokio::time::timeout(T, flooded.flush())
            .await
            .expect("flush answered")
            .expect("flush ok");
        worst = worst.max(t.elapsed());
        flushes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = producer.await.unwrap();
    tokio::time::timeout(T, async {
        while received.load(Ordering::Relaxed) < sent {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every message arrives");
    let stats = flooded.statistics();
    eprintln!(
        "S1: {sent} msgs of 128 B in {FLOOD:?} ({:.0} msg/s) to the flooded client; \
         {flushes} flushes, worst {worst:?}",
        sent as f64 / FLOOD.as_secs_f64()
    );
    assert!(
        worst < Duration::from_secs(1),
        "every flush within a second, worst {worst:?}"
    );
    assert_eq!(flooded.status(), State::Connected);
    assert_eq!(stats.reconnects, 0);
    assert_eq!(stats.slow_consumer_dropped, 0);
    assert!(sent > WINDOW, "a real flood: {sent}");
    flooded.close().await;
    assert_eq!(consumer.await.unwrap(), 0, "no slow-consumer drops");
    // The server's PINGs were answered: it never closed the link as stale.
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(100), events.next()).await {
        assert!(
            !matches!(e.kind, EventKind::Disconnected { .. }),
            "the link stayed up: {e}"
        );
    }
}
