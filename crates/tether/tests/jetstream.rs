//! JetStream streams and publish with acks, against a real nats-server with -js.

mod common;

use std::collections::BTreeSet;

use futures_util::StreamExt;
use std::time::{Duration, Instant};

use tether::jetstream::{
    self, DiscardPolicy, ErrorCode, JetStreamError, PublishError, PublishOptions, PurgeOptions,
    RetentionPolicy, StorageType, StreamConfig,
};
use tether_testkit::{NatsServer, ServerConfig};

fn js_server() -> NatsServer {
    NatsServer::start_with(ServerConfig {
        jetstream: true,
        ..ServerConfig::default()
    })
    .unwrap()
}

async fn js(server: &NatsServer) -> jetstream::Context {
    tether::connect(server.url()).await.unwrap().jetstream()
}

fn mem(name: &str, subjects: &[&str]) -> StreamConfig {
    StreamConfig::new(name, subjects.iter().copied()).storage(StorageType::Memory)
}

#[tokio::test]
async fn streams_are_created_read_updated_listed_purged_and_deleted() {
    let server = js_server();
    let js = js(&server).await;
    let cfg = StreamConfig::new("ORDERS", ["orders.>"])
        .retention(RetentionPolicy::Limits)
        .storage(StorageType::File)
        .max_age(Duration::from_secs(3600))
        .max_bytes(1 << 20)
        .max_msgs(1000)
        .max_msg_size(512)
        .duplicate_window(Duration::from_secs(30))
        .discard(DiscardPolicy::New);
    let info = js.create_stream(cfg.clone()).await.unwrap();
    assert_eq!(info.config.name, "ORDERS");
    assert_eq!(info.config.max_age, Duration::from_secs(3600));
    assert_eq!(info.config.max_msg_size, 512);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(30));
    assert_eq!(info.config.discard, DiscardPolicy::New);
    // The same config again is no error.
    js.create_stream(cfg.clone()).await.unwrap();

    js.create_stream(mem("WORK", &["work.*"]).retention(RetentionPolicy::WorkQueue))
        .await
        .unwrap();
    js.create_stream(mem("EVENTS", &["events.>"]).retention(RetentionPolicy::Interest))
        .await
        .unwrap();

    for i in 0..5 {
        js.publish(format!("orders.{i}"), "x")
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let info = js.stream_info("ORDERS").await.unwrap();
    assert_eq!((info.state.messages, info.state.last_seq), (5, 5));

    let updated = js
        .update_stream(cfg.clone().max_msgs(3).discard(DiscardPolicy::Old))
        .await
        .unwrap();
    assert_eq!(updated.config.max_msgs, 3);
    assert_eq!(updated.config.discard, DiscardPolicy::Old);
    assert_eq!(
        updated.state.messages, 3,
        "the update applies max_msgs to what is stored"
    );

    let mut names = js.stream_names(None).await.unwrap();
    names.sort();
    assert_eq!(names, ["EVENTS", "ORDERS", "WORK"]);
    assert_eq!(js.stream_names(Some("work.a")).await.unwrap(), ["WORK"]);
    assert!(js
        .stream_names(Some("nobody.here"))
        .await
        .unwrap()
        .is_empty());
    let list = js.streams().await.unwrap();
    assert_eq!(list.len(), 3);

    js.publish("orders.a", "x").await.unwrap().await.unwrap();
    js.publish("orders.b", "x").await.unwrap().await.unwrap();
    let purged = js
        .purge_stream("ORDERS", PurgeOptions::all().filter("orders.a"))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    let purged = js
        .purge_stream("ORDERS", PurgeOptions::all())
        .await
        .unwrap();
    assert!(purged >= 1);
    assert_eq!(js.stream_info("ORDERS").await.unwrap().state.messages, 0);

    js.delete_stream("ORDERS").await.unwrap();
    match js.stream_info("ORDERS").await {
        Err(JetStreamError::StreamNotFound { stream }) => assert_eq!(stream, "ORDERS"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_typed_error() {
    let server = js_server();
    let js = js(&server).await;
    for bad in ["", "a.b", "a b", "a*", "a>"] {
        let e = js.create_stream(mem(bad, &["x"])).await.unwrap_err();
        assert!(
            matches!(e, JetStreamError::InvalidName { kind: "stream", .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
    }
    js.create_stream(mem("S", &["s.>"])).await.unwrap();
    let e = js
        .create_stream(mem("S", &["s.>"]).max_msgs(10))
        .await
        .unwrap_err();
    match &e {
        JetStreamError::StreamExists { stream, error } => {
            assert_eq!(stream, "S");
            assert_eq!(error.error_code(), ErrorCode::STREAM_NAME_IN_USE);
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("update_stream"), "{e}");
    // Overlapping subjects: the server's own error and code.
    let e = js.create_stream(mem("T", &["s.a"])).await.unwrap_err();
    assert_eq!(
        e.api_error().map(jetstream::ApiError::error_code),
        Some(ErrorCode::SUBJECT_OVERLAP),
        "{e:?}"
    );
    let e = js.stream_info("NOPE").await.unwrap_err();
    assert!(matches!(e, JetStreamError::StreamNotFound { .. }), "{e:?}");
}

#[tokio::test]
async fn a_server_without_jetstream_says_so_for_api_calls_and_publishes() {
    let server = NatsServer::start().unwrap();
    let js = js(&server).await;
    let started = Instant::now();
    let e = js.stream_info("S").await.unwrap_err();
    assert!(matches!(e, JetStreamError::NotEnabled { .. }), "{e:?}");
    assert!(e.to_string().contains("JetStream is not enabled"), "{e}");
    let e = js.publish("a", "x").await.unwrap().await.unwrap_err();
    assert!(
        matches!(
            e,
            PublishError::JetStream(JetStreamError::NotEnabled { .. })
        ),
        "{e:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "at once, not a timeout"
    );
}

#[tokio::test]
async fn publish_acks_dedupe_and_expectations() {
    let server = js_server();
    let js = js(&server).await;
    js.create_stream(mem("S", &["s.>"])).await.unwrap();

    let a = js.publish("s.1", "one").await.unwrap().await.unwrap();
    assert_eq!((a.stream.as_str(), a.seq, a.duplicate), ("S", 1, false));

    let opts = || PublishOptions::new().msg_id("m-1");
    let first = js
        .publish_with("s.1", "two", opts())
        .await
        .unwrap()
        .await
        .unwrap();
    let again = js
        .publish_with("s.1", "two", opts())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(first.seq, 2);
    assert!(again.duplicate, "{again:?}");
    assert_eq!(again.seq, 2, "a duplicate names the first copy's sequence");
    assert_eq!(js.stream_info("S").await.unwrap().state.messages, 2);

    // Expected last sequence: right, then wrong.
    let ok = js
        .publish_with("s.1", "3", PublishOptions::new().expected_last_sequence(2))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ok.seq, 3);
    match js
        .publish_with("s.1", "4", PublishOptions::new().expected_last_sequence(2))
        .await
        .unwrap()
        .await
    {
        Err(PublishError::Refused { error, .. }) => {
            assert_eq!(error.error_code(), ErrorCode::WRONG_LAST_SEQUENCE)
        }
        other => panic!("{other:?}"),
    }
    // Expected last message id, and expected stream.
    let e = js
        .publish_with(
            "s.1",
            "5",
            PublishOptions::new().expected_last_msg_id("other"),
        )
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, PublishError::Refused { error, .. } if error.error_code() == ErrorCode::WRONG_LAST_MSG_ID),
        "{e:?}"
    );
    let e = js
        .publish_with("s.1", "6", PublishOptions::new().expected_stream("OTHER"))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, PublishError::Refused { error, .. } if error.error_code() == ErrorCode::STREAM_MISMATCH),
        "{e:?}"
    );
    js.publish_with("s.1", "7", PublishOptions::new().expected_stream("S"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(js.stream_info("S").await.unwrap().state.last_seq, 4);
}

#[tokio::test]
async fn a_publish_to_a_subject_no_stream_captures_fails_at_once_naming_it() {
    let server = js_server();
    let js = js(&server)
        .await
        .with_publish_deadline(Duration::from_secs(30));
    js.create_stream(mem("S", &["s.>"])).await.unwrap();
    let started = Instant::now();
    let e = js
        .publish("nowhere.x", "x")
        .await
        .unwrap()
        .await
        .unwrap_err();
    match &e {
        PublishError::NoStreamForSubject { subject } => assert_eq!(subject, "nowhere.x"),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("\"nowhere.x\""), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no retries until the deadline: {:?}",
        started.elapsed()
    );
}

/// While a window's acks are outstanding, further publishes wait to be written together
/// (after the next read, or when the publisher waits). A publisher that awaits nothing
/// of its window still gets every frame to the server within milliseconds.
#[tokio::test]
async fn a_window_publish_goes_out_while_the_publisher_awaits_nothing_of_it() {
    let server = js_server();
    // No confirm PING for 10 s either: nothing but the hold's own bound may write them.
    let js = tether::ConnectOptions::new()
        .confirm_interval(Duration::from_secs(10))
        .connect(server.url())
        .await
        .unwrap()
        .jetstream();
    // A silent responder on another connection: no ack comes back, so no read of the
    // publisher's link prompts a write.
    let watcher = tether::connect(server.url()).await.unwrap();
    let mut seen = watcher.subscribe("quiet").await.unwrap();
    watcher.flush().await.unwrap();
    let mut acks = Vec::new();
    let mut next = 0;
    // The first two go out at once; once they reached the watcher the publisher's driver
    // waits with two acks outstanding, and the next publishes are held for it.
    for batch in [2, 18] {
        for i in next..next + batch {
            acks.push(js.publish("quiet", i.to_string()).await.unwrap());
        }
        for i in next..next + batch {
            let msg = tokio::time::timeout(Duration::from_millis(500), seen.next())
                .await
                .unwrap_or_else(|_| panic!("publish {i} never reached the server"))
                .unwrap();
            assert_eq!(msg.payload, i.to_string().as_bytes());
        }
        next += batch;
    }
    // Held until here: a dropped ack future takes back a frame not yet written.
    drop(acks);
}

#[tokio::test]
async fn async_publishing_keeps_a_bounded_window_and_every_ack_arrives() {
    let server = js_server();
    let js = js(&server).await.with_max_pending_acks(2);
    js.create_stream(mem("S", &["s"])).await.unwrap();

    // A silent responder on `hold` keeps acks outstanding until it answers.
    let mut holder = js.client().subscribe("hold").await.unwrap();
    js.client().flush().await.unwrap();
    let first = js.publish("hold", "1").await.unwrap();
    let second = js.publish("hold", "2").await.unwrap();
    // The window is full: a third publish waits until a slot frees.
    let third = js.publish("s", "3");
    tokio::pin!(third);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut third)
            .await
            .is_err(),
        "a third publish waits while two acks are outstanding"
    );
    // The answer to the first frees its slot although nobody awaits its future.
    let req = holder.next().await.unwrap();
    js.client()
        .publish(req.reply.unwrap().as_str(), r#"{"stream":"HOLD","seq":7}"#)
        .await
        .unwrap();
    let third_ack = tokio::time::timeout(common::T, third)
        .await
        .expect("a slot frees when the ack arrives, awaited or not")
        .unwrap();
    drop(second); // giving up on an ack frees its slot too
    let fourth = tokio::time::timeout(common::T, js.publish("s", "4"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.await.unwrap().seq, 7);
    assert_eq!(third_ack.await.unwrap().seq, 1);
    assert_eq!(fourth.await.unwrap().seq, 2);

    // Many through a window of 256, every future kept and awaited only at the end:
    // no deadlock, every sequence once.
    let js = js.clone().with_max_pending_acks(256);
    let mut acks = Vec::new();
    for i in 0..5_000u32 {
        acks.push(
            tokio::time::timeout(common::T, js.publish("s", i.to_string()))
                .await
                .expect("a slot frees as acks arrive")
                .unwrap(),
        );
    }
    let mut seqs = BTreeSet::new();
    for f in acks {
        seqs.insert(f.await.unwrap().seq);
    }
    assert_eq!(seqs.len(), 5_000);
    assert_eq!(seqs.first(), Some(&3));
    assert_eq!(seqs.last(), Some(&5_002));
}
