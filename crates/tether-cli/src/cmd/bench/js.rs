//! `tether bench js-pub` and `tether bench js-consume`: JetStream throughput.
//!
//! Each run creates a memory stream of its own (`TETHER_BENCH_<pid>_<n>`) capturing the
//! bench subject, so the disk is never the limit, and deletes it at the end, also after
//! an error.
//! - `js-pub`: publishes `--msgs` messages with `Context::publish`, keeping at most
//!   `--window` acks outstanding (when the window is full the oldest ack is awaited:
//!   one server answers in order). The clock runs from the first publish to the last
//!   ack; then the stream's message count is checked against what was sent.
//! - `js-consume`: fills the stream the same way (untimed), creates a durable pull
//!   consumer (explicit acks, the server's other defaults), and drains it through
//!   `Consumer::messages` with `--batch` per pull request, acking every message as it
//!   arrives. The clock runs from the `messages()` call (the first pull request) to the
//!   last message received. Pull events that are not messages are counted and logged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use indicatif::ProgressBar;
use tether::jetstream::{
    ConsumerConfig, Context, PubAckFuture, PullOptions, StorageType, StreamConfig,
};
use tether::ConnectOptions;

use super::{Args, Mode, Report, WithContextFn as _, IDLE_TIMEOUT, PROGRESS_STEP};
use crate::error::Context as _;
use crate::{util, CliError};

/// Default --window: publish acks outstanding at once.
pub(crate) const DEFAULT_WINDOW: usize = 256;
/// Default --size of the JetStream modes.
pub(crate) const DEFAULT_SIZE: usize = 128;
/// The durable consumer of js-consume.
const CONSUMER: &str = "tether-bench";

/// The options of the JetStream modes, checked before anything connects.
pub(super) fn check(args: &Args) -> Result<(), CliError> {
    if args.window == 0 {
        return Err(CliError::new(
            "--window must be at least 1 (acks outstanding at once)",
        ));
    }
    if args.batch == 0 {
        return Err(CliError::new(
            "--batch must be at least 1 (messages per pull request)",
        ));
    }
    Ok(())
}

/// A stream name no other run shares.
fn stream_name() -> String {
    static RUN: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "TETHER_BENCH_{}_{nanos}_{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates the run's memory stream on `subject`, runs `body` with its name, and deletes
/// the stream whatever `body` returned.
async fn with_stream<T>(
    js: &Context,
    subject: &str,
    body: impl std::future::Future<Output = Result<T, CliError>>,
    name: &str,
) -> Result<T, CliError> {
    js.create_stream(StreamConfig::new(name, [subject]).storage(StorageType::Memory))
        .await
        .context(format_args!(
            "creating the bench's memory stream {name} on {subject}"
        ))?;
    let result = body.await;
    if let Err(e) = js.delete_stream(name).await {
        tracing::warn!(stream = name, error = %e, "could not delete the bench's stream");
    }
    result
}

/// Publishes `msgs` messages with at most `window` acks outstanding; returns when every
/// ack has arrived. Each ack must name `stream`.
async fn publish_windowed(
    js: &Context,
    stream: &str,
    subject: &str,
    payload: &Bytes,
    msgs: u64,
    window: usize,
    progress: &ProgressBar,
) -> Result<(), CliError> {
    let mut acks: VecDeque<(u64, PubAckFuture)> = VecDeque::with_capacity(window);
    let settle = |(i, ack): (u64, PubAckFuture)| async move {
        let ack = ack
            .await
            .with_context_fn(|| format!("ack of publish #{} of {msgs} to {subject}", i + 1))?;
        if ack.stream == stream {
            Ok(())
        } else {
            Err(CliError::new(format!(
                "publish #{} to {subject} was stored in stream {}, not the bench's {stream}",
                i + 1,
                ack.stream
            )))
        }
    };
    for i in 0..msgs {
        if acks.len() >= window {
            if let Some(oldest) = acks.pop_front() {
                settle(oldest).await?;
            }
        }
        let ack = js
            .publish(subject, payload.clone())
            .await
            .with_context_fn(|| format!("publish #{} of {msgs} to {subject}", i + 1))?;
        acks.push_back((i, ack));
        if i % PROGRESS_STEP == 0 {
            progress.set_position(i);
        }
    }
    while let Some(a) = acks.pop_front() {
        settle(a).await?;
    }
    progress.set_position(msgs);
    Ok(())
}

/// How many messages the stream holds; an error unless it is `msgs`.
async fn check_stored(js: &Context, stream: &str, msgs: u64) -> Result<u64, CliError> {
    let info = js
        .stream_info(stream)
        .await
        .context(format_args!("reading the bench stream {stream}"))?;
    if info.state.messages != msgs {
        return Err(CliError::new(format!(
            "the bench stream {stream} holds {} messages after {msgs} acked publishes",
            info.state.messages
        )));
    }
    Ok(info.state.messages)
}

pub(super) async fn bench_js_pub(
    url: &str,
    subject: &str,
    msgs: u64,
    size: usize,
    window: usize,
    opts: ConnectOptions,
    progress: &ProgressBar,
) -> Result<Report, CliError> {
    let client = util::connect(url, opts).await?;
    let js = client.jetstream().with_max_pending_acks(window);
    let payload = Bytes::from(vec![b'x'; size]);
    let name = stream_name();
    let run = async {
        progress.set_message("publishing");
        let start = Instant::now();
        publish_windowed(&js, &name, subject, &payload, msgs, window, progress).await?;
        let elapsed = start.elapsed();
        let stored = check_stored(&js, &name, msgs).await?;
        Ok((elapsed, stored))
    };
    let result = with_stream(&js, subject, run, &name).await;
    client.close().await;
    let (elapsed, stored) = result?;
    let mut report = Report::new(Mode::JsPub, subject, msgs, size, elapsed);
    report.window = Some(window);
    report.stored = Some(stored);
    Ok(report)
}

/// How js-consume fills and pulls.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConsumeShape {
    /// Publish acks outstanding while filling.
    pub window: usize,
    /// Messages per pull request.
    pub batch: usize,
}

pub(super) async fn bench_js_consume(
    url: &str,
    subject: &str,
    msgs: u64,
    size: usize,
    shape: ConsumeShape,
    opts: ConnectOptions,
    progress: &ProgressBar,
) -> Result<Report, CliError> {
    let client = util::connect(url, opts).await?;
    let js = client.jetstream().with_max_pending_acks(shape.window);
    let payload = Bytes::from(vec![b'x'; size]);
    let name = stream_name();
    let run = async {
        progress.set_message("filling");
        publish_windowed(&js, &name, subject, &payload, msgs, shape.window, progress).await?;
        check_stored(&js, &name, msgs).await?;
        let consumer = js
            .create_consumer(&name, ConsumerConfig::durable(CONSUMER))
            .await
            .context(format_args!("creating the bench consumer on {name}"))?;
        progress.set_position(0);
        progress.set_message("consuming");
        let start = Instant::now();
        let mut messages = consumer
            .messages(PullOptions::new().batch(shape.batch))
            .await
            .context("starting the pull")?;
        let (mut received, mut events) = (0u64, 0u64);
        while received < msgs {
            let item = match tokio::time::timeout(IDLE_TIMEOUT, messages.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => {
                    return Err(CliError::new(format!(
                        "the pull ended after {received} of {msgs} messages"
                    )))
                }
                Err(_) => {
                    return Err(CliError::new(format!(
                        "no message for {IDLE_TIMEOUT:?} after {received} of {msgs}"
                    )))
                }
            };
            match item {
                Ok(msg) => {
                    received += 1;
                    msg.ack()
                        .await
                        .with_context_fn(|| format!("acking message #{received}"))?;
                    if received % PROGRESS_STEP == 0 {
                        progress.set_position(received);
                    }
                }
                Err(event) => {
                    events += 1;
                    tracing::warn!(%event, "pull event");
                }
            }
        }
        let elapsed = start.elapsed();
        Ok((elapsed, received, events))
    };
    let result = with_stream(&js, subject, run, &name).await;
    client.close().await;
    let (elapsed, received, events) = result?;
    let mut report = Report::new(Mode::JsConsume, subject, msgs, size, elapsed);
    report.batch = Some(shape.batch);
    report.ack_policy = Some("explicit");
    report.received = Some(received);
    report.pull_events = Some(events);
    Ok(report)
}
