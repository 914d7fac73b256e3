//! Event streams and the event callback against real nats-server processes: the first
//! item of every stream, streams taken after close, the callback's task, the bounded
//! queue under an outage storm; and the version the server sees.

mod common;
use common::T;

use futures_util::StreamExt;
use tether::{Client, ConnectOptions, ConnectPolicy, EventKind, Events, State};
use tether_testkit::{CutMode, NatsServer, Proxy};

/// The next event within [`T`]; `None` when the stream ended.
async fn next_or_end(events: &mut Events) -> Option<EventKind> {
    tokio::time::timeout(T, events.next())
        .await
        .expect("timed out waiting for an event or the end of the stream")
        .map(|e| e.kind)
}

/// Reads events into `log` until one matches `pred`, within [`T`].
async fn record_until(
    events: &mut Events,
    log: &mut Vec<EventKind>,
    mut pred: impl FnMut(&EventKind) -> bool,
) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let kind = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("timed out; events so far: {log:#?}"))
            .expect("event stream ended")
            .kind;
        let done = pred(&kind);
        log.push(kind);
        if done {
            return;
        }
    }
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
async fn a_callback_that_waits_holds_one_worker_and_the_connection_goes_on() {
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

/// State changes as the queue sees them (they collapse into each other when it is full).
fn is_state_change(k: &EventKind) -> bool {
    matches!(
        k,
        EventKind::CurrentState { .. }
            | EventKind::Connected { .. }
            | EventKind::Reconnecting { .. }
            | EventKind::Reconnected { .. }
            | EventKind::LameDuck { .. }
    )
}

/// Events that carry a loss: never dropped, their counts merge when the queue is full.
fn is_loss(k: &EventKind) -> bool {
    matches!(
        k,
        EventKind::Disconnected { .. }
            | EventKind::Migrated { .. }
            | EventKind::SlowConsumer { .. }
            | EventKind::SlowConsumerEnded { .. }
            | EventKind::FramesRemoved { .. }
            | EventKind::BufferOverflow { .. }
            | EventKind::Closed { .. }
    )
}

fn collapsed(k: &EventKind) -> u64 {
    match k {
        EventKind::Connected { collapsed, .. }
        | EventKind::Reconnecting { collapsed, .. }
        | EventKind::Reconnected { collapsed, .. } => u64::from(*collapsed),
        _ => 0,
    }
}

fn unconfirmed(kinds: &[EventKind]) -> (u64, u64, usize) {
    kinds.iter().fold((0, 0, 0), |(m, b, n), k| match k {
        EventKind::Disconnected {
            unconfirmed_msgs,
            unconfirmed_bytes,
            ..
        } => (m + unconfirmed_msgs, b + unconfirmed_bytes, n + 1),
        _ => (m, b, n),
    })
}

/// Rounds of outages in the small-queue test.
const ROUNDS: usize = 3;
/// Messages written into a paused link before each outage: unconfirmed, so lost.
const N: u64 = 10;

/// One outage: [`N`] messages written into a paused link, the server killed and the link
/// reset, two failed attempts, then the server back and the client reconnected. Every
/// event read from `all` goes into `log`.
async fn outage(
    round: usize,
    client: &Client,
    server: &mut NatsServer,
    proxy: &Proxy,
    all: &mut Events,
    log: &mut Vec<EventKind>,
) {
    client.flush().await.unwrap();
    proxy.pause();
    let written = client.statistics().out_msgs;
    for i in 0..N {
        client.publish("lost", i.to_string()).await.unwrap();
    }
    // Written into the paused link: no PONG can confirm them.
    assert!(
        tether_testkit::wait_for(T, || client.statistics().out_msgs == written + N),
        "round {round}: the batch was not written"
    );
    server.kill();
    proxy.cut(CutMode::Rst);
    proxy.pass();
    record_until(all, log, |e| matches!(e, EventKind::Disconnected { .. })).await;
    // Attempts fail while the server is down (the proxy accepts, finds no upstream
    // and resets): Reconnecting is a state change, ReconnectFailed is not.
    for _ in 0..2 {
        record_until(all, log, |e| matches!(e, EventKind::ReconnectFailed { .. })).await;
    }
    server.restart().unwrap();
    record_until(all, log, |e| matches!(e, EventKind::Reconnected { .. })).await;
}

/// State changes in `got` collapsed (each queued one stands for itself and `collapsed`
/// others of `log`), and other events were dropped, counted by one `EventsLagged`, the
/// last item. Returns that count.
fn assert_collapsed_and_counted(got: &[EventKind], log: &[EventKind], summary: &str) -> u64 {
    let states: Vec<&EventKind> = got.iter().filter(|k| is_state_change(k)).collect();
    assert!(states.iter().any(|k| collapsed(k) > 0), "{summary}");
    assert_eq!(
        states.iter().map(|k| 1 + collapsed(k)).sum::<u64>(),
        log.iter().filter(|k| is_state_change(k)).count() as u64,
        "{summary}"
    );

    let lagged: Vec<u64> = got
        .iter()
        .filter_map(|k| match k {
            EventKind::EventsLagged { dropped } => Some(*dropped),
            _ => None,
        })
        .collect();
    assert_eq!(lagged.len(), 1, "{summary}");
    assert!(
        matches!(got.last(), Some(EventKind::EventsLagged { .. })),
        "{summary}"
    );
    let others = |kinds: &[EventKind]| {
        kinds
            .iter()
            .filter(|k| {
                !is_state_change(k) && !is_loss(k) && !matches!(k, EventKind::EventsLagged { .. })
            })
            .count() as u64
    };
    assert!(lagged[0] > 0, "{summary}");
    assert_eq!(lagged[0], others(log) - others(got), "{summary}");
    lagged[0]
}

/// No loss was dropped from `got`: every outage's unconfirmed batch in `log` is counted,
/// merged or not, and `Closed` is there once. Returns the unconfirmed messages.
fn assert_every_loss_kept(got: &[EventKind], log: &[EventKind], summary: &str) -> u64 {
    let (got_msgs, got_bytes, got_events) = unconfirmed(got);
    let (all_msgs, all_bytes, all_events) = unconfirmed(log);
    assert_eq!(all_events, ROUNDS, "{summary}");
    assert_eq!(all_msgs, ROUNDS as u64 * N, "{summary}");
    assert!(
        got_events >= 1 && got_events < all_events,
        "merged: {summary}"
    );
    assert_eq!((got_msgs, got_bytes), (all_msgs, all_bytes), "{summary}");
    assert_eq!(
        got.iter()
            .filter(|k| matches!(k, EventKind::Closed { .. }))
            .count(),
        1,
        "{summary}"
    );
    all_msgs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_event_queue_collapses_states_counts_what_it_drops_and_keeps_every_loss() {
    let mut server = NatsServer::start().unwrap();
    let proxy = Proxy::start(server.addr()).unwrap();
    let client = ConnectOptions::new()
        .event_queue(4)
        .connect(proxy.url())
        .await
        .unwrap();
    // `unread` is never read until the end; `all` (the default 1024) is read throughout
    // and records every event, to compare against.
    let mut unread = client.events();
    let mut all = client.events();
    let mut log = Vec::new();
    record_until(&mut all, &mut log, |e| {
        matches!(e, EventKind::CurrentState { .. })
    })
    .await;

    for round in 0..ROUNDS {
        outage(round, &client, &mut server, &proxy, &mut all, &mut log).await;
    }
    client.close().await;
    record_until(&mut all, &mut log, |e| {
        matches!(e, EventKind::Closed { .. })
    })
    .await;
    assert_eq!(next_or_end(&mut all).await, None);

    let mut got = Vec::new();
    while let Some(kind) = next_or_end(&mut unread).await {
        got.push(kind);
    }
    let summary = format!("unread stream: {got:#?}\nevery event: {log:#?}");
    assert!(
        !log.iter()
            .any(|k| matches!(k, EventKind::EventsLagged { .. })),
        "the full-size queue never overflowed: {summary}"
    );

    // The stream still starts with the state it was taken in.
    assert!(
        matches!(
            &got[0],
            EventKind::CurrentState { state: State::Connected, server: Some(s) } if *s == proxy.url()
        ),
        "{summary}"
    );
    let dropped = assert_collapsed_and_counted(&got, &log, &summary);
    assert_eq!(client.statistics().events_lagged, dropped);
    let lost = assert_every_loss_kept(&got, &log, &summary);
    assert_eq!(client.statistics().unconfirmed_reported_msgs, lost);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_that_panics_still_gets_the_next_events() {
    let server = NatsServer::start().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = ConnectOptions::new()
        .event_callback(move |e| {
            // The user's bug: it panics on the first event it sees.
            assert!(
                !matches!(e.kind, EventKind::CurrentState { .. }),
                "callback bug"
            );
            let _ = tx.send(e.kind);
        })
        .connect(server.url())
        .await
        .unwrap();
    let next = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert!(matches!(next, EventKind::Connected { .. }), "{next:?}");
    client.close().await;
    loop {
        let k = tokio::time::timeout(T, rx.recv())
            .await
            .expect("still delivered up to Closed")
            .unwrap();
        if matches!(k, EventKind::Closed { .. }) {
            break;
        }
    }
}
