//! Tight loss reports (issue 11): what a `Disconnected` flags as unconfirmed is a short
//! window of traffic, and every message really lost lies in it (DESIGN, semantics 2).

mod common;
use common::{next_event, wait_interest, T};

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use tether::{ConnectOptions, EventKind};
use tether_testkit::NatsCluster;

const SUBJECT: &str = "confirm.seq";
/// The rate of the publisher: one message a millisecond.
const PERIOD: Duration = Duration::from_millis(1);
/// DESIGN's bound on what a Disconnected flags at 1,000 msg/s.
const MAX_FLAGGED: u64 = 50;

/// A publisher on node A (all nodes configured, A first) sends sequence numbers at
/// 1,000 msg/s to a subscriber on node B; A is SIGKILLed. The publisher's Disconnected
/// flags at most 50 messages, and the messages the subscriber never got are among them.
///
/// With the old default (`confirm_interval` 1 s) this fails: the Disconnected flags
/// everything since the last confirm PING, up to a second's worth; here, killed half a
/// second after such a PING, about 500 messages (checked by setting
/// `.confirm_interval(Duration::from_secs(1))` on the publisher).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_node_at_1000_msgs_a_second_flags_at_most_50_and_all_that_was_lost() {
    let mut cluster = NatsCluster::start(3).unwrap();
    cluster.wait_routes(T).unwrap();
    let a = cluster.node(0).url();
    let publisher = ConnectOptions::new()
        .no_randomize(true)
        .connect(cluster.urls().join(","))
        .await
        .unwrap();
    let mut events = publisher.events();
    let subscriber = ConnectOptions::new()
        .ignore_discovered_servers(true)
        .connect(cluster.node(1).url())
        .await
        .unwrap();
    let mut sub = subscriber.subscribe(SUBJECT).await.unwrap();
    subscriber.flush().await.unwrap();
    wait_interest(&publisher, &mut sub, SUBJECT).await;
    // Confirms the probes: the next confirm PING is timed from the first number sent.
    publisher.flush().await.unwrap();

    // The subscriber collects sequence numbers until the end marker.
    let collector = tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        while let Some(m) = sub.next().await {
            match std::str::from_utf8(&m.payload).unwrap() {
                "end" => break,
                "probe" => {}
                n => {
                    seen.insert(n.parse::<u64>().unwrap());
                }
            }
        }
        seen
    });

    // The pace is load, not a wait: a tick a millisecond.
    let mut ticker = tokio::time::interval(PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let publish = |seq: u64| {
        let publisher = publisher.clone();
        async move { publisher.publish(SUBJECT, seq.to_string()).await.unwrap() }
    };
    // Steady traffic on A for 1.5 s, then the kill: half a second after the PING the
    // old 1 s cadence would have sent, so with it ~500 messages stand unconfirmed.
    while seq < 1500 {
        ticker.tick().await;
        publish(seq).await;
        seq += 1;
    }
    cluster.kill(0);
    let deadline = tokio::time::Instant::now() + T;
    let flagged = loop {
        tokio::select! {
            _ = ticker.tick() => {
                publish(seq).await;
                seq += 1;
            }
            e = events.next() => {
                if let EventKind::Disconnected { server, unconfirmed_msgs, .. } =
                    e.expect("event stream ended").kind
                {
                    assert_eq!(server, a, "the publisher was on node A");
                    break unconfirmed_msgs;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Disconnected after the kill"
        );
    };
    // A little more: buffered, then written after the reconnect to another node.
    for _ in 0..200 {
        ticker.tick().await;
        publish(seq).await;
        seq += 1;
    }
    let reconnected = next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await;
    let EventKind::Reconnected { server, .. } = reconnected else {
        unreachable!()
    };
    assert_ne!(server, a, "moved to a live node");
    // Everything is written and processed on the new link; the marker comes after it all
    // on the one path to the subscriber.
    publisher.flush().await.unwrap();
    publisher.publish(SUBJECT, "end").await.unwrap();
    let seen = tokio::time::timeout(T, collector)
        .await
        .expect("the end marker never arrived")
        .unwrap();

    let lost: Vec<u64> = (0..seq).filter(|n| !seen.contains(n)).collect();
    eprintln!(
        "published {seq}, received {}, flagged {flagged}, lost {} {lost:?}",
        seen.len(),
        lost.len()
    );
    assert!(
        flagged <= MAX_FLAGGED,
        "{flagged} flagged as unconfirmed at 1,000 msg/s"
    );
    assert!(
        lost.len() as u64 <= flagged,
        "{} lost but only {flagged} flagged: {lost:?}",
        lost.len()
    );
    // The unconfirmed frames are the last ones written on A, consecutive numbers: so is
    // whatever was lost.
    if let (Some(first), Some(last)) = (lost.first(), lost.last()) {
        assert!(last - first < flagged, "lost {lost:?}, flagged {flagged}");
    }
}
