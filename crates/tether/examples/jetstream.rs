//! The README's JetStream example: a stream, publishes acknowledged by the stream, a
//! durable pull consumer that acks what it processes. With a nats-server started with
//! `-js` on 127.0.0.1:4222 (or give its URL):
//!
//! ```sh
//! cargo run -p tether --example jetstream [nats://127.0.0.1:4222]
//! ```

use std::time::Duration;

use futures_util::StreamExt;
use tether::jetstream::{ConsumerConfig, PublishOptions, PullOptions, StorageType, StreamConfig};

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1);
    let client = tether::connect(url.as_deref().unwrap_or("nats://127.0.0.1:4222")).await?;
    let js = client.jetstream();

    // A stream captures subjects; creating it again with the same config is no error.
    // Against a server without JetStream this fails with a sentence saying so.
    let config = StreamConfig::new("ORDERS", ["orders.>"])
        .storage(StorageType::Memory)
        .duplicate_window(Duration::from_secs(120));
    js.create_stream(config).await?;

    // A publish returns once buffered; awaiting its PubAckFuture gives the stream's ack.
    // A Msg-Id makes a resend (after a lost link or a leader change) store one copy.
    for i in 0..3 {
        let id = format!("order-{i}");
        let ack = js
            .publish_with(
                "orders.new",
                format!("order {i}"),
                PublishOptions::new().msg_id(id),
            )
            .await?
            .await?;
        println!(
            "stored in {} as #{} (duplicate: {})",
            ack.stream, ack.seq, ack.duplicate
        );
    }

    // A durable pull consumer; its stream of messages keeps pulls topped up, and a
    // missed heartbeat or a leadership change arrives as an Err item, not an end.
    let consumer = js
        .create_consumer("ORDERS", ConsumerConfig::durable("example"))
        .await?;
    let mut messages = consumer.messages(PullOptions::default()).await?;
    let mut done = 0;
    while done < 3 {
        match messages.next().await {
            Some(Ok(msg)) => {
                println!("{}: {}", msg.subject, String::from_utf8_lossy(&msg.payload));
                msg.ack().await?;
                done += 1;
            }
            Some(Err(event)) => eprintln!("pull: {event}"),
            None => return Err("the consumer went away".into()),
        }
    }

    js.delete_stream("ORDERS").await?;
    client.drain().await?;
    Ok(())
}
