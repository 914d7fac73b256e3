//! `tether js consume STREAM CONSUMER [--create] [--count N] [--batch N] [--expires DUR]
//! [--heartbeat DUR]`

use std::fmt::Write as _;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tether::jetstream::{
    Consumer, ConsumerConfig, Context, JetStreamError, JsMessage, PullOptions, DEFAULT_BATCH,
};

use super::{print_json, print_line};
use crate::error::Context as _;
use crate::{util, CliError};

/// Pull messages from a consumer, print each and ack it
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tether js consume ORDERS workers --create
  tether js consume ORDERS workers --count 10 --json
  tether js consume ORDERS workers --batch 50 --expires 10s --heartbeat 2s

Each message is printed as `[#n] subject seq S: payload` (with its headers, and its
delivery count when redelivered), then acked. Pull events that are not messages (a
missed idle heartbeat, a leadership change, a status from the server) are printed as
warnings on stderr and the consume goes on; a deleted consumer ends it with an error.
Runs until --count messages were handled, or until Ctrl-C. Messages already pulled
beyond --count are not acked: the server delivers them again after the consumer's
ack_wait (--batch is lowered to --count so that few are).")]
pub(crate) struct Args {
    /// The stream
    pub stream: String,
    /// The consumer (a durable pull consumer's name)
    pub consumer: String,
    /// Create the consumer if it does not exist: durable, explicit acks, from the
    /// stream's first message
    #[arg(long)]
    pub create: bool,
    /// Exit after this many messages
    #[arg(long, short = 'c')]
    pub count: Option<u64>,
    /// Messages asked for per pull request
    #[arg(long, default_value_t = DEFAULT_BATCH, value_name = "N")]
    pub batch: usize,
    /// How long a pull request waits on the server
    #[arg(long, default_value = "30s", value_parser = util::parse_duration, value_name = "DURATION")]
    pub expires: Duration,
    /// Idle heartbeat of each pull request, under half of --expires (0: none; a dead
    /// link is then found only by the connection's pings)
    #[arg(long, default_value = "10s", value_parser = util::parse_duration, value_name = "DURATION")]
    pub heartbeat: Duration,
    /// One JSON object per message, one per line
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(args: Args, js: &Context) -> Result<(), CliError> {
    let consumer = open(js, &args).await?;
    if args.count == Some(0) {
        return Ok(());
    }
    let batch = args.count.map_or(args.batch, |c| {
        args.batch.min(usize::try_from(c).unwrap_or(usize::MAX))
    });
    let opts = PullOptions::new()
        .batch(batch)
        .expires(args.expires)
        .idle_heartbeat(args.heartbeat);
    let what = format!("consuming {} of stream {}", args.consumer, args.stream);
    let mut messages = consumer.messages(opts).await.map_err(|e| match e {
        JetStreamError::InvalidOption { option, reason } => {
            CliError::new(format!("{}: {reason}", flag(option)))
        }
        e => CliError::new(format!("{what}: {e}")),
    })?;
    tracing::info!(stream = %args.stream, consumer = %args.consumer, batch, "consuming");
    let mut n = 0u64;
    let mut last_event = None;
    while let Some(item) = messages.next().await {
        match item {
            Ok(msg) => {
                n += 1;
                let more = if args.json {
                    print_json(&message_json(n, &msg))?
                } else {
                    print_line(&message_line(n, &msg))?
                };
                if !more {
                    // stdout is gone: this message was not shown, so it is not acked.
                    return Ok(());
                }
                msg.ack()
                    .await
                    .context(format_args!("{what}: acking message #{n}"))?;
                if args.count.is_some_and(|c| n >= c) {
                    return Ok(());
                }
            }
            Err(event) => {
                eprintln!("warning: {event}");
                last_event = Some(event.to_string());
            }
        }
    }
    let why = last_event.unwrap_or_else(|| "the stream of messages ended".to_owned());
    Err(CliError::new(match args.count {
        Some(c) => format!("{what}: ended after {n} of {c} messages: {why}"),
        None => format!("{what}: ended after {n} messages: {why}"),
    }))
}

/// The consumer, created with `--create` when it does not exist.
async fn open(js: &Context, args: &Args) -> Result<Consumer, CliError> {
    match js.consumer(&args.stream, &args.consumer).await {
        Ok(c) => Ok(c),
        Err(JetStreamError::ConsumerNotFound { .. }) if args.create => {
            let c = js
                .create_consumer(&args.stream, ConsumerConfig::durable(args.consumer.clone()))
                .await
                .context(format_args!(
                    "creating consumer {} on stream {}",
                    args.consumer, args.stream
                ))?;
            tracing::info!(consumer = %args.consumer, "consumer created");
            Ok(c)
        }
        Err(e @ JetStreamError::ConsumerNotFound { .. }) => Err(CliError::new(format!(
            "{e}; --create creates a durable one with explicit acks"
        ))),
        Err(e) => Err(CliError::new(format!(
            "opening consumer {} of stream {}: {e}",
            args.consumer, args.stream
        ))),
    }
}

/// The command-line flag of a pull option the library names.
fn flag(option: &str) -> &str {
    match option {
        "idle_heartbeat" => "--heartbeat",
        "expires" => "--expires",
        "batch" => "--batch",
        other => other,
    }
}

fn message_line(n: u64, msg: &JsMessage) -> String {
    let mut s = format!("[#{n}] {}", msg.subject);
    if let Some(info) = msg.info() {
        let _ = write!(s, " seq {}", info.stream_sequence);
        if info.delivered > 1 {
            let _ = write!(s, " (delivery {})", info.delivered);
        }
    }
    let _ = write!(s, ": {}", String::from_utf8_lossy(&msg.payload));
    if let Some(h) = &msg.headers {
        for (k, v) in h.iter() {
            let _ = write!(s, "\n  {k}: {v}");
        }
    }
    s
}

fn message_json(n: u64, msg: &JsMessage) -> serde_json::Value {
    let mut v = json!({
        "n": n,
        "subject": msg.subject.as_str(),
        "payload": String::from_utf8_lossy(&msg.payload),
    });
    if let Some(h) = &msg.headers {
        v["headers"] = h.iter().map(|(k, v)| json!([k, v])).collect();
    }
    if let Some(i) = msg.info() {
        v["stream"] = json!(i.stream);
        v["consumer"] = json!(i.consumer);
        v["stream_seq"] = json!(i.stream_sequence);
        v["consumer_seq"] = json!(i.consumer_sequence);
        v["delivered"] = json!(i.delivered);
        v["pending"] = json!(i.pending);
    }
    v
}
