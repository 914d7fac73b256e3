//! Scenarios against real nats-server processes that no other file covers: -ERR forms with
//! permissions and limits, liveness by PING count, drain and close phases, connect options,
//! credentials in URLs, a server without headers, queue groups, and flush re-arming.

mod common;
use common::{next_event, T};

use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use tether::{ConnectOptions, EventKind, PublishError, State, SubscribeError};
use tether_testkit::{CutMode, NatsServer, Proxy, ServerConfig};

/// A server whose only user is `app`/`pw` with these `permissions { ... }`.
fn server_with_permissions(permissions: &str) -> NatsServer {
    NatsServer::start_with(ServerConfig {
        extra_config: Some(users_block(permissions)),
        ..ServerConfig::default()
    })
    .unwrap()
}

fn users_block(permissions: &str) -> String {
    format!(
        "authorization {{\n  users = [\n    {{ user: app, password: pw, permissions: {{ {permissions} }} }}\n  ]\n}}\n"
    )
}

async fn app_client(server: &NatsServer) -> tether::Client {
    ConnectOptions::new()
        .user_and_password("app", "pw")
        .connect(server.url())
        .await
        .unwrap()
}

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
    let client = app_client(&server).await;
    let mut queued = client.queue_subscribe("work", "workers").await.unwrap();
    let mut plain = client.subscribe("work").await.unwrap();
    let err = ended(&mut plain).await;
    assert!(
        matches!(&err, Some(SubscribeError::PermissionDenied(t)) if t.contains("\"work\"")),
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
    let client = app_client(&server).await;
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
    let server = NatsServer::start().unwrap();
    let proxy = Proxy::start(server.addr()).unwrap();
    let client = ConnectOptions::new()
        .ping_interval(Duration::from_millis(200))
        .pong_timeout(Duration::from_secs(5))
        .max_pings_outstanding(2)
        .connect(proxy.url())
        .await
        .unwrap();
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
    assert!(reason.contains("more than 2 PINGs unanswered"), "{reason}");
    // Two keepalives go out 200 ms apart; the third one due finds them both unanswered.
    assert!(
        found >= Duration::from_millis(400) && found < Duration::from_millis(1500),
        "found after {found:?}, pong_timeout is 5 s"
    );
}

// ===== drain phases and close (semantics 11) =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_accepts_publishes_while_draining_subs_and_refuses_them_while_draining_pubs() {
    let server = NatsServer::start().unwrap();
    let proxy = Proxy::start(server.addr()).unwrap();
    let client = ConnectOptions::new()
        .drain_timeout(Duration::from_secs(10))
        .connect(proxy.url())
        .await
        .unwrap();
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
