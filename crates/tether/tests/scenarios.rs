//! Scenarios against real nats-server processes that no other file covers: -ERR forms with
//! permissions and limits, liveness by PING count, drain and close phases, connect options,
//! credentials in URLs, a server without headers, queue groups, and flush re-arming.

mod common;
use common::{connect_as, next_event, server_with_permissions, through_proxy, users_block, T};

use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use tether::{ConnectOptions, EventKind, PublishError, State, SubscribeError};
use tether_testkit::{CutMode, NatsCluster, NatsServer, Proxy, ServerConfig};

/// The next message on `sub` within [`T`].
async fn next_msg(sub: &mut tether::Subscriber) -> tether::Message {
    tokio::time::timeout(T, sub.next())
        .await
        .expect("timed out waiting for a message")
        .expect("the subscription ended")
}

/// Waits for `sub`'s stream to end and returns why.
async fn ended(sub: &mut tether::Subscriber) -> Option<SubscribeError> {
    let subject = sub.subject().to_owned();
    loop {
        let next = tokio::time::timeout(T, sub.next())
            .await
            .unwrap_or_else(|_| panic!("the subscription on {subject} did not end"));
        if next.is_none() {
            return sub.error();
        }
    }
}

/// Every event already queued on `events`, without waiting.
fn queued_events(events: &mut tether::Events) -> Vec<EventKind> {
    let mut out = Vec::new();
    while let Some(Some(e)) = events.next().now_or_never() {
        out.push(e.kind);
    }
    out
}

// ===== -ERR: subscription permissions (semantics 7, B16) =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_only_permission_denies_the_plain_subscription_and_keeps_the_queue_one() {
    // `work workers` allows only queue subscriptions in group `workers` on `work`.
    let server = server_with_permissions(
        r#"subscribe: { allow: ["work workers", "_INBOX.>"] }, publish: { allow: [">"] }"#,
    );
    let client = connect_as(&server, "app").await;
    let mut queued = client.queue_subscribe("work", "workers").await.unwrap();
    let mut plain = client.subscribe("work").await.unwrap();
    let mut other_group = client.queue_subscribe("work", "others").await.unwrap();
    let err = ended(&mut plain).await;
    assert!(
        matches!(&err, Some(SubscribeError::PermissionDenied(t)) if t.contains("\"work\"")),
        "{err:?}"
    );
    // Another group on the same subject: `... using queue "others"` ends only that one.
    let err = ended(&mut other_group).await;
    assert!(
        matches!(&err, Some(SubscribeError::PermissionDenied(t)) if t.contains("using queue \"others\"")),
        "{err:?}"
    );
    for i in 0..3u8 {
        client.publish("work", [i]).await.unwrap();
    }
    client.flush().await.unwrap();
    for i in 0..3u8 {
        assert_eq!(
            &next_msg(&mut queued).await.payload[..],
            [i],
            "the queue subscription stays"
        );
    }
    assert!(queued.error().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_revoking_a_permission_ends_exactly_the_named_sids() {
    let mut server =
        server_with_permissions(r#"subscribe: { allow: [">"] }, publish: { allow: [">"] }"#);
    let client = connect_as(&server, "app").await;
    let mut events = client.events();
    let mut open = client.subscribe("open.x").await.unwrap();
    let mut first = client.subscribe("secret.x").await.unwrap();
    let mut second = client.subscribe("secret.x").await.unwrap();
    client.flush().await.unwrap();
    // The reload path names each removed subscription: `... to "secret.x" (sid "N")`.
    server.config_mut().extra_config = Some(users_block(
        r#"subscribe: { allow: [">"], deny: ["secret.>"] }, publish: { allow: [">"] }"#,
    ));
    server.reload().unwrap();
    for sub in [&mut first, &mut second] {
        let err = ended(sub).await;
        assert!(
            matches!(&err, Some(SubscribeError::PermissionDenied(t)) if t.contains("sid")),
            "{err:?}"
        );
    }
    client.publish("open.x", "still here").await.unwrap();
    client.flush().await.unwrap();
    assert_eq!(&next_msg(&mut open).await.payload[..], b"still here");
    // Each -ERR ended its own sid: none was left over as a bare ServerError.
    let left: Vec<_> = queued_events(&mut events)
        .into_iter()
        .filter(|e| matches!(e, EventKind::ServerError { .. }))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

// ===== -ERR: maximum subscriptions exceeded (semantics 7, S2) =====

fn server_with_max_subscriptions(n: usize) -> NatsServer {
    NatsServer::start_with(ServerConfig {
        extra_config: Some(format!("max_subscriptions: {n}\n")),
        ..ServerConfig::default()
    })
    .unwrap()
}

/// Publishes one message to each subject and checks that each subscription gets its own.
async fn each_receives(client: &tether::Client, subs: &mut [&mut tether::Subscriber]) {
    for sub in subs.iter() {
        client.publish(sub.subject(), sub.subject()).await.unwrap();
    }
    client.flush().await.unwrap();
    for sub in subs.iter_mut() {
        let subject = sub.subject().to_owned();
        assert_eq!(next_msg(sub).await.payload, subject.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_over_max_subscriptions_ends_and_the_others_keep_working() {
    let server = server_with_max_subscriptions(3);
    let client = tether::connect(server.url()).await.unwrap();
    let mut sub_a = client.subscribe("a").await.unwrap();
    let mut sub_b = client.subscribe("b").await.unwrap();
    let mut sub_c = client.subscribe("c").await.unwrap();
    let mut sub_d = client.subscribe("d").await.unwrap();
    let err = ended(&mut sub_d).await;
    assert!(
        matches!(&err, Some(SubscribeError::MaxSubscriptionsExceeded(t)) if t.contains("maximum subscriptions")),
        "{err:?}"
    );
    each_receives(&client, &mut [&mut sub_a, &mut sub_b, &mut sub_c]).await;
    assert_eq!(client.status(), tether::State::Connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_subscription_over_a_lowered_limit_ends_instead_of_going_silent() {
    let mut server = server_with_max_subscriptions(3);
    let client = ConnectOptions::new()
        .reconnect_delay(|_, _, _| Duration::from_millis(20))
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    let mut sub_a = client.subscribe("a").await.unwrap();
    let mut sub_b = client.subscribe("b").await.unwrap();
    let mut sub_c = client.subscribe("c").await.unwrap();
    each_receives(&client, &mut [&mut sub_a, &mut sub_b, &mut sub_c]).await;
    // The server comes back allowing two: the replay's third SUB is refused.
    server.kill();
    next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await;
    server.config_mut().extra_config = Some("max_subscriptions: 2\n".into());
    server.restart().unwrap();
    next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await;
    let err = ended(&mut sub_c).await;
    assert!(
        matches!(&err, Some(SubscribeError::MaxSubscriptionsExceeded(_))),
        "{err:?}"
    );
    each_receives(&client, &mut [&mut sub_a, &mut sub_b]).await;
}

// ===== liveness: PINGs outstanding (semantics 6) =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_pings_outstanding_is_found_long_before_the_pong_timeout() {
    let (_server, proxy, client) = through_proxy(
        ConnectOptions::new()
            .ping_interval(Duration::from_millis(200))
            .pong_timeout(Duration::from_secs(5))
            .max_pings_outstanding(2),
    )
    .await;
    let mut events = client.events();
    client.flush().await.unwrap();
    proxy.black_hole();
    let start = Instant::now();
    let EventKind::Disconnected { reason, .. } =
        next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await
    else {
        unreachable!()
    };
    let found = start.elapsed();
    assert_eq!(
        reason,
        tether::DisconnectReason::TooManyPingsOutstanding { max: 2 },
        "{reason}"
    );
    // Two keepalives go out 200 ms apart; the third one due finds them both unanswered.
    assert!(
        found >= Duration::from_millis(400) && found < Duration::from_millis(1500),
        "found after {found:?}, pong_timeout is 5 s"
    );
}

// ===== drain phases and close (semantics 11) =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_accepts_publishes_while_draining_subs_and_refuses_them_while_draining_pubs() {
    let (_server, proxy, client) =
        through_proxy(ConnectOptions::new().drain_timeout(Duration::from_secs(10))).await;
    let _sub = client.subscribe("d").await.unwrap();
    client.flush().await.unwrap();
    let mut states = client.status_watch();
    // A paused link holds the drain in DrainingSubs: its PING gets no PONG.
    proxy.pause();
    let drainer = client.clone();
    let drain = tokio::spawn(async move { drainer.drain().await });
    tokio::time::timeout(T, states.wait_for(|s| *s == State::DrainingSubs))
        .await
        .unwrap()
        .unwrap();
    client.publish("p", "during subs").await.unwrap();
    client.try_publish("p", "during subs").unwrap();
    assert_eq!(client.status(), State::DrainingSubs);
    // The link dies before the PONG: the drain moves on to DrainingPubs, whose flush waits
    // for the next link, held back by the paused proxy.
    proxy.cut(CutMode::Rst);
    tokio::time::timeout(T, states.wait_for(|s| *s == State::DrainingPubs))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        client.publish("p", "during pubs").await,
        Err(PublishError::Draining)
    );
    assert_eq!(
        client.try_publish("p", "during pubs"),
        Err(PublishError::Draining)
    );
    assert_eq!(client.status(), State::DrainingPubs);
    proxy.pass();
    let report = tokio::time::timeout(T, drain)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.unsent_msgs, 0, "{report:?}");
    assert_eq!(client.status(), State::Closed);
    assert_eq!(client.publish("p", "late").await, Err(PublishError::Closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_on_a_paused_link_returns_after_flush_timeout_with_everything_unconfirmed() {
    let server = NatsServer::start().unwrap();
    let proxy = Proxy::start(server.addr()).unwrap();
    let flush_timeout = Duration::from_millis(500);
    let client = ConnectOptions::new()
        .flush_timeout(flush_timeout)
        .connect(proxy.url())
        .await
        .unwrap();
    client.flush().await.unwrap();
    proxy.pause();
    // A few small frames: the socket takes them all, the server confirms none.
    const N: u64 = 50;
    for i in 0..N {
        client.publish("c", i.to_string()).await.unwrap();
    }
    let start = Instant::now();
    let report = client.close().await;
    let took = start.elapsed();
    assert!(
        took >= flush_timeout && took < flush_timeout + Duration::from_secs(1),
        "close took {took:?}"
    );
    assert_eq!(
        (report.unconfirmed_msgs, report.unsent_msgs),
        (N, 0),
        "{report:?}"
    );
    assert_eq!(client.status(), State::Closed);
    proxy.pass();
}

// ===== connect options =====

/// The payloads of the first message on `sub` after own publishes and another client's.
async fn first_seen_with_echo(no_echo: bool) -> Vec<u8> {
    let server = NatsServer::start().unwrap();
    let client = ConnectOptions::new()
        .no_echo(no_echo)
        .connect(server.url())
        .await
        .unwrap();
    let other = tether::connect(server.url()).await.unwrap();
    let mut sub = client.subscribe("e").await.unwrap();
    client.flush().await.unwrap();
    client.publish("e", "own").await.unwrap();
    // The server has handled "own" before it answers this flush ...
    client.flush().await.unwrap();
    // ... so "other" comes after "own" if "own" is delivered at all.
    other.publish("e", "other").await.unwrap();
    other.flush().await.unwrap();
    next_msg(&mut sub).await.payload.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_echo_keeps_own_publishes_from_coming_back() {
    assert_eq!(first_seen_with_echo(false).await, b"own");
    assert_eq!(first_seen_with_echo(true).await, b"other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_name_is_shown_by_the_server() {
    let server = NatsServer::start().unwrap();
    let client = ConnectOptions::new()
        .name("scenario-name-42")
        .connect(server.url())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let connz = server.connz().unwrap();
    let names: Vec<&str> = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, vec!["scenario-name-42"], "{connz}");
}

/// The ports of the servers a FailFast connect tried, in order.
async fn attempt_order(urls: &[String], no_randomize: bool) -> Vec<String> {
    let err = ConnectOptions::new()
        .no_randomize(no_randomize)
        .connect(urls.join(","))
        .await
        .unwrap_err();
    let tether::ConnectError::AllFailed { attempts } = err else {
        panic!("{err:?}")
    };
    attempts.into_iter().map(|a| a.server).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_randomize_tries_servers_in_the_order_given() {
    let urls: Vec<String> = (0..8)
        .map(|_| format!("nats://127.0.0.1:{}", tether_testkit::closed_port()))
        .collect();
    for _ in 0..3 {
        assert_eq!(attempt_order(&urls, true).await, urls);
    }
    // Without it the order is shuffled (8! orders: three identical runs would be chance).
    let mut shuffled = false;
    for _ in 0..3 {
        let order = attempt_order(&urls, false).await;
        let mut sorted = order.clone();
        sorted.sort();
        let mut expected = urls.clone();
        expected.sort();
        assert_eq!(sorted, expected, "every server is tried once");
        shuffled |= order != urls;
    }
    assert!(shuffled, "the default shuffles the servers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_randomize_reconnect_attempts_follow_the_list() {
    let server = NatsServer::start().unwrap();
    let closed = format!("nats://127.0.0.1:{}", tether_testkit::closed_port());
    // The callback sees every event from the first attempt on (a stream taken after
    // connect() returns could miss them).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = ConnectOptions::new()
        .no_randomize(true)
        .connect_policy(tether::ConnectPolicy::Retry)
        .event_callback(move |e| {
            let _ = tx.send(e.kind);
        })
        .connect(format!("{closed},{}", server.url()))
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let kind = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
        match kind {
            EventKind::Reconnecting { server, .. } => seen.push(format!("try {server}")),
            EventKind::ReconnectFailed { server, .. } => seen.push(format!("failed {server}")),
            EventKind::Connected { server, .. } => {
                seen.push(format!("connected {server}"));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        seen,
        vec![
            format!("try {closed}"),
            format!("failed {closed}"),
            format!("try {}", server.url()),
            format!("connected {}", server.url()),
        ]
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_discovered_servers_keeps_only_the_given_url() {
    let cluster = NatsCluster::start(3).unwrap();
    let url = cluster.node(0).url();
    // The INFO does announce the other nodes: a default client learns them.
    let learning = tether::connect(&url).await.unwrap();
    assert!(
        tether_testkit::wait_for(T, || learning.servers().len() == 3),
        "{:?}",
        learning.servers()
    );
    let client = ConnectOptions::new()
        .ignore_discovered_servers(true)
        .connect(&url)
        .await
        .unwrap();
    // The same INFO was read during the handshake; a flush later nothing more came in.
    client.flush().await.unwrap();
    assert_eq!(client.servers(), vec![url]);
}

// ===== credentials in the URL (semantics 5) =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_in_the_url_authenticate() {
    let server = NatsServer::start_with(ServerConfig {
        user: Some(("alice".into(), "s3cret".into())),
        ..ServerConfig::default()
    })
    .unwrap();
    let url = server.url_with_auth();
    assert!(url.starts_with("nats://alice:s3cret@"), "{url}");
    let client = tether::connect(&url).await.unwrap();
    client.flush().await.unwrap();
    let wrong = url.replace("s3cret", "wrong");
    let err = tether::connect(&wrong).await.unwrap_err().to_string();
    assert!(err.contains("Authorization Violation"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_url_authenticates() {
    let server = NatsServer::start_with(ServerConfig {
        token: Some("t0ken".into()),
        ..ServerConfig::default()
    })
    .unwrap();
    let url = server.url_with_auth();
    assert!(url.starts_with("nats://t0ken@"), "{url}");
    let client = tether::connect(&url).await.unwrap();
    client.flush().await.unwrap();
    let err = tether::connect(server.url()).await.unwrap_err().to_string();
    assert!(err.contains("Authorization Violation"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_servers_inherit_the_urls_credentials() {
    let mut cluster = NatsCluster::start_with(
        3,
        ServerConfig {
            user: Some(("alice".into(), "s3cret".into())),
            ..ServerConfig::default()
        },
    )
    .unwrap();
    // Only node 0 is given, with credentials; the others are learnt from its INFO.
    let client = ConnectOptions::new()
        .reconnect_delay(|_, _, _| Duration::from_millis(20))
        .connect(cluster.node(0).url_with_auth())
        .await
        .unwrap();
    let mut events = client.events();
    assert!(
        tether_testkit::wait_for(T, || client.servers().len() == 3),
        "{:?}",
        client.servers()
    );
    let mut sub = client.subscribe("inherit").await.unwrap();
    client.flush().await.unwrap();
    cluster.kill(0);
    match next_event(&mut events, |e| match e {
        EventKind::Reconnected { .. } => true,
        EventKind::ReconnectFailed { error, .. } => error.is_auth(),
        _ => false,
    })
    .await
    {
        EventKind::Reconnected { server, .. } => {
            assert_ne!(server, cluster.node(0).url(), "a discovered node");
        }
        other => panic!("the discovered node refused the credentials: {other:?}"),
    }
    client.publish("inherit", "after").await.unwrap();
    assert_eq!(&next_msg(&mut sub).await.payload[..], b"after");
}

// ===== a server without header support =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_header_support_headers_are_refused_and_no_responders_is_a_timeout() {
    let server = NatsServer::start_with(ServerConfig {
        extra_config: Some("no_header_support: true\n".into()),
        ..ServerConfig::default()
    })
    .unwrap();
    let client = tether::connect(server.url()).await.unwrap();
    assert!(!client.server_info().unwrap().headers);
    let mut h = tether::HeaderMap::new();
    h.insert("X-Trace", "1");
    assert_eq!(
        client.publish_with_headers("h", &h, "x").await,
        Err(PublishError::HeadersNotSupported)
    );
    // Plain publishes still work.
    let mut sub = client.subscribe("h").await.unwrap();
    client.publish("h", "plain").await.unwrap();
    assert_eq!(&next_msg(&mut sub).await.payload[..], b"plain");
    // No 503 without headers: a request nobody answers times out.
    let timeout = Duration::from_millis(300);
    let err = client
        .request_with("nobody.home", None, b"x", timeout)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, tether::RequestError::Timeout { subject, elapsed } if subject == "nobody.home" && *elapsed >= timeout),
        "{err:?}"
    );
    assert_eq!(client.status(), State::Connected);
}

// ===== queue groups =====

/// Collects `n` messages from two subscriptions; returns how many each got.
async fn share(
    first: &mut tether::Subscriber,
    second: &mut tether::Subscriber,
    n: usize,
    seen: &mut std::collections::BTreeSet<u32>,
) -> (usize, usize) {
    let (mut from_a, mut from_b) = (0, 0);
    let deadline = tokio::time::Instant::now() + T;
    while from_a + from_b < n {
        let m = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                Some(m) = first.next() => { from_a += 1; m }
                Some(m) = second.next() => { from_b += 1; m }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("only {} of {n} arrived", from_a + from_b));
        let i = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
        assert!(seen.insert(i), "message {i} delivered twice");
    }
    (from_a, from_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_subscribers_share_messages_and_keep_sharing_after_a_restart() {
    let mut server = NatsServer::start().unwrap();
    let connect = || {
        ConnectOptions::new()
            .reconnect_delay(|_, _, _| Duration::from_millis(20))
            .connect(server.url())
    };
    let (w1, w2, publisher) = (
        connect().await.unwrap(),
        connect().await.unwrap(),
        connect().await.unwrap(),
    );
    let mut q1 = w1.queue_subscribe("jobs", "workers").await.unwrap();
    let mut q2 = w2.queue_subscribe("jobs", "workers").await.unwrap();
    w1.flush().await.unwrap();
    w2.flush().await.unwrap();
    const N: u32 = 200;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..N {
        publisher.publish("jobs", i.to_be_bytes()).await.unwrap();
    }
    publisher.flush().await.unwrap();
    let (got1, got2) = share(&mut q1, &mut q2, N as usize, &mut seen).await;
    assert!(
        got1 > 0 && got2 > 0,
        "both members get some: {got1} + {got2}"
    );

    let mut all_events: Vec<_> = [&w1, &w2, &publisher].iter().map(|c| c.events()).collect();
    server.kill();
    for events in &mut all_events {
        next_event(events, |e| matches!(e, EventKind::Disconnected { .. })).await;
    }
    server.restart().unwrap();
    for events in &mut all_events {
        next_event(events, |e| matches!(e, EventKind::Reconnected { .. })).await;
    }
    // Each member's replayed SUB is in place once its flush is answered.
    w1.flush().await.unwrap();
    w2.flush().await.unwrap();
    for i in N..2 * N {
        publisher.publish("jobs", i.to_be_bytes()).await.unwrap();
    }
    publisher.flush().await.unwrap();
    let (got1, got2) = share(&mut q1, &mut q2, N as usize, &mut seen).await;
    assert!(
        got1 > 0 && got2 > 0,
        "both members get some after the restart: {got1} + {got2}"
    );
    assert_eq!(seen.len(), 2 * N as usize);
}

// ===== flush across a reconnect with resend_unconfirmed (semantics 11) =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_pending_when_the_link_is_cut_completes_on_the_next_link_with_resend() {
    let server = NatsServer::start().unwrap();
    let proxy = Proxy::start(server.addr()).unwrap();
    let watcher = tether::connect(server.url()).await.unwrap();
    let mut seen = watcher.subscribe("rf").await.unwrap();
    watcher.flush().await.unwrap();
    let flush_timeout = Duration::from_secs(5);
    let client = ConnectOptions::new()
        .resend_unconfirmed(true)
        .flush_timeout(flush_timeout)
        .reconnect_delay(|_, _, _| Duration::from_millis(20))
        .connect(proxy.url())
        .await
        .unwrap();
    let mut events = client.events();
    client.flush().await.unwrap();
    proxy.pause();
    const N: u32 = 10;
    for i in 0..N {
        client.publish("rf", i.to_be_bytes()).await.unwrap();
    }
    let start = Instant::now();
    let flush = client.flush();
    tokio::pin!(flush);
    // Poll it once: its PING is queued behind the publishes on the paused link.
    tokio::select! {
        biased;
        r = &mut flush => panic!("a flush on a paused link completed: {r:?}"),
        () = std::future::ready(()) => {}
    }
    proxy.cut(CutMode::Rst);
    next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await;
    proxy.pass();
    next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await;
    tokio::time::timeout(flush_timeout, &mut flush)
        .await
        .expect("the flush re-armed on the next link")
        .expect("and completed there");
    assert!(start.elapsed() < flush_timeout, "{:?}", start.elapsed());
    // What it confirmed was resent: the watcher has every message.
    let mut got = std::collections::BTreeSet::new();
    while got.len() < N as usize {
        got.insert(u32::from_be_bytes(
            next_msg(&mut seen).await.payload[..4].try_into().unwrap(),
        ));
    }
}
