//! Regression tests for the defects of the semantics review (shared/reviews/
//! semantics-11c34f0.md): each test names the item it guards and fails on the code the
//! review read.

mod common;
use common::{disconnected, next_event, through_proxy, T};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use tether::{
    AttemptCause, ConnectError, ConnectOptions, ConnectPolicy, EventKind, FlushError,
    HandshakeError, OverflowPolicy, PublishError, RequestError, State,
};
use tether_testkit::{closed_port, NatsServer, Proxy, ServerConfig};

/// A responder on `subject` that echoes every request; returns how many it answered.
async fn echo(client: &tether::Client, subject: &str) -> Arc<AtomicUsize> {
    let mut sub = client.subscribe(subject).await.unwrap();
    client.flush().await.unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let (c, n) = (client.clone(), seen.clone());
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            n.fetch_add(1, Ordering::SeqCst);
            if let Some(r) = m.reply {
                let _ = c.publish(r.as_str(), &m.payload).await;
            }
        }
    });
    seen
}

/// Publish into a paused link until the socket takes nothing more and the outbound
/// buffer is full: from then on a publish must wait for room. The client's buffer must be
/// bounded by its message count (say 3 messages, 4 MiB), so that even a small frame finds
/// no room.
async fn fill_paused(client: &tether::Client) {
    let big = vec![0u8; 512 * 1024];
    let deadline = Instant::now() + T;
    let (mut last, mut still) = (u64::MAX, 0);
    while Instant::now() < deadline {
        while client.try_publish("fill", &big).is_ok() {}
        let written = client.statistics().out_msgs;
        if written == last {
            still += 1;
            if still >= 5 {
                return;
            }
        } else {
            (last, still) = (written, 0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the paused link never filled up");
}

// ===== B1: tls:// =====

#[tokio::test]
async fn b1_a_tls_url_is_never_dialled_in_plaintext() {
    // A plaintext server: its INFO offers no TLS, so the tls:// attempt fails saying so,
    // before CONNECT (and its credentials) could go out in clear.
    let server = NatsServer::start().unwrap();
    let url = format!("tls://alice:secret@127.0.0.1:{}", server.port());
    let err = tether::connect(url.as_str()).await.unwrap_err();
    let ConnectError::AllFailed { attempts } = &err else {
        panic!("expected AllFailed, got {err:?}");
    };
    assert!(
        matches!(
            attempts[0].error,
            AttemptCause::Handshake(HandshakeError::TlsUnavailable)
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("does not offer TLS"), "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
    // A tls:// URL is a valid pool entry.
    let client = tether::connect(server.url()).await.unwrap();
    client.set_server_pool("tls://127.0.0.1:4443").unwrap();
}

#[tokio::test]
async fn b1_a_server_that_requires_tls_gets_a_tls_hello_not_credentials() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(
            b"INFO {\"server_id\":\"x\",\"version\":\"2.15.1\",\"proto\":1,\"max_payload\":1048576,\"tls_required\":true}\r\n",
        )
        .await
        .unwrap();
        // Read what the client sends first, then close: the TLS handshake fails.
        let mut got = vec![0u8; 4096];
        let n = tokio::time::timeout(T, s.read(&mut got))
            .await
            .expect("the client sends its TLS hello or closes")
            .unwrap_or(0);
        got.truncate(n);
        got
    });
    let err = ConnectOptions::new()
        .user_and_password("alice", "secret")
        .connect(format!("nats://{addr}"))
        .await
        .unwrap_err();
    let ConnectError::AllFailed { attempts } = &err else {
        panic!("expected AllFailed, got {err:?}");
    };
    assert!(matches!(attempts[0].error, AttemptCause::Tls(_)), "{err:?}");
    let got = peer.await.unwrap();
    // 0x16: a TLS handshake record (the ClientHello), trusting the system's roots; a
    // machine with no root certificates sends nothing at all. Never CONNECT in plaintext.
    if matches!(
        attempts[0].error,
        AttemptCause::Tls(tether::TlsError::NoRoots { .. })
    ) {
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    } else {
        assert_eq!(
            got.first(),
            Some(&0x16),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.contains("CONNECT") && !text.contains("secret"),
        "{text}"
    );
}

// ===== B2: huge durations, a failing driver =====

#[tokio::test]
async fn b2_huge_durations_are_refused_when_built_or_saturate_when_passed_per_call() {
    for (name, opts) in [
        (
            "ping_interval",
            ConnectOptions::new().ping_interval(Duration::MAX),
        ),
        (
            "flush_timeout",
            ConnectOptions::new().flush_timeout(Duration::MAX),
        ),
        (
            "reconnect_wait",
            ConnectOptions::new().reconnect_wait(Duration::from_secs(7200)),
        ),
        (
            "ldm_overlap",
            ConnectOptions::new().ldm_overlap(Duration::MAX),
        ),
        (
            "write_stall_timeout",
            ConnectOptions::new().write_stall_timeout(Duration::ZERO),
        ),
    ] {
        let e = opts.validate().unwrap_err().to_string();
        assert!(e.contains(name), "{name}: {e}");
    }
    // Per call, any timeout works: Duration::MAX means "no timeout".
    let server = NatsServer::start().unwrap();
    let client = tether::connect(server.url()).await.unwrap();
    echo(&client, "b2.echo").await;
    let reply = client
        .request_with("b2.echo", None, b"x", Duration::MAX)
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], b"x");
    // A user's reconnect_delay may return anything, too.
    let mut server = server;
    let client = ConnectOptions::new()
        .reconnect_delay(|_, _, _| Duration::MAX)
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    server.kill();
    next_event(&mut events, |e| {
        matches!(e, EventKind::ReconnectFailed { .. })
    })
    .await;
    next_event(&mut events, |e| matches!(e, EventKind::Reconnecting { .. })).await;
    assert_eq!(client.status(), State::Reconnecting, "the driver lives on");
    let report = tokio::time::timeout(T, client.close()).await.unwrap();
    assert_eq!(report.unsent_msgs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_a_driver_that_panics_closes_the_client_and_fails_every_waiter_at_once() {
    let mut server = NatsServer::start().unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let trigger = armed.clone();
    let client = ConnectOptions::new()
        .overflow(OverflowPolicy::Block)
        .outbound_buffer(2 * 1024 * 1024, 3)
        .block_deadline(Duration::from_secs(60))
        .drain_timeout(Duration::from_secs(60))
        .flush_timeout(Duration::from_secs(60))
        .reconnect_delay(move |_, _, _| {
            assert!(!trigger.load(Ordering::SeqCst), "reconnect_delay: boom");
            Duration::from_millis(300)
        })
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    server.kill();
    next_event(&mut events, |e| {
        matches!(e, EventKind::ReconnectFailed { .. })
    })
    .await;
    // Waiters of every kind, all waiting for the link.
    for i in 0..3u8 {
        client.publish("b2.fill", [i]).await.unwrap();
    }
    let c = client.clone();
    let publish = tokio::spawn(async move { c.publish("b2.blocked", "x").await });
    let c = client.clone();
    let flush = tokio::spawn(async move { c.flush().await });
    let c = client.clone();
    let request = tokio::spawn(async move {
        c.request_with("b2.req", None, b"x", Duration::from_secs(60))
            .await
    });
    let c = client.clone();
    let drain = tokio::spawn(async move { c.drain().await });
    tokio::time::timeout(T, async {
        while client.status() != State::DrainingSubs {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    armed.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let closed = next_event(&mut events, |e| matches!(e, EventKind::Closed { .. })).await;
    let EventKind::Closed { reason, .. } = closed else {
        unreachable!()
    };
    assert!(
        matches!(&reason, tether::ClosedReason::DriverFailed(what) if what.contains("boom")),
        "{reason:?}"
    );
    assert!(reason.to_string().contains("driver failed"), "{reason}");
    let within = |d: Duration| d < Duration::from_secs(3);
    assert!(matches!(
        tokio::time::timeout(T, publish).await.unwrap().unwrap(),
        Err(PublishError::Closed | PublishError::Draining)
    ));
    assert_eq!(
        tokio::time::timeout(T, flush).await.unwrap().unwrap(),
        Err(FlushError::Closed)
    );
    let request = tokio::time::timeout(T, request).await.unwrap().unwrap();
    assert!(
        matches!(
            request,
            Err(RequestError::Closed | RequestError::Publish(PublishError::Closed))
        ),
        "{request:?}"
    );
    let report = tokio::time::timeout(T, drain)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(report.unsent_msgs >= 3, "{report:?}");
    assert!(within(start.elapsed()), "at once, not at a deadline");
    assert_eq!(client.status(), State::Closed);
    // The event stream ends after Closed.
    assert!(tokio::time::timeout(T, events.next())
        .await
        .unwrap()
        .is_none());
    // close() on the failed client returns at once, with what the failure left unsent.
    let again = tokio::time::timeout(T, client.close()).await.unwrap();
    assert_eq!(again.unsent_msgs, report.unsent_msgs);
}

// ===== B5, B11, B12: the life of a request =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b5_cancelled_requests_leave_nothing_behind() {
    let server = NatsServer::start().unwrap();
    let client = tether::connect(server.url()).await.unwrap();
    // A responder that never answers.
    let mut silent = client.subscribe("b5.silent").await.unwrap();
    let drained = tokio::spawn(async move { while silent.next().await.is_some() {} });
    client.flush().await.unwrap();
    for _ in 0..10_000 {
        // Polled once (registered, written), then dropped: a caller's timeout or select!.
        let r = client.request("b5.silent", "x").now_or_never();
        assert!(r.is_none(), "nobody answers");
    }
    assert_eq!(client.statistics().pending_requests, 0);
    client.close().await;
    drained.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b12_a_request_timeout_bounds_the_wait_for_buffer_room() {
    let (_server, proxy, client) = through_proxy(
        ConnectOptions::new()
            .outbound_buffer(4 * 1024 * 1024, 3)
            .block_deadline(Duration::from_secs(5))
            .ping_interval(Duration::from_secs(60)),
    )
    .await;
    client.flush().await.unwrap();
    proxy.pause();
    // Fill the buffer: the frames cannot leave while the link is paused... eventually.
    fill_paused(&client).await;
    let start = Instant::now();
    let err = client
        .request_with("b12.req", None, b"x", Duration::from_millis(200))
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, RequestError::Timeout { .. }), "{err:?}");
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(2),
        "bounded by the request's 200 ms, not block_deadline: {took:?}"
    );
    assert_eq!(client.statistics().pending_requests, 0);
    proxy.pass();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b11_a_request_still_waiting_for_room_when_the_link_drops_is_sent_and_answered_later() {
    // Under the Block policy a request waits for room across the outage. It was never
    // buffered when the link dropped, so it is not failed as maybe processed (the old code
    // failed it, then sent it anyway and dropped the reply): it goes out after the
    // reconnect and gets its answer.
    let (server, proxy, client) = through_proxy(
        ConnectOptions::new()
            .outbound_buffer(4 * 1024 * 1024, 3)
            .overflow(OverflowPolicy::Block)
            .block_deadline(Duration::from_secs(20))
            .ping_interval(Duration::from_secs(60)),
    )
    .await;
    let responder = tether::connect(server.url()).await.unwrap();
    let seen = echo(&responder, "b11.req").await;
    let mut events = client.events();
    client.flush().await.unwrap();
    proxy.pause();
    fill_paused(&client).await;
    let mut req = Box::pin(client.request_with("b11.req", None, b"x", Duration::from_secs(20)));
    assert!(
        (&mut req).now_or_never().is_none(),
        "the request waits for room"
    );
    proxy.cut(tether_testkit::CutMode::Rst);
    next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await;
    proxy.pass();
    let reply = tokio::time::timeout(T, req).await.unwrap().unwrap();
    assert_eq!(&reply.payload[..], b"x");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b12_a_buffered_request_that_timed_out_is_never_sent_later() {
    let (server, proxy, client) = through_proxy(
        ConnectOptions::new()
            .outbound_buffer(128 * 1024 * 1024, 1_000_000)
            .ping_interval(Duration::from_secs(60)),
    )
    .await;
    let responder = tether::connect(server.url()).await.unwrap();
    let seen = echo(&responder, "b12.late").await;
    client.flush().await.unwrap();
    proxy.pause();
    // More than the sockets hold (loopback receive buffers grow to tcp_rmem's maximum, 32 MiB
    // here), less than the buffer: the request is buffered behind.
    let big = vec![0u8; 512 * 1024];
    for _ in 0..96 {
        client.try_publish("b12.fill", &big).unwrap();
    }
    let err = client
        .request_with("b12.late", None, b"x", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Timeout { .. }), "{err:?}");
    // The link resumes: everything buffered goes out, except the abandoned request.
    proxy.pass();
    tokio::time::timeout(T, client.flush())
        .await
        .unwrap()
        .unwrap();
    responder.flush().await.unwrap();
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the timed-out request was not sent"
    );
}

// ===== B6, B9, B13 and the Lazy policy =====

/// A client with the Lazy policy for a server on 127.0.0.1:`port` (maybe not up yet).
async fn lazy_client(port: u16) -> tether::Client {
    ConnectOptions::new()
        .connect_policy(ConnectPolicy::Lazy)
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b6_a_request_failed_by_a_lazy_attempt_is_never_sent_later() {
    let port = closed_port();
    let client = lazy_client(port).await;
    assert_eq!(client.status(), State::Idle);
    let err = client
        .request_with("b6.svc", None, b"x", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RequestError::Publish(PublishError::Connect(_))),
        "{err:?}"
    );
    assert_eq!(
        client.status(),
        State::Idle,
        "a failed attempt returns to Idle"
    );
    let server = NatsServer::start_with(ServerConfig::default().with_port(port)).unwrap();
    let responder = tether::connect(server.url()).await.unwrap();
    let seen = echo(&responder, "b6.svc").await;
    // Next use connects; only the new request reaches the responder.
    let reply = client
        .request_with("b6.svc", None, b"y", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], b"y");
    client.flush().await.unwrap();
    responder.flush().await.unwrap();
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "the failed request was never sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b9_drain_of_an_idle_lazy_client_returns_at_once() {
    let port = closed_port();
    let client = lazy_client(port).await;
    let start = Instant::now();
    let report = client.drain().await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(!report.timed_out);
    assert_eq!(client.status(), State::Closed);

    // Used once, its attempt failed, one publish buffered: drain tries once more and
    // reports the publish as unsent, without waiting out drain_timeout.
    let client = lazy_client(port).await;
    client.publish("b9", "x").await.unwrap();
    assert!(client.flush().await.is_err());
    assert_eq!(client.status(), State::Idle);
    let start = Instant::now();
    let report = client.drain().await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(report.unsent_msgs, 1);
    assert_eq!(client.status(), State::Closed);
}

#[test]
fn b13_try_publish_under_lazy_works_from_a_thread_outside_any_runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = NatsServer::start().unwrap();
    let (client, watcher) = rt.block_on(async {
        let watcher = tether::connect(server.url()).await.unwrap();
        let client = ConnectOptions::new()
            .connect_policy(ConnectPolicy::Lazy)
            .connect(server.url())
            .await
            .unwrap();
        (client, watcher)
    });
    let mut sub = rt.block_on(async {
        let s = watcher.subscribe("b13").await.unwrap();
        watcher.flush().await.unwrap();
        s
    });
    let c = client.clone();
    std::thread::spawn(move || c.try_publish("b13", "from a plain thread"))
        .join()
        .expect("no panic")
        .unwrap();
    let m = rt.block_on(async { tokio::time::timeout(T, sub.next()).await.unwrap().unwrap() });
    assert_eq!(&m.payload[..], b"from a plain thread");
    rt.block_on(client.close());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_concurrent_first_users_share_one_attempt() {
    let server = NatsServer::start().unwrap();
    let client = ConnectOptions::new()
        .connect_policy(ConnectPolicy::Lazy)
        .name("lazy-shared")
        .connect(server.url())
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move {
                c.publish("lazy.shared", format!("{i}")).await.unwrap();
                c.flush().await
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(T, t).await.unwrap().unwrap().unwrap();
    }
    assert_eq!(client.status(), State::Connected);
    assert_eq!(client.statistics().connects, 1, "one attempt for all");
    let conns = server.connz().unwrap();
    let named = conns["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "lazy-shared")
        .count();
    assert_eq!(named, 1);
}

// ===== B8, B19: the reconnect loop's states and events =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b8_retry_reports_reconnecting_while_it_fails_then_connected() {
    let port = closed_port();
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = seen.clone();
    let client = ConnectOptions::new()
        .connect_policy(ConnectPolicy::Retry)
        .reconnect_delay(|_, _, _| Duration::from_millis(100))
        .event_callback(move |e| log.lock().push(e.kind))
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    let mut state = client.status_watch();
    tokio::time::timeout(T, state.wait_for(|s| *s == State::Reconnecting))
        .await
        .unwrap()
        .unwrap();
    // Let it fail a few times.
    tokio::time::timeout(T, async {
        loop {
            let failed = seen
                .lock()
                .iter()
                .filter(|e| matches!(e, EventKind::ReconnectFailed { .. }))
                .count();
            if failed >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(client.status(), State::Reconnecting);
    let _server = NatsServer::start_with(ServerConfig::default().with_port(port)).unwrap();
    tokio::time::timeout(T, state.wait_for(|s| *s == State::Connected))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(T, async {
        while !seen
            .lock()
            .iter()
            .any(|e| matches!(e, EventKind::Connected { .. }))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let seen = seen.lock().clone();
    let attempts: Vec<u32> = seen
        .iter()
        .filter_map(|e| match e {
            EventKind::Reconnecting { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert!(attempts.len() >= 3, "{attempts:?}");
    assert!(
        attempts.windows(2).all(|w| w[1] == w[0] + 1),
        "numbered 1, 2, 3 ...: {attempts:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, EventKind::Reconnected { .. })),
        "the first success is Connected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b19_publishing_during_the_backoff_does_not_repeat_reconnecting() {
    let (_server, client, mut events) =
        disconnected(ConnectOptions::new().reconnect_delay(|_, _, _| Duration::from_millis(200)))
            .await;
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        let _ = client.try_publish("b19", "x");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut attempts = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(50), events.next()).await {
        if let EventKind::Reconnecting { attempt, .. } = e.kind {
            attempts.push(attempt);
        }
    }
    assert!(attempts.len() >= 3, "{attempts:?}");
    assert!(
        attempts.windows(2).all(|w| w[1] > w[0]),
        "each attempt announced once: {attempts:?}"
    );
}

// ===== B18: statistics =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b18_statistics_count_the_current_outage_the_high_water_and_the_rtt() {
    let mut server = NatsServer::start().unwrap();
    let client = ConnectOptions::new()
        .reconnect_delay(|_, _, _| Duration::from_millis(100))
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    client.flush().await.unwrap();
    assert!(
        client.statistics().rtt.is_some(),
        "a flush on an idle link measures it"
    );
    server.kill();
    next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await;
    for _ in 0..10 {
        client.publish("b18", [0u8; 100]).await.unwrap();
    }
    let first = client.statistics().disconnected_time;
    // The outage goes on: its time grows while it lasts, not only at the reconnect.
    let grown = first + Duration::from_millis(150);
    tokio::time::timeout(T, async {
        while client.statistics().disconnected_time < grown {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("disconnected_time counts the current outage");
    let stats = client.statistics();
    assert!(
        stats.buffer_high_water_bytes >= stats.buffered_bytes && stats.buffered_bytes > 1000,
        "{stats:?}"
    );
    let report = client.close().await;
    assert_eq!(report.unsent_msgs, 10);
    assert!(client.statistics().disconnected_time >= stats.disconnected_time);
}

// ===== B20: a drain that times out =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b20_a_drain_that_times_out_closes_with_drain_timeout() {
    let (_server, proxy, client) = through_proxy(
        ConnectOptions::new()
            .drain_timeout(Duration::from_millis(500))
            .flush_timeout(Duration::from_secs(3))
            .ping_interval(Duration::from_secs(60)),
    )
    .await;
    let mut events = client.events();
    let _sub = client.subscribe("b20").await.unwrap();
    client.flush().await.unwrap();
    proxy.pause();
    let start = Instant::now();
    let report = tokio::time::timeout(T, client.drain())
        .await
        .unwrap()
        .unwrap();
    assert!(report.timed_out);
    // Bounded by drain_timeout, without close()'s own flush_timeout on top.
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    let EventKind::Closed { reason, .. } =
        next_event(&mut events, |e| matches!(e, EventKind::Closed { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(reason, tether::ClosedReason::DrainTimeout);
}

// ===== S7: a switch's ready link is not thrown away =====

/// The cids of the connections named `name` on `server`.
fn cids(server: &NatsServer, name: &str) -> Vec<u64> {
    server.connz().unwrap()["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == name)
        .filter_map(|c| c["cid"].as_u64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_a_ready_switch_link_is_adopted_when_the_old_link_dies() {
    let a = NatsServer::start().unwrap();
    let b = NatsServer::start().unwrap();
    let proxy = Proxy::start(a.addr()).unwrap();
    let client = ConnectOptions::new()
        .name("s7")
        .no_randomize(true)
        .outbound_buffer(64 * 1024 * 1024, 1_000_000)
        .ping_interval(Duration::from_secs(60))
        .connect([proxy.url().as_str(), b.url().as_str()])
        .await
        .unwrap();
    let mut events = client.events();
    client.flush().await.unwrap();
    // Writes block on the paused link, mid-chunk: a planned switch cannot detach yet.
    proxy.pause();
    let big = vec![1u8; 64 * 1024];
    for _ in 0..512 {
        client.publish("s7", &big).await.unwrap();
    }
    client.force_reconnect();
    // The switch's link to b completes its handshake and waits.
    assert!(
        tether_testkit::wait_for(T, || cids(&b, "s7").len() == 1),
        "the new link is up on b"
    );
    let ready = cids(&b, "s7");
    proxy.cut(tether_testkit::CutMode::Rst);
    let EventKind::Reconnected { server, .. } =
        next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(server, b.url());
    client.flush().await.unwrap();
    assert_eq!(
        cids(&b, "s7"),
        ready,
        "the ready link was adopted, not dialled again"
    );
}

// ===== Issue item 5: per-subscription pending limits, a fixed reconnect wait =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_limits_per_subscription_and_unlimited() {
    let server = NatsServer::start().unwrap();
    let client = ConnectOptions::new()
        .pending_limits(5, 1024 * 1024)
        .connect(server.url())
        .await
        .unwrap();
    let small = client
        .subscribe_with(
            "pl",
            tether::SubscribeOptions::new().pending_limits(10, usize::MAX),
        )
        .await
        .unwrap();
    let default = client.subscribe("pl").await.unwrap();
    let unlimited = client
        .subscribe_with("pl", tether::SubscribeOptions::new().unlimited_pending())
        .await
        .unwrap();
    let err = client
        .subscribe_with("pl", tether::SubscribeOptions::new().pending_limits(0, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, tether::SubscribeError::InvalidPendingLimits { .. }),
        "{err}"
    );
    for i in 0..100u32 {
        client.publish("pl", i.to_string()).await.unwrap();
    }
    client.flush().await.unwrap();
    // The flush's PONG follows the deliveries on the same link.
    assert_eq!((small.pending(), small.dropped()), (10, 90));
    assert_eq!((default.pending(), default.dropped()), (5, 95));
    assert_eq!((unlimited.pending(), unlimited.dropped()), (100, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_reconnect_wait_spaces_every_retry_equally() {
    let mut server = NatsServer::start().unwrap();
    let wait = Duration::from_millis(150);
    let client = ConnectOptions::new()
        .fixed_reconnect_wait(wait)
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    server.kill();
    let mut delays = Vec::new();
    while delays.len() < 4 {
        if let EventKind::Reconnecting { delay, .. } =
            next_event(&mut events, |e| matches!(e, EventKind::Reconnecting { .. })).await
        {
            delays.push(delay);
        }
    }
    assert_eq!(delays[0], Duration::ZERO, "the first attempt at once");
    for d in &delays[1..] {
        assert!(
            *d <= wait && *d + Duration::from_millis(30) >= wait,
            "{delays:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_waiting_for_room_fails_at_once_when_the_link_drops_under_error_policy() {
    let (_server, proxy, client) = through_proxy(
        ConnectOptions::new()
            .outbound_buffer(4 * 1024 * 1024, 3)
            .block_deadline(Duration::from_secs(20))
            .ping_interval(Duration::from_secs(60)),
    )
    .await;
    let mut events = client.events();
    client.flush().await.unwrap();
    proxy.pause();
    fill_paused(&client).await;
    let mut publish = Box::pin(client.publish("wait.blocked", "x"));
    let first = (&mut publish).now_or_never();
    assert!(first.is_none(), "waits for room: {first:?}");
    proxy.cut(tether_testkit::CutMode::Rst);
    next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await;
    let start = Instant::now();
    let err = tokio::time::timeout(T, publish).await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            PublishError::BufferFull {
                connected: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "not at block_deadline"
    );
}

// ===== A runtime that shuts down under a client =====

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_driver_cancelled_with_data_buffered_says_so_at_warn() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let mut server = NatsServer::start().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let client = ConnectOptions::new()
            .reconnect_delay(|_, _, _| Duration::from_secs(60))
            .connect(server.url())
            .await
            .unwrap();
        let mut events = client.events();
        server.kill();
        next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await;
        for _ in 0..5 {
            client.publish("cancelled", "x").await.unwrap();
        }
        client
    });
    // No close(), no drain(): the runtime goes away under the client.
    drop(rt);
    let text = String::from_utf8(logs.0.lock().clone()).unwrap();
    assert!(
        text.contains("WARN") && text.contains("unsent_msgs=5") && text.contains("cancelled"),
        "{text}"
    );
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_pool_while_reconnecting_is_used_at_once() {
    let mut a = NatsServer::start().unwrap();
    let b = NatsServer::start().unwrap();
    let client = ConnectOptions::new()
        .fixed_reconnect_wait(Duration::from_secs(60))
        .connect(a.url())
        .await
        .unwrap();
    let mut events = client.events();
    a.kill();
    // The first retry goes out at once and fails; the next one is a minute away.
    next_event(&mut events, |e| {
        matches!(e, EventKind::ReconnectFailed { .. })
    })
    .await;
    let start = Instant::now();
    client.set_server_pool(b.url()).unwrap();
    let EventKind::Reconnected { server, .. } =
        next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(server, b.url());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(client.servers(), vec![b.url()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b18_what_a_retired_link_left_unconfirmed_is_in_the_statistics() {
    let a = NatsServer::start().unwrap();
    let b = NatsServer::start().unwrap();
    let proxy = Proxy::start(a.addr()).unwrap();
    let client = ConnectOptions::new()
        .no_randomize(true)
        .ldm_overlap(Duration::from_millis(100))
        .ping_interval(Duration::from_secs(30))
        .pong_timeout(Duration::from_millis(300))
        .connect([proxy.url().as_str(), b.url().as_str()])
        .await
        .unwrap();
    let mut events = client.events();
    client.flush().await.unwrap();
    // Written into the paused link's socket, never confirmed there.
    proxy.pause();
    for i in 0..10u8 {
        client.publish("b18.m", [i]).await.unwrap();
    }
    tokio::time::timeout(T, async {
        while client.statistics().buffered_msgs > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    client.force_reconnect();
    let EventKind::Migrated {
        unconfirmed_msgs,
        unconfirmed_bytes,
        ..
    } = next_event(&mut events, |e| matches!(e, EventKind::Migrated { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(unconfirmed_msgs, 10);
    let stats = client.statistics();
    assert_eq!(stats.unconfirmed_reported_msgs, 10);
    assert_eq!(stats.unconfirmed_reported_bytes, unconfirmed_bytes);
}
