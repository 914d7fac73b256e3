//! Core client behaviour against a real nats-server.

mod common;
use common::{block_until_subscriptions, echo_responder};

use std::time::Duration;

use futures_util::StreamExt;
use tether::{ConnectOptions, EventKind, PublishError, RequestError, State};
use tether_testkit::NatsServer;

const T: Duration = Duration::from_secs(5);

async fn next<S: futures_util::Stream + Unpin>(s: &mut S) -> S::Item {
    tokio::time::timeout(T, s.next())
        .await
        .expect("timed out waiting for the next item")
        .expect("stream ended")
}

#[tokio::test]
async fn publish_subscribe_flush_in_order() {
    let server = NatsServer::start().unwrap();
    let client = tether::connect(server.url()).await.unwrap();
    assert_eq!(client.status(), State::Connected);
    let mut sub = client.subscribe("orders.*").await.unwrap();
    for i in 0..100u32 {
        client
            .publish(format!("orders.{i}"), i.to_string())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    for i in 0..100u32 {
        let m = next(&mut sub).await;
        assert_eq!(m.subject.as_str(), format!("orders.{i}"));
        assert_eq!(&m.payload[..], i.to_string().as_bytes());
    }
    let stats = client.statistics();
    assert_eq!(stats.out_msgs, 100);
    assert_eq!(stats.in_msgs, 100);
    client.close().await;
    assert_eq!(client.status(), State::Closed);
}

#[tokio::test]
async fn headers_and_reply_round_trip() {
    let server = NatsServer::start().unwrap();
    let client = tether::connect(server.url()).await.unwrap();
    let mut sub = client.subscribe("h").await.unwrap();
    let mut h = tether::HeaderMap::new();
    h.insert("X-Trace", "abc");
    client
        .publish_full("h", Some("back.here"), Some(&h), b"body")
        .await
        .unwrap();
    let m = next(&mut sub).await;
    assert_eq!(m.headers.as_ref().unwrap().get("X-Trace"), Some("abc"));
    assert_eq!(m.reply.as_deref(), Some("back.here"));
    assert_eq!(&m.payload[..], b"body");
}

#[tokio::test]
async fn request_reply_and_no_responders() {
    let server = NatsServer::start().unwrap();
    let client = tether::connect(server.url()).await.unwrap();
    echo_responder(&client, "echo").await;
    let reply = client.request("echo", "ping").await.unwrap();
    assert_eq!(&reply.payload[..], b"ping");
    let start = std::time::Instant::now();
    let err = client.request("nobody.home", "x").await.unwrap_err();
    assert_eq!(
        err,
        RequestError::NoResponders {
            subject: "nobody.home".into()
        }
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "no responders is immediate"
    );
}

#[tokio::test]
async fn request_timeout_names_subject_and_elapsed() {
    let server = NatsServer::start().unwrap();
    let client = tether::connect(server.url()).await.unwrap();
    let _silent = client.subscribe("silent").await.unwrap();
    let err = client
        .request_with("silent", None, b"x", Duration::from_millis(200))
        .await
        .unwrap_err();
    match err {
        RequestError::Timeout { subject, elapsed } => {
            assert_eq!(subject, "silent");
            assert!(elapsed >= Duration::from_millis(200));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_input_is_refused_before_sending() {
    let server = NatsServer::start().unwrap();
    let client = tether::connect(server.url()).await.unwrap();
    for bad in ["", "a..b", "a b", "a.*", "a.>", ".a", "a."] {
        assert!(
            matches!(
                client.publish(bad, "x").await,
                Err(PublishError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    assert!(client.subscribe("a.>.b").await.is_err());
    assert!(client.queue_subscribe("a", "q w").await.is_err());
    let mut h = tether::HeaderMap::new();
    h.insert("Bad Name", "v");
    assert!(matches!(
        client.publish_with_headers("a", &h, "x").await,
        Err(PublishError::Invalid(_))
    ));
    let big = vec![0u8; client.max_payload() + 1];
    assert!(matches!(
        client.publish("a", &big).await,
        Err(PublishError::MaxPayload { .. })
    ));
    let long = "a".repeat(5000);
    assert!(matches!(
        client.publish(&long, "x").await,
        Err(PublishError::ControlLineTooLong { .. })
    ));
    // Nothing reached the server, and the link is still fine.
    client.flush().await.unwrap();
    assert_eq!(client.statistics().out_msgs, 0);
}

#[tokio::test]
async fn closed_client_refuses_work() {
    let server = NatsServer::start().unwrap();
    let client = tether::connect(server.url()).await.unwrap();
    let report = client.close().await;
    assert_eq!(report.unsent_msgs, 0);
    assert_eq!(client.publish("a", "x").await, Err(PublishError::Closed));
    assert!(client.subscribe("a").await.is_err());
    assert!(client.flush().await.is_err());
    assert_eq!(
        client.request("a", "x").await.unwrap_err(),
        RequestError::Closed
    );
}

#[tokio::test]
async fn events_stream_reports_close() {
    let server = NatsServer::start().unwrap();
    let client = ConnectOptions::new().connect(server.url()).await.unwrap();
    let mut events = client.events();
    client.close().await;
    loop {
        if let EventKind::Closed { unsent_msgs, .. } = next(&mut events).await.kind {
            assert_eq!(unsent_msgs, 0);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_closes_the_connection() {
    let server = NatsServer::start().unwrap();
    let client = ConnectOptions::new()
        .name("dropped-handle")
        .connect(server.url())
        .await
        .unwrap();
    let publisher = tether::connect(server.url()).await.unwrap();
    let mut sub = client.subscribe("x").await.unwrap();
    client.flush().await.unwrap();
    // The server's count of this client's connections (the publisher has no name).
    let conns = || {
        server.connz().unwrap()["connections"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"] == "dropped-handle")
            .count()
    };
    assert_eq!(conns(), 1);
    drop(client);
    // The subscriber keeps the connection alive: it is not closed within a generous
    // window (a close takes a millisecond), and it still delivers.
    assert!(
        !tether_testkit::wait_for(Duration::from_millis(500), || conns() == 0),
        "the connection closed while a subscriber lived"
    );
    publisher.publish("x", "still here").await.unwrap();
    publisher.flush().await.unwrap();
    assert_eq!(&next(&mut sub).await.payload[..], b"still here");
    drop(sub);
    assert!(
        tether_testkit::wait_for(T, || conns() == 0),
        "still {} connections",
        conns()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_after_yields_exactly_n_then_ends() {
    let server = NatsServer::start().unwrap();
    let client = tether::connect(server.url()).await.unwrap();
    let mut sub = client.subscribe("n").await.unwrap();
    for i in 0..5u8 {
        client.publish("n", [i]).await.unwrap();
    }
    client.flush().await.unwrap();
    assert!(tether_testkit::wait_for(T, || sub.pending() == 5));
    sub.unsubscribe_after(3);
    let mut got = Vec::new();
    while let Some(m) = tokio::time::timeout(T, sub.next())
        .await
        .expect("the stream ends")
    {
        got.push(m.payload[0]);
    }
    assert_eq!(got, vec![0, 1, 2]);
}

/// A SUB and an UNSUB go on the wire from the caller's thread while the driver is idle,
/// as a request's PUB does: the server sees them while this thread blocks and the
/// driver task never gets to run. A flush right after a subscribe then waits only for
/// its PONG, not for the driver to be scheduled first.
#[tokio::test(flavor = "current_thread")]
async fn subscribe_and_unsubscribe_are_written_without_the_driver() {
    let server = NatsServer::start().unwrap();
    let client = tether::connect(server.url()).await.unwrap();
    client.flush().await.unwrap();
    let before = server.num_subscriptions().unwrap();
    let mut sub = client.subscribe("direct.sub").await.unwrap();
    assert_eq!(
        block_until_subscriptions(&server, before + 1),
        before + 1,
        "the SUB reached the server with the driver idle"
    );
    sub.unsubscribe();
    assert_eq!(
        block_until_subscriptions(&server, before),
        before,
        "the UNSUB reached the server with the driver idle"
    );
    // The driver runs again: the link is still healthy.
    client.flush().await.unwrap();
}
