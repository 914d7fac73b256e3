//! Helpers shared by the integration tests.

use std::time::Duration;

use futures_util::StreamExt;
use tether::EventKind;

/// How long a test waits for any one thing.
pub(crate) const T: Duration = Duration::from_secs(15);

/// The kind of the next event matching `pred`, within [`T`].
pub(crate) async fn next_event(
    events: &mut tether::Events,
    mut pred: impl FnMut(&EventKind) -> bool,
) -> EventKind {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let e = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("timed out waiting for an event")
            .expect("event stream ended");
        if pred(&e.kind) {
            return e.kind;
        }
    }
}

/// Publishes probes on `subject` until one reaches `sub`: the interest has reached the
/// publisher's node (route interest propagates asynchronously in a cluster).
#[allow(dead_code)] // only the cluster tests need it
pub(crate) async fn wait_interest(
    publisher: &tether::Client,
    sub: &mut tether::Subscriber,
    subject: &str,
) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        publisher.publish(subject, "probe").await.unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the interest in {subject} never reached the publisher's node"
        );
    }
}

/// A server, a fault proxy in front of it, and a client connected through the proxy.
#[allow(dead_code)] // not every test binary puts a proxy in the way
pub(crate) async fn through_proxy(
    options: tether::ConnectOptions,
) -> (
    tether_testkit::NatsServer,
    tether_testkit::Proxy,
    tether::Client,
) {
    let server = tether_testkit::NatsServer::start().unwrap();
    let proxy = tether_testkit::Proxy::start(server.addr()).unwrap();
    let client = options.connect(proxy.url()).await.unwrap();
    (server, proxy, client)
}

/// What [`proxied`] returns: the server, the proxy, the client and its events.
pub(crate) type Proxied = (
    tether_testkit::NatsServer,
    tether_testkit::Proxy,
    tether::Client,
    tether::Events,
);

/// A server, a fault proxy in front of it, and a client through the proxy with `options`
/// that sends a PING after `ping` of quiet and gives up on its PONG after `ping` too; its
/// events, taken before its first flush, which has completed.
#[allow(dead_code)] // not every test binary puts a proxy in the way
pub(crate) async fn proxied_with(options: tether::ConnectOptions, ping: Duration) -> Proxied {
    let (server, proxy, client) =
        through_proxy(options.ping_interval(ping).pong_timeout(ping)).await;
    let events = client.events();
    client.flush().await.unwrap();
    (server, proxy, client, events)
}

/// [`proxied_with`] the default options.
#[allow(dead_code)] // not every test binary puts a proxy in the way
pub(crate) async fn proxied(ping: Duration) -> Proxied {
    proxied_with(tether::ConnectOptions::new(), ping).await
}

/// A client connected with `options` to a server that is then killed; its events, read
/// up to the `Disconnected`.
#[allow(dead_code)] // only the tests of a client without a server need it
pub(crate) async fn disconnected(
    options: tether::ConnectOptions,
) -> (tether_testkit::NatsServer, tether::Client, tether::Events) {
    let mut server = tether_testkit::NatsServer::start().unwrap();
    let client = options.connect(server.url()).await.unwrap();
    let mut events = client.events();
    server.kill();
    next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await;
    (server, client, events)
}

/// A cluster of `nodes` with its routes up, and a client connected to node 0 with
/// `options` that has discovered every node; its events, taken before the discovery.
#[allow(dead_code)] // only the cluster tests need it
pub(crate) async fn cluster_client(
    nodes: usize,
    options: tether::ConnectOptions,
) -> (tether_testkit::NatsCluster, tether::Client, tether::Events) {
    let cluster = tether_testkit::NatsCluster::start(nodes).unwrap();
    cluster.wait_routes(T).unwrap();
    let client = options.connect(cluster.node(0).url()).await.unwrap();
    let events = client.events();
    assert!(
        tether_testkit::wait_for(T, || client.servers().len() == nodes),
        "the other nodes are discovered: {:?}",
        client.servers()
    );
    (cluster, client, events)
}

/// A server whose only user is `app`/`pw` with these `permissions { ... }`.
#[allow(dead_code)] // only the permission tests need it
pub(crate) fn server_with_permissions(permissions: &str) -> tether_testkit::NatsServer {
    tether_testkit::NatsServer::start_with(tether_testkit::ServerConfig {
        extra_config: Some(users_block(permissions)),
        ..tether_testkit::ServerConfig::default()
    })
    .unwrap()
}

/// The `authorization` block of [`server_with_permissions`].
#[allow(dead_code)] // only the permission tests need it
pub(crate) fn users_block(permissions: &str) -> String {
    format!(
        "authorization {{\n  users = [\n    {{ user: app, password: pw, permissions: {{ {permissions} }} }}\n  ]\n}}\n"
    )
}

/// A client of `server` logged in as `user` (password `pw`).
#[allow(dead_code)] // only the permission tests need it
pub(crate) async fn connect_as(server: &tether_testkit::NatsServer, user: &str) -> tether::Client {
    tether::ConnectOptions::new()
        .user_and_password(user, "pw")
        .connect(server.url())
        .await
        .unwrap()
}

/// Answers every request on `subject` with its own payload, from a task on `client`;
/// returns once the server has the subscription.
#[allow(dead_code)] // only the request tests need it
pub(crate) async fn echo_responder(client: &tether::Client, subject: &str) {
    let mut sub = client.subscribe(subject).await.unwrap();
    client.flush().await.unwrap();
    let client = client.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                client.publish(reply.as_str(), &m.payload).await.unwrap();
            }
        }
    });
}

/// Waits until `client` knows `n` servers (the configured ones and those INFO's
/// connect_urls added), within [`T`].
#[allow(dead_code)] // only the cluster tests need it
pub(crate) async fn wait_discovered(client: &tether::Client, n: usize) {
    let deadline = tokio::time::Instant::now() + T;
    while client.servers().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other nodes were never discovered: {:?}",
            client.servers()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server's subscription count, polled while this thread blocks (so a client's
/// driver task on this same current-thread runtime cannot run) until it is `want` or
/// [`T`] passes; returns the last count.
#[allow(dead_code)] // only the direct-write tests need it
pub(crate) fn block_until_subscriptions(server: &tether_testkit::NatsServer, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + T;
    loop {
        let n = server.num_subscriptions().unwrap();
        if n == want || std::time::Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
