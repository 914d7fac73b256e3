//! Pull consumers against a real nats-server with -js: fetch, the continuous
//! `messages()` stream, acks, heartbeats, a deleted consumer, a black-holed link.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tether::jetstream::{
    self, AckPolicy, Consumer, ConsumerConfig, JetStreamError, JsMessage, PullError, PullOptions,
    StorageType, StreamConfig,
};
use tether::{ConnectOptions, EventKind};
use tether_testkit::{NatsServer, ServerConfig};

use common::T;

fn js_server() -> NatsServer {
    NatsServer::start_with(ServerConfig {
        jetstream: true,
        ..ServerConfig::default()
    })
    .unwrap()
}

/// A context on `server`, a memory stream `S` on `s.>` holding `n` messages `s.<i>`
/// with payload `i` (1-based, so a message's payload is its stream sequence).
async fn filled(server: &NatsServer, n: u64) -> jetstream::Context {
    let js = tether::connect(server.url()).await.unwrap().jetstream();
    fill(&js, n).await;
    js
}

async fn fill(js: &jetstream::Context, n: u64) {
    js.create_stream(StreamConfig::new("S", ["s.>"]).storage(StorageType::Memory))
        .await
        .unwrap();
    let mut acks = Vec::new();
    for i in 1..=n {
        acks.push(js.publish(format!("s.{i}"), i.to_string()).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// The consumer `cfg` on the stream `S` the tests fill.
async fn durable_on_s(js: &jetstream::Context, cfg: ConsumerConfig) -> Consumer {
    js.create_consumer("S", cfg).await.unwrap()
}

fn seq(m: &JsMessage) -> u64 {
    m.info().expect("a JetStream ack subject").stream_sequence
}

/// Polls the consumer's info until nothing is pending or unacked and the ack floor is
/// `last`.
async fn wait_all_acked(consumer: &Consumer, last: u64) {
    let all_acked = tether_testkit::wait_for_async(T, || {
        let mut c = consumer.clone();
        async move {
            let info = c.info().await.unwrap();
            info.num_ack_pending == 0 && info.num_pending == 0 && info.ack_floor.stream_seq == last
        }
    })
    .await;
    if !all_acked {
        let mut c = consumer.clone();
        let info = c.info().await.unwrap();
        panic!(
            "still unacked or pending: {} unacked, {} pending, ack floor {}",
            info.num_ack_pending, info.num_pending, info.ack_floor.stream_seq
        );
    }
}

/// The next item, which must be a message, within T.
async fn next_message(messages: &mut jetstream::Messages) -> JsMessage {
    tokio::time::timeout(T, messages.next())
        .await
        .expect("an item within T")
        .expect("the stream goes on")
        .expect("a message")
}

/// `err` is an InvalidOption naming `option`.
fn assert_invalid_option(err: &JetStreamError, option: &str) {
    assert!(
        matches!(err, JetStreamError::InvalidOption { option: o, .. } if *o == option),
        "{err}"
    );
}

#[tokio::test]
async fn fetch_returns_a_full_batch_or_what_there_is_at_expiry() {
    let server = js_server();
    let js = filled(&server, 25).await;
    let consumer = durable_on_s(&js, ConsumerConfig::durable("c")).await;

    let batch = consumer.fetch(10, Duration::from_secs(5)).await.unwrap();
    let seqs: Vec<u64> = batch.iter().map(seq).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    assert_eq!(&batch[0].payload[..], b"1");
    for m in &batch {
        m.ack().await.unwrap();
    }

    // More asked for than stored: the rest, once the pull expires.
    let start = Instant::now();
    let rest = consumer
        .fetch(100, Duration::from_millis(800))
        .await
        .unwrap();
    assert_eq!(rest.len(), 15);
    assert!(
        start.elapsed() >= Duration::from_millis(700),
        "waited for the expiry"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    for m in &rest {
        m.double_ack().await.unwrap();
    }

    let none = consumer.fetch(5, Duration::from_millis(300)).await.unwrap();
    assert!(none.is_empty());

    let err = consumer.fetch(0, Duration::from_secs(1)).await.unwrap_err();
    assert_invalid_option(&err, "batch");
    assert!(err.to_string().contains("at least 1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_drains_a_stream_and_every_message_is_acked() {
    const N: u64 = 3000;
    let server = js_server();
    let js = filled(&server, N).await;
    let consumer = durable_on_s(&js, ConsumerConfig::durable("drain")).await;
    let mut messages = consumer
        .messages(PullOptions::new().batch(100))
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < N as usize {
        let item = tokio::time::timeout(T, messages.next())
            .await
            .expect("a message within T")
            .expect("the stream goes on");
        let m = item.unwrap();
        assert_eq!(m.payload, seq(&m).to_string().as_bytes());
        assert!(seen.insert(seq(&m)), "{} delivered twice", seq(&m));
        m.ack().await.unwrap();
    }
    assert_eq!(seen, (1..=N).collect());
    wait_all_acked(&consumer, N).await;
}

#[tokio::test]
async fn nak_redelivers_term_does_not_and_double_ack_is_confirmed() {
    let server = js_server();
    let js = filled(&server, 4).await;
    let consumer = js
        .create_consumer(
            "S",
            ConsumerConfig::durable("acks").ack_wait(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let first = consumer.fetch(4, Duration::from_secs(2)).await.unwrap();
    assert_eq!(first.len(), 4);
    first[0].nak().await.unwrap();
    let nak_at = Instant::now();
    first[1]
        .nak_with_delay(Duration::from_millis(600))
        .await
        .unwrap();
    first[2].term().await.unwrap();
    first[3].in_progress().await.unwrap();
    first[3].double_ack().await.unwrap();

    // 1 comes back at once, 2 after its delay; 3 (terminated) and 4 (acked) never.
    let mut again = Vec::new();
    let deadline = Instant::now() + T;
    while again.len() < 2 {
        assert!(Instant::now() < deadline, "redeliveries: {again:?}");
        for m in consumer.fetch(2, Duration::from_millis(400)).await.unwrap() {
            let info = m.info().unwrap();
            assert_eq!(info.delivered, 2, "a redelivery");
            if info.stream_sequence == 2 {
                assert!(
                    nak_at.elapsed() >= Duration::from_millis(550),
                    "the delay held"
                );
            }
            again.push(info.stream_sequence);
            m.ack().await.unwrap();
        }
    }
    again.sort_unstable();
    assert_eq!(again, vec![1, 2]);
    assert!(consumer
        .fetch(4, Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    wait_all_acked(&consumer, 4).await;
}

#[tokio::test]
async fn max_deliver_stops_redelivery_and_ack_none_needs_no_acks() {
    let server = js_server();
    let js = filled(&server, 1).await;
    let consumer = durable_on_s(&js, ConsumerConfig::durable("twice").max_deliver(2)).await;
    for delivery in 1..=2 {
        let got = consumer.fetch(1, Duration::from_secs(2)).await.unwrap();
        assert_eq!(got.len(), 1, "delivery {delivery}");
        assert_eq!(got[0].info().unwrap().delivered, delivery);
        got[0].nak().await.unwrap();
    }
    assert!(consumer
        .fetch(1, Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());

    let mut none = js
        .create_consumer(
            "S",
            ConsumerConfig::durable("none").ack_policy(AckPolicy::None),
        )
        .await
        .unwrap();
    assert_eq!(
        none.fetch(1, Duration::from_secs(2)).await.unwrap().len(),
        1
    );
    let info = none.info().await.unwrap();
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));
}

#[tokio::test]
async fn an_ephemeral_consumer_filters_several_subjects() {
    let server = js_server();
    let js = tether::connect(server.url()).await.unwrap().jetstream();
    js.create_stream(StreamConfig::new("EV", ["ev.>"]).storage(StorageType::Memory))
        .await
        .unwrap();
    for s in ["ev.a", "ev.b", "ev.c", "ev.a", "ev.b", "ev.c"] {
        js.publish(s, s).await.unwrap().await.unwrap();
    }
    let consumer = js
        .create_consumer(
            "EV",
            ConsumerConfig::ephemeral().filter_subjects(["ev.a", "ev.c"]),
        )
        .await
        .unwrap();
    assert!(!consumer.name().is_empty(), "the server named it");
    let got = consumer
        .fetch(10, Duration::from_millis(500))
        .await
        .unwrap();
    let subjects: Vec<&str> = got.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(subjects, ["ev.a", "ev.c", "ev.a", "ev.c"]);
}

#[tokio::test]
async fn pull_options_are_checked_before_anything_is_sent() {
    let server = js_server();
    let js = filled(&server, 1).await;
    let consumer = durable_on_s(&js, ConsumerConfig::durable("c")).await;
    let err = consumer
        .messages(
            PullOptions::new()
                .expires(Duration::from_secs(10))
                .idle_heartbeat(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert_invalid_option(&err, "idle_heartbeat");
    let text = err.to_string();
    assert!(text.contains("under half") && text.contains("5s"), "{text}");
    let err = consumer
        .messages(PullOptions::new().batch(0))
        .await
        .unwrap_err();
    assert_invalid_option(&err, "batch");
}

#[tokio::test]
async fn a_quiet_consumer_gets_heartbeats_and_no_missed_heartbeat() {
    let server = js_server();
    let js = filled(&server, 0).await;
    let consumer = durable_on_s(&js, ConsumerConfig::durable("quiet")).await;
    // Pulls of 1 s with a 100 ms heartbeat: across several expiries and re-pulls.
    let mut messages = consumer
        .messages(
            PullOptions::new()
                .batch(10)
                .expires(Duration::from_secs(1))
                .idle_heartbeat(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    // Nothing to deliver for 2.5 s: no item at all, in particular no MissedHeartbeat.
    let quiet = tokio::time::timeout(Duration::from_millis(2500), messages.next()).await;
    assert!(quiet.is_err(), "an item on a quiet consumer: {quiet:?}");
    js.publish("s.1", "late").await.unwrap().await.unwrap();
    let m = next_message(&mut messages).await;
    assert_eq!(&m.payload[..], b"late");
}

#[tokio::test]
async fn a_deleted_consumer_ends_the_stream_with_the_reason() {
    let server = js_server();
    let js = filled(&server, 1).await;
    let consumer = durable_on_s(&js, ConsumerConfig::durable("doomed")).await;
    let mut messages = consumer.messages(PullOptions::new()).await.unwrap();
    let m = next_message(&mut messages).await;
    m.ack().await.unwrap();
    js.delete_consumer("S", "doomed").await.unwrap();
    let item = tokio::time::timeout(T, messages.next())
        .await
        .expect("the deletion is reported within T")
        .expect("an item before the end");
    match item {
        Err(PullError::ConsumerDeleted {
            stream, consumer, ..
        }) => assert_eq!((stream.as_str(), consumer.as_str()), ("S", "doomed")),
        other => panic!("expected ConsumerDeleted, got {other:?}"),
    }
    let end = tokio::time::timeout(T, messages.next()).await.unwrap();
    assert!(end.is_none(), "the stream ends: {end:?}");

    // fetch on a consumer that is gone names it.
    let err = consumer.fetch(1, Duration::from_secs(1)).await.unwrap_err();
    assert!(
        matches!(err, JetStreamError::ConsumerNotFound { .. }),
        "{err}"
    );
}

/// The link is black-holed mid-consume: the missed heartbeat sends a PING at once, the
/// dead link is found within pong_timeout (the keepalive alone would take 30 s), the
/// client reconnects, and the same stream goes on until every message is acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_link_mid_consume_is_found_by_the_heartbeat_and_nothing_is_lost() {
    const N: u64 = 1000;
    let server = js_server();
    let proxy = tether_testkit::Proxy::start(server.addr()).unwrap();
    let client = ConnectOptions::new()
        .ping_interval(Duration::from_secs(30))
        .pong_timeout(Duration::from_secs(1))
        .connect(proxy.url())
        .await
        .unwrap();
    let mut events = client.events();
    let js = client.jetstream();
    fill(&js, N).await;
    let consumer = js
        .create_consumer(
            "S",
            ConsumerConfig::durable("bh").ack_wait(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    let hb = Duration::from_millis(250);
    let mut messages = consumer
        .messages(
            PullOptions::new()
                .batch(50)
                .expires(Duration::from_secs(5))
                .idle_heartbeat(hb),
        )
        .await
        .unwrap();

    let mut acked = BTreeSet::new();
    let mut missed = 0;
    let mut holed_at = None;
    while acked.len() < N as usize {
        let item = tokio::time::timeout(T, messages.next())
            .await
            .unwrap_or_else(|_| panic!("stuck at {} acked", acked.len()))
            .expect("the stream never ends on a link fault");
        match item {
            Ok(m) => {
                // An ack written into the black hole is lost: the server redelivers that
                // message after ack_wait, and it is acked again below.
                m.ack().await.unwrap();
                acked.insert(seq(&m));
            }
            Err(PullError::MissedHeartbeat { silent_for, .. }) => {
                assert!(holed_at.is_some(), "a missed heartbeat before the fault");
                assert!(silent_for >= hb * 2, "{silent_for:?}");
                missed += 1;
                if missed == 1 {
                    // The PING went out: the link is found dead within pong_timeout.
                    let kind = common::next_event(&mut events, |e| {
                        matches!(e, EventKind::Disconnected { .. })
                    })
                    .await;
                    let EventKind::Disconnected { reason, .. } = kind else {
                        unreachable!()
                    };
                    let found = holed_at.map(|t: Instant| t.elapsed()).unwrap();
                    assert!(reason.is_stale(), "{reason:?}");
                    assert!(
                        found < hb * 2 + Duration::from_secs(1) + Duration::from_millis(1500),
                        "found dead after {found:?}"
                    );
                    proxy.pass();
                }
            }
            Err(e) => eprintln!("pull item: {e}"),
        }
        if acked.len() >= 300 && holed_at.is_none() {
            proxy.black_hole();
            holed_at = Some(Instant::now());
        }
    }
    assert!(missed >= 1, "the missed heartbeat was reported");
    assert_eq!(acked, (1..=N).collect());
    // The same stream goes on: redeliveries of acks lost in the black hole are acked too.
    let drain = tokio::spawn(async move {
        while let Some(item) = messages.next().await {
            if let Ok(m) = item {
                m.ack().await.unwrap();
            }
        }
    });
    wait_all_acked(&consumer, N).await;
    drain.abort();
}

#[tokio::test]
async fn ack_all_max_ack_pending_and_backoff_are_the_servers() {
    let server = js_server();
    let js = filled(&server, 10).await;

    // Ack policy all: acking the fifth acks the four before it.
    let mut all = js
        .create_consumer(
            "S",
            ConsumerConfig::durable("all").ack_policy(AckPolicy::All),
        )
        .await
        .unwrap();
    let got = all.fetch(5, Duration::from_secs(2)).await.unwrap();
    assert_eq!(got.len(), 5);
    got[4].double_ack().await.unwrap();
    let info = all.info().await.unwrap();
    assert_eq!((info.num_ack_pending, info.ack_floor.stream_seq), (0, 5));

    // max_ack_pending 3: a pull for 10 gets 3 until some are acked.
    let capped = durable_on_s(&js, ConsumerConfig::durable("capped").max_ack_pending(3)).await;
    let got = capped.fetch(10, Duration::from_millis(500)).await.unwrap();
    assert_eq!(got.len(), 3, "the server stops at max_ack_pending");
    for m in &got {
        m.ack().await.unwrap();
    }
    let more = capped.fetch(10, Duration::from_millis(500)).await.unwrap();
    assert_eq!(more.len(), 3, "acks make room for three more");

    // Backoff: unacked, the message comes back after 300 ms, then after 900 ms.
    let backoff = js
        .create_consumer(
            "S",
            ConsumerConfig::durable("backoff")
                .filter_subjects(["s.1"])
                .max_deliver(3)
                .backoff(vec![Duration::from_millis(300), Duration::from_millis(900)]),
        )
        .await
        .unwrap();
    let mut at = Vec::new();
    let deadline = Instant::now() + T;
    while at.len() < 3 {
        assert!(Instant::now() < deadline, "deliveries at {at:?}");
        for m in backoff.fetch(1, Duration::from_millis(200)).await.unwrap() {
            let info = m.info().unwrap();
            assert_eq!(info.stream_sequence, 1);
            assert_eq!(info.delivered, at.len() as u64 + 1);
            at.push(Instant::now());
        }
    }
    assert!(
        at[1] - at[0] >= Duration::from_millis(250),
        "{:?}",
        at[1] - at[0]
    );
    assert!(
        at[2] - at[1] >= Duration::from_millis(800),
        "{:?}",
        at[2] - at[1]
    );
}

/// A fetch on a link that goes dead ends after two missed heartbeats, not at its expiry,
/// and says why.
#[tokio::test]
async fn a_fetch_on_a_dead_link_ends_on_the_missed_heartbeat() {
    let server = js_server();
    let proxy = tether_testkit::Proxy::start(server.addr()).unwrap();
    let js = ConnectOptions::new()
        .ping_interval(Duration::from_secs(30))
        .connect(proxy.url())
        .await
        .unwrap()
        .jetstream();
    fill(&js, 0).await;
    let consumer = durable_on_s(&js, ConsumerConfig::durable("dead")).await;
    proxy.black_hole();
    // Expiry 8 s: heartbeats every 2 s, so the fetch gives up after about 4 s.
    let start = Instant::now();
    let err = consumer
        .fetch(10, Duration::from_secs(8))
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(err, JetStreamError::Pull(PullError::MissedHeartbeat { .. })),
        "{err}"
    );
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(7),
        "ended after {took:?}"
    );
    proxy.pass();
}

/// With max_bytes the pulls are sized in bytes as the server counts them (subject,
/// reply, payload): a long drain never stalls on a count that drifts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_bytes_pulls_drain_everything() {
    const N: u64 = 2000;
    let server = js_server();
    let js = filled(&server, N).await;
    let consumer = durable_on_s(&js, ConsumerConfig::durable("bytes")).await;
    // About ten messages a pull: 200 pulls, each ended by its bytes.
    let mut messages = consumer
        .messages(PullOptions::new().batch(1000).max_bytes(1000))
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < N as usize {
        let item = tokio::time::timeout(T, messages.next())
            .await
            .unwrap_or_else(|_| panic!("stalled after {} messages", seen.len()))
            .expect("the stream goes on");
        match item {
            Ok(m) => {
                seen.insert(seq(&m));
                m.ack().await.unwrap();
            }
            Err(e) => panic!("no item expected on a routine drain: {e}"),
        }
    }
    assert_eq!(seen, (1..=N).collect());
}

/// A message larger than max_bytes can never be pulled: the stream says so and ends
/// instead of pulling forever.
#[tokio::test]
async fn a_message_larger_than_max_bytes_ends_the_stream_saying_so() {
    let server = js_server();
    let js = tether::connect(server.url()).await.unwrap().jetstream();
    js.create_stream(StreamConfig::new("S", ["s.>"]).storage(StorageType::Memory))
        .await
        .unwrap();
    js.publish("s.big", vec![b'x'; 4096])
        .await
        .unwrap()
        .await
        .unwrap();
    let consumer = durable_on_s(&js, ConsumerConfig::durable("small")).await;
    let mut messages = consumer
        .messages(PullOptions::new().max_bytes(1024))
        .await
        .unwrap();
    let description = ends_on_a_409(&mut messages).await;
    assert!(
        description.contains("max_bytes (1024)") && description.contains("raise"),
        "{description}"
    );
}

/// The next item is a 409 status and then the stream ends; returns its description.
async fn ends_on_a_409(messages: &mut jetstream::Messages) -> String {
    let item = tokio::time::timeout(T, messages.next())
        .await
        .unwrap()
        .unwrap();
    let description = match item {
        Err(PullError::Status {
            code: 409,
            description,
            ..
        }) => description,
        other => panic!("expected a 409 item, got {other:?}"),
    };
    let end = tokio::time::timeout(T, messages.next()).await.unwrap();
    assert!(end.is_none(), "the stream ends: {end:?}");
    description
}

/// A pull the consumer's limits refuse forever (max_batch below the batch) is reported
/// once and ends the stream, naming the limit; fetch says the same as an error.
#[tokio::test]
async fn a_batch_over_the_consumers_max_batch_ends_the_stream_naming_it() {
    let server = js_server();
    let js = filled(&server, 5).await;
    let consumer = durable_on_s(&js, ConsumerConfig::durable("capped").max_batch(10)).await;
    let mut messages = consumer
        .messages(PullOptions::new().batch(100))
        .await
        .unwrap();
    let description = ends_on_a_409(&mut messages).await;
    assert!(description.contains("MaxRequestBatch"), "{description}");
    let err = consumer
        .fetch(100, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("MaxRequestBatch"), "{err}");
    // Within the limit, both work.
    assert_eq!(
        consumer
            .fetch(10, Duration::from_secs(1))
            .await
            .unwrap()
            .len(),
        5
    );
}

/// The server restarts while the stream is not being polled: once the client has
/// reconnected, the next poll asks afresh (the old pulls died with the server), so new
/// messages arrive at once, not after a missed heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_between_polls_reissues_the_pulls() {
    let mut server = js_server();
    let client = ConnectOptions::new().connect(server.url()).await.unwrap();
    let mut events = client.events();
    let js = client.jetstream();
    js.create_stream(StreamConfig::new("F", ["f.>"]).storage(StorageType::File))
        .await
        .unwrap();
    let consumer = js
        .create_consumer("F", ConsumerConfig::durable("durable"))
        .await
        .unwrap();
    // Heartbeats of 10 s: a missed one would take 20 s to notice.
    let mut messages = consumer
        .messages(
            PullOptions::new()
                .expires(Duration::from_secs(60))
                .idle_heartbeat(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    js.publish("f.1", "before").await.unwrap().await.unwrap();
    let m = next_message(&mut messages).await;
    assert_eq!(&m.payload[..], b"before");
    m.double_ack().await.unwrap();

    server.stop();
    common::next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await;
    server.restart().unwrap();
    common::next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await;
    js.publish("f.2", "after").await.unwrap().await.unwrap();
    let start = Instant::now();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("the message after the restart arrives without waiting for a heartbeat")
            .unwrap();
        match item {
            Ok(m) => {
                assert_eq!(&m.payload[..], b"after");
                break;
            }
            Err(PullError::MissedHeartbeat { .. }) => panic!("pulls were not re-issued"),
            Err(e) => eprintln!("pull item: {e}"),
        }
    }
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_ack_goes_out_while_the_consumer_polls_nothing_more() {
    let server = js_server();
    // The watcher fills the stream and reads the consumer's state on a connection of its
    // own. The consumer's connection sends no confirm PING for 10 s and its pull's
    // heartbeat is 10 s: nothing is read on it after the messages, so only the bound of
    // the ack hold (an ack waits for the pull's next read at most about a millisecond)
    // can write an ack made while its messages were being read.
    let watcher = filled(&server, 3).await;
    durable_on_s(&watcher, ConsumerConfig::durable("C")).await;
    let js = ConnectOptions::new()
        .confirm_interval(Duration::from_secs(10))
        .connect(server.url())
        .await
        .unwrap()
        .jetstream();
    let consumer = js.consumer("S", "C").await.unwrap();
    let mut messages = consumer
        .messages(PullOptions::new().batch(10))
        .await
        .unwrap();
    let first = next_message(&mut messages).await;
    assert_eq!(seq(&first), 1);
    first.ack().await.unwrap();
    // The stream is neither polled again (its other messages wait in it) nor dropped.
    let acked = tether_testkit::wait_for_async(Duration::from_millis(500), || {
        let watcher = watcher.clone();
        async move {
            let info = watcher.consumer_info("S", "C").await.unwrap();
            info.ack_floor.stream_seq == 1
        }
    })
    .await;
    assert!(acked, "the ack of message 1 never reached the server");
    drop(messages);
}
