//! The README's "Using tether as a library" example: connect, subscribe, publish, request
//! and drain. With a nats-server listening on 127.0.0.1:4222 (or give its URL):
//!
//! ```sh
//! cargo run -p tether --example quickstart [nats://127.0.0.1:4222]
//! ```

use futures_util::StreamExt;

#[tokio::main]
async fn main() {
    // Errors read as one line (their Display), not as a Debug dump.
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1);
    let client = tether::connect(url.as_deref().unwrap_or("nats://127.0.0.1:4222")).await?;

    // Subscribe, publish, and flush: Ok once the server has processed the publish.
    let mut sub = client.subscribe("greet.*").await?;
    client.publish("greet.joe", "hello").await?;
    client.flush().await?;
    let msg = sub.next().await.ok_or("subscription ended")?;
    println!("{}: {}", msg.subject, String::from_utf8_lossy(&msg.payload));

    // Request-reply: a responder task answers every request on `time.now`.
    let mut requests = client.subscribe("time.now").await?;
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(req) = requests.next().await {
            if let Some(reply) = req.reply {
                let _ = responder.publish(reply, "twelve o'clock").await;
            }
        }
    });
    let answer = client.request("time.now", "what time is it?").await?;
    println!("time.now: {}", String::from_utf8_lossy(&answer.payload));

    // Drain before exiting: subscriptions yield what they hold and end, publishes are
    // flushed, then the connection closes.
    let report = client.drain().await?;
    println!("drained ({} messages delivered)", report.delivered);
    Ok(())
}
