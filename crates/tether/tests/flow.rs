//! Slow consumers, drain, and event queueing under storms.

mod common;
use common::disconnected;

use std::time::Duration;

use futures_util::StreamExt;
use tether::{ConnectOptions, EventKind, PublishError, State};
use tether_testkit::{NatsServer, Proxy};

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_storm_gives_one_episode_whose_counts_add_up() {
    let server = NatsServer::start().unwrap();
    let client = ConnectOptions::new()
        .pending_limits(100, 64 * 1024 * 1024)
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    let mut sub = client.subscribe("storm").await.unwrap();
    const N: u64 = 10_100;
    for i in 0..N {
        client.publish("storm", i.to_string()).await.unwrap();
    }
    client.flush().await.unwrap();
    // Nothing was taken yet: exactly 100 queued, the rest dropped.
    let dropped = N - 100;
    assert!(
        tether_testkit::wait_for(T, || sub.dropped() == dropped),
        "dropped {} of {dropped}",
        sub.dropped()
    );
    for _ in 0..100 {
        tokio::time::timeout(T, sub.next()).await.unwrap().unwrap();
    }
    let (mut started, mut ended) = (Vec::new(), Vec::new());
    while started.is_empty() || ended.is_empty() {
        match tokio::time::timeout(T, events.next())
            .await
            .unwrap()
            .unwrap()
            .kind
        {
            EventKind::SlowConsumer { dropped, .. } => started.push(dropped),
            EventKind::SlowConsumerEnded { dropped, .. } => ended.push(dropped),
            _ => {}
        }
    }
    assert_eq!((started.len(), ended.len()), (1, 1), "one episode");
    assert_eq!(
        started[0] + ended[0],
        client.statistics().slow_consumer_dropped
    );
    assert_eq!(client.statistics().slow_consumer_dropped, dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delivers_in_flight_then_ends_streams_and_refuses_publishes() {
    let server = NatsServer::start().unwrap();
    // The draining client reads through a proxy, so deliveries can be held in flight.
    let proxy = Proxy::start(server.addr()).unwrap();
    let client = tether::connect(proxy.url()).await.unwrap();
    let publisher = tether::connect(server.url()).await.unwrap();
    let mut sub = client.subscribe("d").await.unwrap();
    client.flush().await.unwrap();
    let mut out = publisher.subscribe("d.out").await.unwrap();
    publisher.flush().await.unwrap();
    // The server has handled all 1000 (the publisher's flush), but the client has read
    // none of them: they sit in the paused proxy, truly in flight when drain starts.
    proxy.pause();
    for i in 0..1000u32 {
        publisher.publish("d", i.to_be_bytes()).await.unwrap();
    }
    publisher.flush().await.unwrap();
    assert_eq!(sub.pending(), 0, "nothing has reached the client yet");
    let mut watch = client.status_watch();
    let drainer = client.clone();
    let report = tokio::spawn(async move { drainer.drain().await.unwrap() });
    tokio::time::timeout(T, watch.wait_for(|s| *s == State::DrainingSubs))
        .await
        .unwrap()
        .unwrap();
    // DrainingSubs: publish and request are still accepted; these reach the server.
    client.publish("d.out", "during drain").await.unwrap();
    assert_eq!(
        client.status(),
        State::DrainingSubs,
        "held by the paused link"
    );
    proxy.pass();
    let mut n = 0u32;
    while let Some(m) = tokio::time::timeout(T, sub.next()).await.unwrap() {
        assert_eq!(&m.payload[..], n.to_be_bytes());
        n += 1;
    }
    assert_eq!(n, 1000, "the stream yields what was in flight, then ends");
    let report = report.await.unwrap();
    assert_eq!(report.delivered, 1000);
    assert!(!report.timed_out);
    assert_eq!(report.unsent_msgs, 0);
    let m = tokio::time::timeout(T, out.next()).await.unwrap().unwrap();
    assert_eq!(&m.payload[..], b"during drain");
    tokio::time::timeout(T, watch.wait_for(|s| *s == State::Closed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(client.publish("d", "late").await, Err(PublishError::Closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_storm_is_reported_in_full_by_few_events() {
    let (_server, client, mut events) = disconnected(
        ConnectOptions::new()
            .event_queue(2)
            .outbound_buffer(1024 * 1024, 1)
            .assumed_max_payload(1024),
    )
    .await;
    client.publish("x", "1").await.unwrap();
    let mut refused = 0u64;
    for _ in 0..1000 {
        if client.try_publish("x", "2").is_err() {
            refused += 1;
        }
    }
    assert_eq!(refused, 1000);
    client.close().await;
    // Every refusal is counted by the BufferOverflow events up to Closed, and the storm
    // came as a few events (the first at once, the rest summed), not a thousand.
    let (mut reported, mut overflow_events) = (0u64, 0u32);
    loop {
        match tokio::time::timeout(T, events.next())
            .await
            .unwrap()
            .map(|e| e.kind)
        {
            Some(EventKind::BufferOverflow { refused_msgs, .. }) => {
                reported += refused_msgs;
                overflow_events += 1;
            }
            Some(EventKind::Closed { .. }) | None => break,
            Some(_) => {}
        }
    }
    assert_eq!(reported, refused, "never dropped in silence");
    assert!(
        overflow_events <= 3,
        "{overflow_events} events for one storm"
    );
    assert_eq!(client.statistics().refused_msgs, refused);
}
