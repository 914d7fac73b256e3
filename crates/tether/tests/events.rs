//! Event streams and the event callback against real nats-server processes: the first
//! item of every stream, streams taken after close, and the callback's task; and the
//! version the server sees.

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

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("reading /proc/self/task")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_with_callbacks_start_no_thread_per_client() {
    const CLIENTS: usize = 200;
    let server = NatsServer::start().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, EventKind)>();
    let before = thread_count();
    let clients = futures_util::future::join_all((0..CLIENTS).map(|i| {
        let tx = tx.clone();
        ConnectOptions::new()
            .event_callback(move |e| {
                let _ = tx.send((i, e.kind));
            })
            .connect(server.url())
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .unwrap();
    let after = thread_count();
    // A thread per client would add 200; other tests of this binary run meanwhile and
    // may add a few of their own (a runtime's workers, a proxy).
    assert!(
        after < before + 40,
        "{CLIENTS} clients with callbacks took the process from {before} to {after} threads"
    );

    futures_util::future::join_all(clients.iter().map(tether::Client::close)).await;
    let mut seen: Vec<Vec<EventKind>> = vec![Vec::new(); CLIENTS];
    let mut closed = 0;
    let deadline = tokio::time::Instant::now() + T;
    while closed < CLIENTS {
        let (i, kind) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{closed} of {CLIENTS} callbacks saw Closed"))
            .unwrap();
        if matches!(kind, EventKind::Closed { .. }) {
            closed += 1;
        }
        seen[i].push(kind);
    }
    for (i, kinds) in seen.iter().enumerate() {
        assert_eq!(
            kinds.first(),
            Some(&current_state(State::Connecting, None)),
            "client {i}: {kinds:?}"
        );
        assert!(
            kinds
                .iter()
                .any(|k| matches!(k, EventKind::Connected { .. })),
            "client {i}: {kinds:?}"
        );
        assert!(
            matches!(kinds.last(), Some(EventKind::Closed { .. })),
            "client {i}: {kinds:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_that_has_not_returned_never_holds_up_the_connection() {
    let server = NatsServer::start().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The callback waits for the test to open a gate, once per event. It holds one runtime
    // worker meanwhile (which is why callbacks must not block); the connection goes on.
    let (open, gate) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(gate);
    let client = ConnectOptions::new()
        .event_callback(move |e| {
            let _ = gate.lock().unwrap().recv();
            let _ = tx.send(e.kind);
        })
        .connect(server.url())
        .await
        .unwrap();
    let mut sub = client.subscribe("cb").await.unwrap();
    for i in 0..100u32 {
        client.publish("cb", i.to_string()).await.unwrap();
        client.flush().await.unwrap();
        let m = tokio::time::timeout(T, sub.next()).await.unwrap().unwrap();
        assert_eq!(&m.payload[..], i.to_string().as_bytes());
    }
    assert!(rx.try_recv().is_err(), "the callback is still waiting");
    open.send(()).unwrap();
    open.send(()).unwrap();
    let first = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert_eq!(first, current_state(State::Connecting, None));
    let second = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert!(matches!(second, EventKind::Connected { .. }), "{second:?}");
    // Free the callback for good so the runtime can shut down.
    drop(open);
    client.close().await;
}

#[tokio::test]
async fn the_server_sees_the_crate_version_in_connect() {
    let server = NatsServer::start().unwrap();
    let client = ConnectOptions::new()
        .name("version-check")
        .connect(server.url())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let connz = server.connz().unwrap();
    let conn = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "version-check")
        .unwrap_or_else(|| panic!("no such connection in {connz}"));
    assert_eq!(conn["lang"], "rust");
    assert_eq!(conn["version"], tether::VERSION);
    assert_eq!(tether::VERSION, env!("CARGO_PKG_VERSION"));
    client.close().await;
}
