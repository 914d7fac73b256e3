//! Reconnection against real processes and the fault proxy.

mod common;
use common::{disconnected, echo_responder, next_event, proxied, proxied_with, through_proxy, T};

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tether::{
    AttemptCause, AuthErrorClass, ClosedReason, ConnectOptions, DisconnectReason, EventKind,
    FlushError, PublishError, RemovedReason, ServerErr, State,
};
use tether_testkit::{NatsServer, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_restart_resubscribes_and_delivers_buffered_batch_in_order() {
    let mut server = NatsServer::start().unwrap();
    let client = ConnectOptions::new().connect(server.url()).await.unwrap();
    let mut events = client.events();
    let mut sub = client.subscribe("batch").await.unwrap();
    client.flush().await.unwrap();

    server.kill();
    let EventKind::Disconnected { reason, .. } =
        next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await
    else {
        unreachable!()
    };
    // A killed server's socket is closed (or reset) by its kernel: not stale.
    assert!(
        matches!(reason, DisconnectReason::Eof | DisconnectReason::Io(_)),
        "{reason:?}"
    );
    assert!(!reason.is_stale(), "{reason:?}");
    for i in 0..500u32 {
        client.publish("batch", i.to_be_bytes()).await.unwrap();
    }
    server.restart().unwrap();
    match next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await {
        EventKind::Reconnected { attempts, .. } => assert!(attempts >= 1),
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
    let (_server, proxy, client, mut events) = proxied(Duration::from_millis(500)).await;
    let before = client.statistics().out_msgs;
    proxy.black_hole();
    let start = Instant::now();
    const N: u64 = 200;
    for i in 0..N {
        client.publish("bh", i.to_string()).await.unwrap();
    }
    let EventKind::Disconnected {
        unconfirmed_msgs: unconfirmed,
        reason,
        ..
    } = next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await
    else {
        unreachable!()
    };
    let detected = start.elapsed();
    assert!(reason.is_stale(), "{reason:?}");
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
    next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_unconfirmed_delivers_everything_after_black_hole() {
    let (server, proxy, client, mut events) = proxied_with(
        ConnectOptions::new().resend_unconfirmed(true),
        Duration::from_millis(500),
    )
    .await;
    let watcher = tether::connect(server.url()).await.unwrap();
    let mut sub = watcher.subscribe("rs").await.unwrap();
    watcher.flush().await.unwrap();
    proxy.black_hole();
    const N: u32 = 100;
    for i in 0..N {
        client.publish("rs", i.to_be_bytes()).await.unwrap();
    }
    next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await;
    proxy.pass();
    next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await;
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
    // Frames of "PUB b 4\r\nxxxx\r\n" are 15 bytes; bound at 10 messages.
    let (_server, client, mut events) = disconnected(
        ConnectOptions::new()
            .outbound_buffer(2 * 1024 * 1024, 10)
            .assumed_max_payload(1024),
    )
    .await;
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
    next_event(&mut events, |e| {
        matches!(e, EventKind::BufferOverflow { .. })
    })
    .await;
    assert!(client.statistics().refused_msgs >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffering_off_fails_at_once_while_disconnected() {
    let (_server, client, _events) =
        disconnected(ConnectOptions::new().buffer_while_disconnected(false)).await;
    assert_eq!(
        client.publish("x", "y").await,
        Err(PublishError::Disconnected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_policy_waits_up_to_deadline() {
    let (_server, client, _events) = disconnected(
        ConnectOptions::new()
            .outbound_buffer(2 * 1024 * 1024, 2)
            .assumed_max_payload(1024)
            .overflow(tether::OverflowPolicy::Block)
            .block_deadline(Duration::from_millis(300)),
    )
    .await;
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
    let (_server, proxy, client, _events) = proxied(Duration::from_millis(300)).await;
    proxy.black_hole();
    client.publish("f", "x").await.unwrap();
    let err = client.flush().await.unwrap_err();
    assert!(matches!(err, FlushError::ConnectionLost { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_reconnects_exhausted_closes_with_reason() {
    let (_server, client, mut events) = disconnected(
        ConnectOptions::new()
            .max_reconnects(Some(3))
            .reconnect_delay(|_, _, _| Duration::from_millis(150)),
    )
    .await;
    client.publish("x", "unsent").await.unwrap();
    match next_event(&mut events, |e| matches!(e, EventKind::Closed { .. })).await {
        EventKind::Closed {
            reason,
            unsent_msgs,
            ..
        } => {
            // The last of the max_reconnects attempts found nothing listening.
            let ClosedReason::PoolExhausted {
                last_attempt: Some(last),
            } = &reason
            else {
                panic!("expected PoolExhausted, got {reason:?}");
            };
            assert!(
                matches!(&last.error, AttemptCause::Dial(d) if d.is_refused()),
                "{last:?}"
            );
            assert!(!last.error.is_auth());
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
    // The first attempt may already have failed (the port is closed): Reconnecting.
    assert!(
        matches!(client.status(), State::Connecting | State::Reconnecting),
        "{:?}",
        client.status()
    );
    client.publish("early", "x").await.unwrap();
    let server =
        NatsServer::start_with(tether_testkit::ServerConfig::default().with_port(port)).unwrap();
    next_event(&mut events, |e| matches!(e, EventKind::Connected { .. })).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_on_idle_connection_is_detected() {
    let (_server, proxy, _client, mut events) = proxied(Duration::from_millis(500)).await;
    proxy.black_hole();
    let start = Instant::now();
    let EventKind::Disconnected { reason, .. } =
        next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await
    else {
        unreachable!()
    };
    // No PONG within pong_timeout (or too many PINGs unanswered): tether's own check.
    assert!(reason.is_stale(), "{reason:?}");
    assert!(
        matches!(
            reason,
            DisconnectReason::PongTimeout { .. } | DisconnectReason::TooManyPingsOutstanding { .. }
        ),
        "{reason:?}"
    );
    // ping_interval + pong_timeout, plus slack.
    assert!(
        start.elapsed() < Duration::from_millis(1800),
        "{:?}",
        start.elapsed()
    );
    proxy.pass();
    next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_stall_is_detected_on_a_paused_link() {
    let (_server, proxy, client) = through_proxy(
        ConnectOptions::new()
            .ping_interval(Duration::from_secs(60))
            .pong_timeout(Duration::from_secs(60))
            .write_stall_timeout(Duration::from_secs(1))
            .outbound_buffer(64 * 1024 * 1024, 1_000_000),
    )
    .await;
    let mut events = client.events();
    client.flush().await.unwrap();
    proxy.pause();
    // At least 6 MiB: kernel socket buffers are large.
    let payload = vec![b'x'; 64 * 1024];
    for _ in 0..(8 * 1024 / 64) {
        client.try_publish("stall", &payload).unwrap();
    }
    let EventKind::Disconnected { reason, .. } =
        next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(
        reason,
        DisconnectReason::WriteStall {
            timeout: Duration::from_secs(1)
        }
    );
    assert!(reason.is_stale());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffer_on_a_paused_live_link_waits_then_fails() {
    let (_server, proxy, client) = through_proxy(
        ConnectOptions::new()
            .outbound_buffer(1024 * 1024, 1_000_000)
            .assumed_max_payload(64 * 1024)
            .block_deadline(Duration::from_millis(300)),
    )
    .await;
    client.flush().await.unwrap();
    proxy.pause();
    let payload = vec![b'x'; 32 * 1024];
    let block_deadline = Duration::from_millis(300);
    let start = Instant::now();
    let (err, waited) = loop {
        let call = Instant::now();
        match client.publish("full", &payload).await {
            Ok(()) => assert!(start.elapsed() < Duration::from_secs(20), "never filled"),
            Err(e) => break (e, call.elapsed()),
        }
    };
    // The refused publish waited for room about block_deadline, not less, not much more.
    assert!(
        waited >= block_deadline && waited < block_deadline + Duration::from_millis(700),
        "the refused publish returned after {waited:?}"
    );
    assert!(
        matches!(
            err,
            PublishError::BufferFull {
                connected: true,
                ..
            }
        ),
        "{err:?}"
    );
    // try_publish never waits.
    let t = Instant::now();
    assert!(client.try_publish("full", &payload).is_err());
    assert!(t.elapsed() < Duration::from_millis(50));
    proxy.pass();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_request_is_sent_after_reconnect_and_written_one_fails_at_once() {
    let mut server = NatsServer::start().unwrap();
    // Through a proxy, so the reconnect can be held back until the responder is ready.
    let proxy = Proxy::start(server.addr()).unwrap();
    let client = ConnectOptions::new()
        .reconnect_delay(|_, _, _| Duration::from_millis(20))
        .connect(proxy.url())
        .await
        .unwrap();
    let responder = tether::connect(server.url()).await.unwrap();
    let mut events = client.events();
    // A written request whose link dies fails at once with maybe_processed.
    let mut slow = responder.subscribe("slow").await.unwrap();
    responder.flush().await.unwrap();
    let c = client.clone();
    let pending = tokio::spawn(async move {
        c.request_with("slow", None, b"x", Duration::from_secs(30))
            .await
    });
    // Wait until the request is written (the responder's subscription receives it).
    tokio::time::timeout(T, slow.next()).await.unwrap().unwrap();
    server.kill();
    let start = Instant::now();
    let err = pending.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            tether::RequestError::ConnectionLost {
                maybe_processed: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await;
    // A request made while disconnected is buffered ...
    let c = client.clone();
    let buffered = tokio::spawn(async move {
        c.request_with("echo", None, b"hi", Duration::from_secs(20))
            .await
    });
    assert!(
        tether_testkit::wait_for(T, || client.statistics().buffered_msgs == 1),
        "the request frame is buffered while disconnected"
    );
    // ... and goes out after the reconnect, which waits (paused proxy) until the server
    // is back with an echo responder subscribed: the only right answer is the echo.
    proxy.pause();
    server.restart().unwrap();
    let echo = tether::connect(server.url()).await.unwrap();
    echo_responder(&echo, "echo").await;
    proxy.pass();
    next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await;
    let reply = buffered
        .await
        .unwrap()
        .expect("the buffered request is answered after the reconnect");
    assert_eq!(&reply.payload[..], b"hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_while_reconnecting_closes_at_deadline_and_reports_unsent() {
    let (_server, client, _events) =
        disconnected(ConnectOptions::new().drain_timeout(Duration::from_millis(500))).await;
    client.publish("x", "never").await.unwrap();
    let start = Instant::now();
    let report = client.drain().await.unwrap();
    assert!(report.timed_out);
    assert_eq!(report.unsent_msgs, 1);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(client.status(), State::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowered_max_payload_removes_buffered_frames_before_replay() {
    let mut server = NatsServer::start_with(tether_testkit::ServerConfig {
        max_payload: Some(64 * 1024),
        ..Default::default()
    })
    .unwrap();
    let client = ConnectOptions::new()
        .resend_unconfirmed(true)
        .reconnect_delay(|_, _, _| Duration::from_millis(20))
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    let mut watcher_events = client.events();
    // Buffer a 32 KiB frame while down, and come back with a 16 KiB limit: the frame is
    // removed before anything is replayed (FramesRemoved), never sent.
    server.kill();
    next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await;
    client.publish("p", vec![0u8; 32 * 1024]).await.unwrap();
    server.config_mut().max_payload = Some(16 * 1024);
    server.restart().unwrap();
    let EventKind::FramesRemoved { msgs, .. } = next_event(&mut events, |e| {
        matches!(e, EventKind::FramesRemoved { .. })
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(msgs, 1);
    next_event(&mut watcher_events, |e| {
        matches!(e, EventKind::Reconnected { .. })
    })
    .await;
    client.flush().await.unwrap();
    assert_eq!(client.status(), State::Connected, "no reconnect loop");
    assert_eq!(client.statistics().reconnects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_frame_closing_err_is_reported_and_never_resent() {
    // The server's control-line limit is below tether's: a long subject makes the server
    // close the link with `-ERR 'maximum control line exceeded'` over our own bytes.
    let server = NatsServer::start_with(tether_testkit::ServerConfig {
        extra_config: Some("max_control_line: 256\n".into()),
        ..Default::default()
    })
    .unwrap();
    let client = ConnectOptions::new()
        .resend_unconfirmed(true)
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    client.flush().await.unwrap();
    let long = format!("poison.{}", "x".repeat(300));
    client.publish(&long, "boom").await.unwrap();
    let EventKind::FramesRemoved { msgs, reason, .. } = next_event(&mut events, |e| {
        matches!(e, EventKind::FramesRemoved { .. })
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(msgs, 1, "{reason}");
    assert_eq!(reason, RemovedReason::PoisonFrame);
    let EventKind::Disconnected {
        reason,
        unconfirmed_msgs,
        ..
    } = next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(
        reason,
        DisconnectReason::ServerError(ServerErr::MaxControlLine),
        "{reason}"
    );
    assert_eq!(
        unconfirmed_msgs, 0,
        "reported as removed, not as unconfirmed"
    );
    next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await;
    client.flush().await.unwrap();
    client.flush().await.unwrap();
    assert_eq!(
        client.statistics().reconnects,
        1,
        "no reconnect loop: the frame is not resent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_strikes_remove_the_server_or_keep_retrying() {
    for policy in [
        tether::AuthFailurePolicy::RemoveServer,
        tether::AuthFailurePolicy::KeepRetrying,
    ] {
        let mut server = NatsServer::start_with(tether_testkit::ServerConfig {
            token: Some("one".into()),
            ..Default::default()
        })
        .unwrap();
        let wait = Duration::from_millis(300);
        let client = ConnectOptions::new()
            .token("one")
            .auth_failure_policy(policy)
            .reconnect_wait(wait)
            .connect(server.url())
            .await
            .unwrap();
        let mut events = client.events();
        server.config_mut().token = Some("two".into());
        server.kill();
        server.restart().unwrap();
        let mut failures = 0;
        let mut strikes_at = Vec::new();
        loop {
            match next_event(&mut events, |e| {
                matches!(
                    e,
                    EventKind::ReconnectFailed { .. } | EventKind::Closed { .. }
                )
            })
            .await
            {
                EventKind::ReconnectFailed { error, .. } => {
                    if error.server_err() == Some(&ServerErr::AuthViolation) {
                        assert!(error.is_auth(), "{error:?}");
                        assert_eq!(error.auth_class(), Some(AuthErrorClass::Strike));
                        failures += 1;
                        strikes_at.push(Instant::now());
                    }
                    if policy == tether::AuthFailurePolicy::KeepRetrying && failures >= 4 {
                        assert_eq!(client.status(), State::Reconnecting);
                        break;
                    }
                }
                EventKind::Closed { reason, .. } => {
                    assert_eq!(policy, tether::AuthFailurePolicy::RemoveServer);
                    assert_eq!(failures, 2, "removed at the second strike in a row");
                    // The pool ran out at the second strike: the last attempt says so.
                    match &reason {
                        ClosedReason::PoolExhausted {
                            last_attempt: Some(last),
                        } => assert!(last.error.is_auth(), "{reason:?}"),
                        other => panic!("expected PoolExhausted after a refusal, got {other:?}"),
                    }
                    break;
                }
                _ => unreachable!(),
            }
        }
        // Strikes are spaced by at least reconnect_wait (a little less for timer slack).
        for w in strikes_at.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap + Duration::from_millis(20) >= wait,
                "{policy:?}: {gap:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_high_water_events_as_the_buffer_fills() {
    let (_server, client, mut events) = disconnected(
        ConnectOptions::new()
            .outbound_buffer(2 * 1024 * 1024, 100)
            .assumed_max_payload(1024),
    )
    .await;
    for _ in 0..95 {
        client.publish("hw", "x").await.unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        if let EventKind::BufferHighWater { percent, msgs, .. } = next_event(&mut events, |e| {
            matches!(e, EventKind::BufferHighWater { .. })
        })
        .await
        {
            assert!(msgs >= u64::from(percent), "{percent}% at {msgs} of 100");
            seen.push(percent);
        }
    }
    assert_eq!(seen, vec![50, 75, 90]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_server_pool_moves_off_a_removed_server() {
    let a = NatsServer::start().unwrap();
    let b = NatsServer::start().unwrap();
    let client = ConnectOptions::new().connect(a.url()).await.unwrap();
    let mut events = client.events();
    client.set_server_pool(b.url()).unwrap();
    let EventKind::Migrated { to, .. } =
        next_event(&mut events, |e| matches!(e, EventKind::Migrated { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(to, b.url());
    assert_eq!(client.servers(), vec![b.url()]);
    assert_eq!(client.status(), State::Connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_retry_after_reconnect_resends_a_written_request() {
    let (server, proxy, client, mut events) = proxied_with(
        ConnectOptions::new().request_retry_after_reconnect(true),
        Duration::from_millis(300),
    )
    .await;
    let responder = tether::connect(server.url()).await.unwrap();
    echo_responder(&responder, "svc").await;
    proxy.black_hole();
    let c = client.clone();
    let req = tokio::spawn(async move {
        c.request_with("svc", None, b"again", Duration::from_secs(20))
            .await
    });
    next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await;
    proxy.pass();
    next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await;
    let reply = req
        .await
        .unwrap()
        .expect("the request was resent after the reconnect");
    assert_eq!(&reply.payload[..], b"again");
}
