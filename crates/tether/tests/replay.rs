//! The subscription replay after a restart (DESIGN semantics 4), with 100,000
//! subscriptions: written in bounded chunks, the client usable meanwhile, what it does
//! during the replay ordered after it and sent once, `Reconnected` after it.

mod common;
use common::{next_event, T};

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tether::{Client, ConnectOptions, EventKind, ReplayStats, State, Subscriber};
use tether_testkit::NatsServer;

const N: usize = 100_000;

/// Long enough that the replay is about 6 MB: its write outlasts the test's reaction to
/// the new link by far, even on a loaded machine.
fn subject(i: usize) -> String {
    format!("replay.{i:06}.abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz")
}

/// The server's subscription count (`/subsz`).
fn server_subs(server: &NatsServer) -> u64 {
    server.num_subscriptions().unwrap()
}

/// Poll the server until it counts `want` subscriptions; panics with the last count.
async fn wait_server_subs(server: &NatsServer, want: u64) {
    let deadline = Instant::now() + T;
    loop {
        let n = server_subs(server);
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server has {n} subscriptions, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server and a client with N subscriptions, all registered; returns the server's
/// count before the client subscribed (its own, if any).
async fn setup() -> (NatsServer, Client, Vec<Subscriber>, u64) {
    let server = NatsServer::start().unwrap();
    let client = ConnectOptions::new()
        .fixed_reconnect_wait(Duration::from_millis(10))
        .connect(server.url())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let base = server_subs(&server);
    let mut subs = Vec::with_capacity(N);
    for i in 0..N {
        subs.push(client.subscribe(subject(i)).await.unwrap());
    }
    client.flush().await.unwrap();
    wait_server_subs(&server, base + N as u64).await;
    (server, client, subs, base)
}

/// Kill and restart the server, and return as soon as the client adopted its new link
/// (state Connected): its replay is just starting.
async fn restart(server: &mut NatsServer, client: &Client) {
    let mut state = client.status_watch();
    server.kill();
    tokio::time::timeout(T, state.wait_for(|s| *s == State::Reconnecting))
        .await
        .unwrap()
        .unwrap();
    server.restart().unwrap();
    tokio::time::timeout(T, state.wait_for(|s| *s == State::Connected))
        .await
        .unwrap()
        .unwrap();
}

/// True while the new link's replay is not complete: `last_replay` is still the first
/// link's (which had nothing to replay).
fn replaying(client: &Client) -> bool {
    client
        .statistics()
        .last_replay
        .is_some_and(|r| r.subscriptions == 0)
}

/// Wait for the new link's replay to complete; returns its figures.
async fn replay_done(client: &Client) -> ReplayStats {
    let deadline = Instant::now() + T;
    loop {
        if let Some(r) = client
            .statistics()
            .last_replay
            .filter(|r| r.subscriptions > 0)
        {
            return r;
        }
        assert!(Instant::now() < deadline, "the replay never completed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_unsubscribe_and_publish_during_a_100k_replay_are_ordered_after_it() {
    let (mut server, client, mut subs, base) = setup().await;
    assert_eq!(
        client.statistics().last_replay.map(|r| r.subscriptions),
        Some(0),
        "the first link had nothing to replay"
    );
    let target = N / 2;
    restart(&mut server, &client).await;

    // During the replay: (a) a new subscription, (b) unsubscribe the last replayed
    // subscription (not reached yet) and the first (reached by then, or skipped), (c)
    // publishes to a replayed subject, each call timed.
    // The first call after the new link's adoption: it waits for one chunk's encoding at
    // most, never for the whole replay's (checked against the replay's duration below).
    let first_call = Instant::now();
    let mut fresh = client.subscribe("replay.fresh").await.unwrap();
    let first_call = first_call.elapsed();
    subs[N - 1].unsubscribe();
    subs[0].unsubscribe();
    assert!(
        replaying(&client),
        "the operations overlapped the replay (the statistics show it not complete yet)"
    );
    // Publish until the replay completes: every call but the last returned during it.
    let mut calls = Vec::new();
    let mut during = 0u32;
    while replaying(&client) && during < 1_000 {
        let start = Instant::now();
        client
            .publish(subject(target), during.to_be_bytes().to_vec())
            .await
            .unwrap();
        calls.push(start.elapsed());
        during += 1;
        tokio::task::yield_now().await;
    }
    let replay = replay_done(&client).await;
    // The two unsubscribed before the cursor reached them are not replayed; one already
    // replayed would count too: N - 1 or N - 2.
    assert!(
        replay.subscriptions == N as u64 - 1 || replay.subscriptions == N as u64 - 2,
        "{replay:?}"
    );
    assert!(replay.bytes > 5_000_000, "{replay:?}");

    // Not stalled for the whole replay: a publish waits for a chunk at most. The median
    // call, against the replay's duration (robust to one call descheduled).
    calls.sort();
    let median = calls[calls.len() / 2];
    eprintln!(
        "replay {replay:?}; {} publishes during it, median call {median:?}, max {:?}",
        calls.len(),
        calls.last().unwrap()
    );
    assert!(
        calls.len() >= 2,
        "{} publishes during the replay",
        calls.len()
    );
    assert!(
        median * 4 < replay.duration,
        "median publish {median:?} against a replay of {:?}",
        replay.duration
    );
    assert!(
        first_call * 2 < replay.duration,
        "the first call after the adoption took {first_call:?}, against a replay of {:?}",
        replay.duration
    );

    // (a) N + 1 - 2 on the server, the new subscription once.
    wait_server_subs(&server, base + N as u64 - 1).await;
    // The publishes made during the replay come back to subs[target]: a round trip
    // first, so that all of them are counted before the count is taken.
    client.flush().await.unwrap();
    let in_before = client.statistics().in_msgs;
    client.publish("replay.fresh", "hello").await.unwrap();
    let m = tokio::time::timeout(T, fresh.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"hello");
    client.flush().await.unwrap();
    assert_eq!(
        client.statistics().in_msgs,
        in_before + 1,
        "the new subscription got one copy"
    );

    // (c) every publish made during the replay reached the replayed subscription once,
    // in order: a marker published now comes right after them.
    client.publish(subject(target), "marker").await.unwrap();
    for i in 0..during {
        let m = tokio::time::timeout(T, subs[target].next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], i.to_be_bytes(), "once each, in order");
    }
    let m = tokio::time::timeout(T, subs[target].next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"marker", "no duplicate");

    // (b) nothing arrives for the two unsubscribed: of three publishes only the one to a
    // live subscription is delivered.
    let before = client.statistics().in_msgs;
    client.publish(subject(0), "gone").await.unwrap();
    client.publish(subject(N - 1), "gone").await.unwrap();
    client.publish(subject(1), "live").await.unwrap();
    let m = tokio::time::timeout(T, subs[1].next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"live");
    client.flush().await.unwrap();
    assert_eq!(client.statistics().in_msgs, before + 1);
    assert_eq!(server_subs(&server), base + N as u64 - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnected_comes_after_the_replay_is_written() {
    let (mut server, client, _subs, base) = setup().await;
    let mut events = client.events();
    restart(&mut server, &client).await;
    next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await;
    // The event follows the replay's last chunk: its figures are in already.
    let replay = client.statistics().last_replay.unwrap();
    assert_eq!(replay.subscriptions, N as u64, "{replay:?}");
    assert!(replay.duration > Duration::ZERO);
    eprintln!("replay of {N} subscriptions: {replay:?}");
    wait_server_subs(&server, base + N as u64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_lost_during_its_replay_is_no_reconnect_and_the_outage_goes_on() {
    let (mut server, client, _subs, base) = setup().await;
    let mut events = client.events();
    let first_kill = Instant::now();
    restart(&mut server, &client).await;
    assert!(
        replaying(&client),
        "the replay was over before the second kill"
    );
    let mut state = client.status_watch();
    let second_kill = Instant::now();
    server.kill();
    tokio::time::timeout(T, state.wait_for(|s| *s == State::Reconnecting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(client.statistics().reconnects, 0, "the cut link counted");
    server.restart().unwrap();
    let EventKind::Reconnected { downtime, .. } =
        next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await
    else {
        unreachable!()
    };
    // One reconnect, whose outage began at the first kill: the link cut mid-replay did
    // not end it.
    assert_eq!(client.statistics().reconnects, 1);
    assert!(
        downtime > second_kill - first_kill,
        "downtime {downtime:?} is only the second outage's"
    );
    assert_eq!(replay_done(&client).await.subscriptions, N as u64);
    wait_server_subs(&server, base + N as u64).await;
    // No second Reconnected follows (the stream holds what came after the first).
    client.flush().await.unwrap();
    let more = tokio::time::timeout(Duration::from_millis(200), async {
        loop {
            if let Some(e) = events.next().await {
                if matches!(e.kind, EventKind::Reconnected { .. }) {
                    return e;
                }
            }
        }
    })
    .await;
    assert!(more.is_err(), "a second Reconnected: {more:?}");
}
