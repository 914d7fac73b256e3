//! Reconnection against real processes and the fault proxy.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tether::{ConnectOptions, Event, FlushError, PublishError, State};
use tether_testkit::{NatsServer, Proxy};

const T: Duration = Duration::from_secs(10);

async fn next_event(events: &mut tether::Events, mut pred: impl FnMut(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let e = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("timed out waiting for an event")
            .expect("event stream ended");
        if pred(&e) {
            return e;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_restart_resubscribes_and_delivers_buffered_batch_in_order() {
    let mut server = NatsServer::start().unwrap();
    let client = ConnectOptions::new().connect(server.url()).await.unwrap();
    let mut events = client.events();
    let mut sub = client.subscribe("batch").await.unwrap();
    client.flush().await.unwrap();

    server.kill();
    next_event(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
    for i in 0..500u32 {
        client.publish("batch", i.to_be_bytes()).await.unwrap();
    }
    server.restart().unwrap();
    match next_event(&mut events, |e| matches!(e, Event::Reconnected { .. })).await {
        Event::Reconnected { attempts, .. } => assert!(attempts >= 1),
        _ => unreachable!(),
    }
    for i in 0..500u32 {
        let m = tokio::time::timeout(T, sub.next()).await.unwrap().unwrap();
        assert_eq!(&m.payload[..], i.to_be_bytes(), "in order, none lost");
    }
    assert_eq!(client.status(), State::Connected);
    assert_eq!(client.statistics().reconnects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_is_detected_by_pong_timeout_and_unconfirmed_is_exact() {
    let server = NatsServer::start().unwrap();
    let proxy = Proxy::start(server.addr()).unwrap();
    let client = ConnectOptions::new()
        .ping_interval(Duration::from_millis(500))
        .pong_timeout(Duration::from_millis(500))
        .connect(proxy.url())
        .await
        .unwrap();
    let mut events = client.events();
    client.flush().await.unwrap();
    let before = client.statistics().out_msgs;
    proxy.black_hole();
    let start = Instant::now();
    const N: u64 = 200;
    for i in 0..N {
        client.publish("bh", i.to_string()).await.unwrap();
    }
    let Event::Disconnected {
        unconfirmed_msgs: unconfirmed,
        reason,
        ..
    } = next_event(&mut events, |e| matches!(e, Event::Disconnected { .. })).await
    else {
        unreachable!()
    };
    let detected = start.elapsed();
    assert!(reason.contains("stale"), "{reason}");
    assert!(
        detected < Duration::from_millis(2500),
        "detected in {detected:?}"
    );
    let stats = client.statistics();
    assert_eq!(
        unconfirmed + stats.buffered_msgs,
        N,
        "unconfirmed plus buffered is everything"
    );
    assert_eq!(
        unconfirmed,
        stats.out_msgs - before,
        "unconfirmed equals what was written since the flush"
    );
    proxy.pass();
    next_event(&mut events, |e| matches!(e, Event::Reconnected { .. })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_unconfirmed_delivers_everything_after_black_hole() {
    let server = NatsServer::start().unwrap();
    let proxy = Proxy::start(server.addr()).unwrap();
    let watcher = tether::connect(server.url()).await.unwrap();
    let mut sub = watcher.subscribe("rs").await.unwrap();
    watcher.flush().await.unwrap();
    let client = ConnectOptions::new()
        .ping_interval(Duration::from_millis(500))
        .pong_timeout(Duration::from_millis(500))
        .resend_unconfirmed(true)
        .connect(proxy.url())
        .await
        .unwrap();
    let mut events = client.events();
    client.flush().await.unwrap();
    proxy.black_hole();
    const N: u32 = 100;
    for i in 0..N {
        client.publish("rs", i.to_be_bytes()).await.unwrap();
    }
    next_event(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
    proxy.pass();
    next_event(&mut events, |e| matches!(e, Event::Reconnected { .. })).await;
    client.flush().await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < N as usize {
        let m = tokio::time::timeout(T, sub.next())
            .await
            .expect("all arrive")
            .unwrap();
        seen.insert(u32::from_be_bytes(m.payload[..4].try_into().unwrap()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_bounds_while_disconnected() {
    let mut server = NatsServer::start().unwrap();
    // Frames of "PUB b 4\r\nxxxx\r\n" are 15 bytes; bound at 10 messages.
    let client = ConnectOptions::new()
        .outbound_buffer(2 * 1024 * 1024, 10)
        .assumed_max_payload(1024)
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    server.kill();
    next_event(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
    for _ in 0..10 {
        client.publish("b", "xxxx").await.unwrap();
    }
    let err = client.publish("b", "xxxx").await.unwrap_err();
    assert!(
        matches!(
            err,
            PublishError::BufferFull {
                msgs: 10,
                connected: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(client.try_publish("b", "xxxx").is_err());
    next_event(&mut events, |e| matches!(e, Event::BufferOverflow { .. })).await;
    assert!(client.statistics().refused_msgs >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffering_off_fails_at_once_while_disconnected() {
    let mut server = NatsServer::start().unwrap();
    let client = ConnectOptions::new()
        .buffer_while_disconnected(false)
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    server.kill();
    next_event(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
    assert_eq!(
        client.publish("x", "y").await,
        Err(PublishError::Disconnected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_policy_waits_up_to_deadline() {
    let mut server = NatsServer::start().unwrap();
    let client = ConnectOptions::new()
        .outbound_buffer(2 * 1024 * 1024, 2)
        .assumed_max_payload(1024)
        .overflow(tether::OverflowPolicy::Block)
        .block_deadline(Duration::from_millis(300))
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    server.kill();
    next_event(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
    client.publish("x", "1").await.unwrap();
    client.publish("x", "2").await.unwrap();
    let start = Instant::now();
    let err = client.publish("x", "3").await.unwrap_err();
    assert!(matches!(
        err,
        PublishError::BufferFull {
            connected: false,
            ..
        }
    ));
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "waited {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_fails_when_link_drops_first() {
    let server = NatsServer::start().unwrap();
    let proxy = Proxy::start(server.addr()).unwrap();
    let client = ConnectOptions::new()
        .ping_interval(Duration::from_millis(300))
        .pong_timeout(Duration::from_millis(300))
        .connect(proxy.url())
        .await
        .unwrap();
    client.flush().await.unwrap();
    proxy.black_hole();
    client.publish("f", "x").await.unwrap();
    let err = client.flush().await.unwrap_err();
    assert!(matches!(err, FlushError::ConnectionLost { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_reconnects_exhausted_closes_with_reason() {
    let mut server = NatsServer::start().unwrap();
    let client = ConnectOptions::new()
        .max_reconnects(Some(3))
        .reconnect_delay(|_, _, _| Duration::from_millis(10))
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    server.kill();
    client.publish("x", "unsent").await.unwrap();
    match next_event(&mut events, |e| matches!(e, Event::Closed { .. })).await {
        Event::Closed {
            reason,
            unsent_msgs,
            ..
        } => {
            assert!(reason.contains("no server left"), "{reason}");
            assert_eq!(unsent_msgs, 1);
        }
        _ => unreachable!(),
    }
    assert_eq!(client.status(), State::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_policy_returns_at_once_and_buffers() {
    let port = tether_testkit::free_port();
    let client = ConnectOptions::new()
        .connect_policy(tether::ConnectPolicy::Retry)
        .reconnect_delay(|_, _, _| Duration::from_millis(20))
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    let mut events = client.events();
    assert_eq!(client.status(), State::Connecting);
    client.publish("early", "x").await.unwrap();
    let server =
        NatsServer::start_with(tether_testkit::ServerConfig::default().with_port(port)).unwrap();
    next_event(&mut events, |e| matches!(e, Event::Connected { .. })).await;
    client.flush().await.unwrap();
    assert_eq!(client.statistics().out_msgs, 1);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_policy_connects_on_first_use() {
    let server = NatsServer::start().unwrap();
    let client = ConnectOptions::new()
        .connect_policy(tether::ConnectPolicy::Lazy)
        .connect(server.url())
        .await
        .unwrap();
    assert_eq!(client.status(), State::Idle);
    client.publish("lazy", "x").await.unwrap();
    client.flush().await.unwrap();
    assert_eq!(client.status(), State::Connected);
    assert_eq!(client.statistics().out_msgs, 1);
}
