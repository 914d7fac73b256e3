//! Event streams against real nats-server processes: the first item of every stream, and
//! streams taken after close.

mod common;
use common::T;

use futures_util::StreamExt;
use tether::{ConnectOptions, ConnectPolicy, EventKind, Events, State};
use tether_testkit::NatsServer;

/// The next event within [`T`]; `None` when the stream ended.
async fn next_or_end(events: &mut Events) -> Option<EventKind> {
    tokio::time::timeout(T, events.next())
        .await
        .expect("timed out waiting for an event or the end of the stream")
        .map(|e| e.kind)
}

fn current_state(state: State, server: Option<String>) -> EventKind {
    EventKind::CurrentState { state, server }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_stream_starts_with_the_current_state() {
    let mut server = NatsServer::start().unwrap();
    let client = tether::connect(server.url()).await.unwrap();
    client.publish("late", "x").await.unwrap();
    client.flush().await.unwrap();

    // Connected long ago: the Connected event is gone, the first item says it.
    let mut events = client.events();
    let server_name = client.connected_server();
    assert!(server_name.is_some());
    assert_eq!(
        next_or_end(&mut events).await,
        Some(current_state(State::Connected, server_name))
    );

    // Taken during an outage: Reconnecting, with no live link; then the outage's end.
    server.kill();
    let mut watch = client.status_watch();
    tokio::time::timeout(T, watch.wait_for(|s| *s == State::Reconnecting))
        .await
        .unwrap()
        .unwrap();
    let mut during = client.events();
    assert_eq!(
        next_or_end(&mut during).await,
        Some(current_state(State::Reconnecting, None))
    );
    server.restart().unwrap();
    common::next_event(&mut during, |e| matches!(e, EventKind::Reconnected { .. })).await;
    client.close().await;

    // A Lazy client that was never used is Idle.
    let lazy = ConnectOptions::new()
        .connect_policy(ConnectPolicy::Lazy)
        .connect(server.url())
        .await
        .unwrap();
    assert_eq!(
        next_or_end(&mut lazy.events()).await,
        Some(current_state(State::Idle, None))
    );
    lazy.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_taken_after_close_yields_the_closed_state_and_ends() {
    let mut server = NatsServer::start().unwrap();

    // Closed on request.
    let client = tether::connect(server.url()).await.unwrap();
    client.close().await;
    let mut events = client.events();
    assert_eq!(
        next_or_end(&mut events).await,
        Some(current_state(State::Closed, None))
    );
    assert_eq!(next_or_end(&mut events).await, None, "the stream ends");
    // Every later stream too.
    let mut again = client.events();
    assert_eq!(
        next_or_end(&mut again).await,
        Some(current_state(State::Closed, None))
    );
    assert_eq!(next_or_end(&mut again).await, None);

    // Closed by the connection (reconnecting is off), as a supervisor would find it.
    let client = ConnectOptions::new()
        .allow_reconnect(false)
        .connect(server.url())
        .await
        .unwrap();
    let mut before = client.events();
    server.kill();
    common::next_event(&mut before, |e| matches!(e, EventKind::Closed { .. })).await;
    let mut after = client.events();
    assert_eq!(
        next_or_end(&mut after).await,
        Some(current_state(State::Closed, None))
    );
    assert_eq!(next_or_end(&mut after).await, None);
    assert_eq!(next_or_end(&mut before).await, None);
}
