//! JetStream in a 3-node cluster: a stream's leader killed while a publisher with
//! Msg-Ids keeps going.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::T;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tether::jetstream::{
    self, JetStreamError, PubAck, PublishError, PublishOptions, StorageType, StreamConfig,
};
use tether_testkit::{NatsCluster, ServerConfig};
use tokio::time::Instant;

/// Messages published.
const N: usize = 3000;
/// Acks received before the stream leader is killed.
const KILL_AFTER: usize = 500;
/// How long a publish keeps trying: a stream leader election after a SIGKILL takes a
/// few seconds (the raft election timeout), well under this.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(30);

/// nats-server's err_code for "no suitable peers for placement".
const NO_SUITABLE_PEERS: u16 = 10005;

/// One publish's outcome: its index, the time from buffered to acked, when it was
/// acked, the ack.
type Outcome = (usize, Duration, Instant, Result<PubAck, PublishError>);

/// Where the publisher is connected when the stream leader is killed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Setup {
    /// On the stream leader, which also leads the meta group: the kill drops the
    /// publisher's link (acks in flight are lost and resent with the same Msg-Id after
    /// the reconnect), starts a stream election (no responders until a new leader
    /// subscribes) and a meta election (the stream names API, asked which stream
    /// captures the subject, does not answer until then).
    OnTheLeader,
    /// On a node that survives, the meta leader being another survivor: publishes
    /// routed to the dead leader get no answer (resent after the API timeout), then no
    /// responders until the new leader subscribes.
    OnAFollower,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_stream_leader_killed_under_the_publisher_stores_every_message_exactly_once() {
    failover(Setup::OnTheLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_stream_leader_killed_behind_the_publisher_stores_every_message_exactly_once() {
    failover(Setup::OnAFollower).await;
}

/// Asks the stream's leader to step down in favour of node `to` and waits until it leads.
async fn move_stream_leader(cluster: &NatsCluster, client: &tether::Client, to: usize) {
    let body = format!(
        r#"{{"placement":{{"preferred":"{}"}}}}"#,
        cluster.node(to).name()
    );
    let reply = client
        .request("$JS.API.STREAM.LEADER.STEPDOWN.R3", body)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["success"], true, "{v}");
    let moved = tether_testkit::wait_for_async(T, || async {
        tokio::task::block_in_place(|| cluster.stream_leader("$G", "R3")) == Some(to)
    })
    .await;
    assert!(moved, "node {to} does not lead the stream");
}

async fn failover(setup: Setup) {
    let began = Instant::now();
    if std::env::var_os("JS_CLUSTER_DEBUG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .with_ansi(false)
            .try_init();
    }
    let mut cluster = NatsCluster::start_with(
        3,
        ServerConfig {
            jetstream: true,
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let admin = tether::connect(cluster.urls()).await.unwrap().jetstream();
    create_stream(&admin).await;
    let (leader, on) = place(&cluster, admin.client(), setup).await;

    // All three URLs, the chosen node first (no_randomize).
    let mut urls = cluster.urls();
    urls.swap(0, on);
    let client = tether::ConnectOptions::new()
        .no_randomize(true)
        .connect(urls)
        .await
        .unwrap();
    let connected = client.server_info().map(|i| i.server_name).unwrap();
    assert_eq!(connected, cluster.node(on).name());
    let js = client.jetstream().with_publish_deadline(PUBLISH_DEADLINE);

    let acked = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn(publish_all(js, Arc::clone(&acked)));

    // Kill the leader once some hundreds of acks are in, while the publisher goes on.
    let some_acked = tether_testkit::wait_for_async(T, || {
        let n = acked.load(Ordering::Relaxed);
        async move { n >= KILL_AFTER }
    })
    .await;
    assert!(
        some_acked,
        "only {} acks before the kill",
        acked.load(Ordering::Relaxed)
    );
    let killed_at = Instant::now();
    cluster.kill(leader);
    let acked_at_kill = acked.load(Ordering::Relaxed);
    assert!(
        acked_at_kill < N,
        "the publisher finished before the kill; publish more messages"
    );

    let (outcomes, longest_wait_for_room) = tokio::time::timeout(PUBLISH_DEADLINE + T, publisher)
        .await
        .expect("the publisher hung")
        .unwrap();
    let publish_done = killed_at.elapsed();

    let Settled {
        acks,
        longest,
        pause,
        duplicates,
    } = settle(outcomes, killed_at);

    let new_leader = cluster.wait_stream_leader("$G", "R3", T).unwrap();
    assert_ne!(new_leader, leader);
    eprintln!(
        "R3 failover ({setup:?}): {N} publishes with Msg-Ids, stream leader {} killed after \
         {acked_at_kill} acks; new leader {}; longest pause between two acks {pause:?}; all \
         acked {publish_done:?} after the kill; longest publish latency (buffered to acked) \
         {:?} (m-{}); longest wait for window room {longest_wait_for_room:?}; PubAcks with \
         duplicate=true: {duplicates}",
        cluster.node(leader).name(),
        cluster.node(new_leader).name(),
        longest.0,
        longest.1,
    );
    assert!(
        longest.0 < PUBLISH_DEADLINE,
        "a publish took {:?}, over the deadline",
        longest.0
    );
    assert!(
        duplicates <= tether::jetstream::DEFAULT_MAX_PENDING_ACKS,
        "{duplicates} duplicate acks: more than the window of outstanding acks was resent"
    );

    check_stream(&admin, &acks).await;

    // The killed node comes back and catches up.
    cluster.restart(leader).unwrap();
    wait_caught_up(&admin).await;
    eprintln!("R3 failover ({setup:?}) took {:?}", began.elapsed());
}

/// What the publisher's outcomes show.
struct Settled {
    /// Every ack, by message index (all publishes succeeded).
    acks: BTreeMap<usize, PubAck>,
    /// The longest time from buffered to acked, and that message's index.
    longest: (Duration, usize),
    /// The longest pause between two acks (or the kill and the next ack): the
    /// publisher's view of the outage.
    pause: Duration,
    /// PubAcks with `duplicate: true`.
    duplicates: usize,
}

/// Checks that every publish was acknowledged by `R3`, and sums up the outcomes.
fn settle(outcomes: Vec<Outcome>, killed_at: Instant) -> Settled {
    let mut times: Vec<Instant> = outcomes.iter().map(|o| o.2).collect();
    times.push(killed_at);
    times.sort();
    let pause = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let mut acks: BTreeMap<usize, PubAck> = BTreeMap::new();
    let mut longest = (Duration::ZERO, 0);
    let mut failures = Vec::new();
    for (i, latency, _, r) in outcomes {
        if latency > longest.0 {
            longest = (latency, i);
        }
        match r {
            Ok(ack) => {
                assert_eq!(ack.stream, "R3");
                acks.insert(i, ack);
            }
            Err(e) => failures.push(format!("m-{i}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {N} publishes failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(acks.len(), N);
    let duplicates = acks.values().filter(|a| a.duplicate).count();
    Settled {
        acks,
        longest,
        pause,
        duplicates,
    }
}

/// Waits until both of the stream leader's followers are current and online.
async fn wait_caught_up(admin: &jetstream::Context) {
    let caught_up = tether_testkit::wait_for_async(T, || {
        let admin = admin.clone();
        async move {
            admin.stream_info("R3").await.is_ok_and(|i| {
                i.cluster.is_some_and(|c| {
                    c.replicas.len() == 2 && c.replicas.iter().all(|p| p.current && !p.offline)
                })
            })
        }
    })
    .await;
    assert!(caught_up, "{:?}", admin.stream_info("R3").await);
}

/// Creates the R3 memory stream `R3` on `r3.>` with a 2 min duplicate window.
async fn create_stream(admin: &jetstream::Context) {
    let config = StreamConfig::new("R3", ["r3.>"])
        .storage(StorageType::Memory)
        .replicas(3)
        .duplicate_window(Duration::from_secs(120));
    // The meta leader places replicas only on nodes whose stats it has heard (the first
    // ones go out 250 ms, 500 ms, 1 s... after a node starts), which no monitoring
    // endpoint shows: until then it refuses with "no suitable peers".
    // A fresh meta group may also not answer yet (a timeout, no responders).
    let last = std::sync::Mutex::new(None);
    let created = tether_testkit::wait_for_async(T, || async {
        match admin.create_stream(config.clone()).await {
            Ok(_) => true,
            Err(e)
                if e.api_error()
                    .is_some_and(|a| a.err_code == NO_SUITABLE_PEERS)
                    || matches!(
                        e,
                        JetStreamError::Request(_) | JetStreamError::NotEnabled { .. }
                    ) =>
            {
                eprintln!("creating the R3 stream, retrying: {e}");
                *last.lock().unwrap() = Some(e);
                false
            }
            Err(e) => panic!("creating the R3 stream: {e}"),
        }
    })
    .await;
    assert!(
        created,
        "creating the R3 stream: {:?}",
        last.lock().unwrap()
    );
}

/// Moves the stream's leadership as `setup` needs; returns the stream leader and the
/// node the publisher connects to.
async fn place(cluster: &NatsCluster, client: &tether::Client, setup: Setup) -> (usize, usize) {
    let leader = cluster.wait_stream_leader("$G", "R3", T).unwrap();
    let meta = cluster.meta_leader().unwrap();
    match setup {
        Setup::OnTheLeader => {
            if leader != meta {
                move_stream_leader(cluster, client, meta).await;
            }
            (meta, meta)
        }
        Setup::OnAFollower => {
            let mut leader = leader;
            if leader == meta {
                leader = (meta + 1) % 3;
                move_stream_leader(cluster, client, leader).await;
            }
            (leader, 3 - leader - meta)
        }
    }
}

/// Publishes `N` messages with Msg-Ids, each ack awaited on its own task so the window
/// (the context's 256 outstanding acks) keeps moving; counts acks in `acked`. Returns
/// every outcome and the longest a publish waited for room in the window.
async fn publish_all(js: jetstream::Context, acked: Arc<AtomicUsize>) -> (Vec<Outcome>, Duration) {
    let mut acks = FuturesUnordered::new();
    let mut longest_wait_for_room = Duration::ZERO;
    for i in 0..N {
        let asked = Instant::now();
        let fut = js
            .publish_with(
                "r3.msg",
                format!("payload {i}"),
                PublishOptions::new().msg_id(format!("m-{i}")),
            )
            .await
            .unwrap_or_else(|e| panic!("publish {i} was not even sent: {e}"));
        let sent = Instant::now();
        longest_wait_for_room = longest_wait_for_room.max(sent - asked);
        let acked = Arc::clone(&acked);
        acks.push(tokio::spawn(async move {
            let r = fut.await;
            acked.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            (i, now - sent, now, r)
        }));
    }
    let mut out: Vec<Outcome> = Vec::with_capacity(N);
    while let Some(r) = acks.next().await {
        out.push(r.unwrap());
    }
    (out, longest_wait_for_room)
}

/// The stream holds exactly the `N` messages sent, each Msg-Id once, with its own
/// payload, at the sequence its PubAck named.
async fn check_stream(admin: &jetstream::Context, acks: &BTreeMap<usize, PubAck>) {
    let info = admin.stream_info("R3").await.unwrap();
    assert_eq!(
        (
            info.state.messages,
            info.state.first_seq,
            info.state.last_seq
        ),
        (N as u64, 1, N as u64),
        "{:?}",
        info.state
    );
    let core = admin.client().clone();
    let mut gets = FuturesUnordered::new();
    let mut stored: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for seq in 1..=N as u64 {
        let core = core.clone();
        gets.push(async move { (seq, get_msg(&core, seq).await) });
        if gets.len() >= 64 {
            let (seq, (id, payload)) = gets.next().await.unwrap();
            check_stored(&mut stored, seq, id, &payload);
        }
    }
    while let Some((seq, (id, payload))) = gets.next().await {
        check_stored(&mut stored, seq, id, &payload);
    }
    let sent: BTreeSet<String> = (0..N).map(|i| format!("m-{i}")).collect();
    let once: BTreeSet<String> = stored.keys().cloned().collect();
    assert_eq!(once, sent, "the stored ids are not the sent ones");
    let twice: Vec<_> = stored.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    for (i, ack) in acks {
        assert_eq!(
            stored[&format!("m-{i}")],
            [ack.seq],
            "m-{i}'s PubAck names another sequence than the one storing it"
        );
    }
}

/// `$JS.API.STREAM.MSG.GET.R3` for `seq`: the stored message's Nats-Msg-Id and payload.
async fn get_msg(client: &tether::Client, seq: u64) -> (String, Vec<u8>) {
    let reply = client
        .request("$JS.API.STREAM.MSG.GET.R3", format!(r#"{{"seq":{seq}}}"#))
        .await
        .unwrap_or_else(|e| panic!("getting seq {seq}: {e}"));
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    let msg = &v["message"];
    assert_eq!(msg["seq"], seq, "{v}");
    let b64 = base64::engine::general_purpose::STANDARD;
    let data = b64
        .decode(msg["data"].as_str().unwrap_or_default())
        .unwrap();
    let hdrs = b64
        .decode(
            msg["hdrs"]
                .as_str()
                .unwrap_or_else(|| panic!("no headers: {v}")),
        )
        .unwrap();
    let hdrs = String::from_utf8(hdrs).unwrap();
    let id = hdrs
        .lines()
        .find_map(|l| l.strip_prefix("Nats-Msg-Id:"))
        .unwrap_or_else(|| panic!("no Nats-Msg-Id at seq {seq}: {hdrs:?}"))
        .trim()
        .to_owned();
    (id, data)
}

fn check_stored(stored: &mut BTreeMap<String, Vec<u64>>, seq: u64, id: String, payload: &[u8]) {
    let i = id.strip_prefix("m-").unwrap();
    assert_eq!(payload, format!("payload {i}").as_bytes(), "seq {seq}");
    stored.entry(id).or_default().push(seq);
}

/// A consumer's leader steps down while a pull waits on it: the new leader answers the
/// waiting pull with 409 Leadership Change, the stream reports it and goes on with the
/// messages published after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_leader_change_is_reported_and_the_stream_goes_on() {
    use tether::jetstream::{ConsumerConfig, PullError, PullOptions};

    let cluster = NatsCluster::start_with(
        3,
        ServerConfig {
            jetstream: true,
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let client = tether::connect(cluster.urls()).await.unwrap();
    let js = client.jetstream();
    create_stream(&js).await;
    let publish = |range: std::ops::Range<u64>| {
        let js = js.clone();
        async move {
            for i in range {
                js.publish("r3.lc", i.to_string())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
    };
    publish(1..11).await;
    let consumer = js
        .create_consumer("R3", ConsumerConfig::durable("lc"))
        .await
        .unwrap();
    let mut messages = consumer
        .messages(
            PullOptions::new()
                .batch(20)
                .expires(Duration::from_secs(20))
                .idle_heartbeat(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    let mut next_payload = 1u64;
    // A message must be the next one in order; an error item is returned.
    fn read(
        next: &mut u64,
        item: Option<Result<jetstream::JsMessage, PullError>>,
    ) -> Option<PullError> {
        match item.expect("the stream goes on") {
            Ok(m) => {
                assert_eq!(m.payload, next.to_string().as_bytes());
                *next += 1;
                None
            }
            Err(e) => Some(e),
        }
    }
    while next_payload <= 10 {
        let item = tokio::time::timeout(T, messages.next()).await.unwrap();
        if let Some(e) = read(&mut next_payload, item) {
            panic!("before the stepdown: {e}");
        }
    }

    // The pull now waits on the leader (10 of its 20 unfilled): move the leadership.
    let reply = client
        .request("$JS.API.CONSUMER.LEADER.STEPDOWN.R3.lc", "")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["success"], true, "{v}");
    loop {
        let item = tokio::time::timeout(T, messages.next())
            .await
            .expect("the leader change is reported within T");
        match read(&mut next_payload, item) {
            Some(PullError::LeadershipChange { consumer }) => {
                assert_eq!(consumer, "lc");
                break;
            }
            Some(PullError::MissedHeartbeat { .. }) | None => {}
            Some(e) => panic!("unexpected: {e}"),
        }
    }

    // The stream goes on: what is published next arrives, in order.
    publish(11..21).await;
    while next_payload <= 20 {
        let item = tokio::time::timeout(T, messages.next())
            .await
            .expect("messages after the leader change arrive within T");
        if let Some(e) = read(&mut next_payload, item) {
            eprintln!("after the stepdown: {e}");
        }
    }
}
