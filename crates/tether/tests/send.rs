//! Every public async call can run in a spawned task: its future is `Send` (a future
//! holding a thread-local RNG across an await once made `connect` impossible to spawn).

use std::time::Duration;

use futures_util::StreamExt;
use tether::{ConnectOptions, HeaderMap, SubscribeOptions};
use tether_testkit::NatsServer;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_public_future_runs_in_a_spawned_task() {
    let server = NatsServer::start().unwrap();
    let url = server.url();
    let task = tokio::spawn(async move {
        let client = tether::connect(url.as_str()).await.unwrap();
        let other = ConnectOptions::new().connect(url.as_str()).await.unwrap();
        let mut sub = client.subscribe("send.a").await.unwrap();
        let mut queued = client.queue_subscribe("send.q", "workers").await.unwrap();
        let _with = client
            .subscribe_with("send.w", SubscribeOptions::default())
            .await
            .unwrap();
        let mut echo = other.subscribe("send.echo").await.unwrap();
        other.flush().await.unwrap();
        let responder = other.clone();
        tokio::spawn(async move {
            while let Some(m) = echo.next().await {
                if let Some(reply) = m.reply {
                    responder.publish(reply, m.payload).await.unwrap();
                }
            }
        });
        let mut headers = HeaderMap::new();
        headers.insert("k", "v");
        client.publish("send.a", "1").await.unwrap();
        client.publish_with_reply("send.a", "r", "2").await.unwrap();
        client
            .publish_with_headers("send.a", &headers, "3")
            .await
            .unwrap();
        client
            .publish_full("send.q", None, None, b"4")
            .await
            .unwrap();
        client.flush().await.unwrap();
        client.rtt().await.unwrap();
        let answer = client.request("send.echo", "ping").await.unwrap();
        let answer2 = client
            .request_with("send.echo", None, b"pong", T)
            .await
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(sub.next().await.unwrap().payload);
        }
        let q = queued.next().await.unwrap();
        client.drain().await.unwrap();
        other.close().await;
        (answer.payload, answer2.payload, got, q.payload)
    });
    let (a, b, got, q) = tokio::time::timeout(T, task).await.unwrap().unwrap();
    assert_eq!(&a[..], b"ping");
    assert_eq!(&b[..], b"pong");
    assert_eq!(got, ["1", "2", "3"].map(bytes::Bytes::from).to_vec());
    assert_eq!(&q[..], b"4");
}
