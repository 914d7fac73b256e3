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
