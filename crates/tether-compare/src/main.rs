//! `tether-compare`: the same end-to-end workloads with tether and async-nats, against one
//! nats-server, in one run.
//!
//! ```text
//! cargo run --release -p tether-compare -- --rounds 5 [--msgs N] [--size S]
//!     [--requests R] [--server URL] [--json]
//! ```
//!
//! # Workloads
//!
//! - **pub**: one connection publishes `--msgs` messages of `--size` bytes (one payload,
//!   reused) to a subject nobody listens on, then a marker message to a subject the same
//!   connection subscribed to before the run. The run ends when that marker comes back:
//!   the server handles one connection's messages in order, so by then it has processed
//!   every publish. Metric: messages per second (higher is better).
//! - **pubsub**: a subscriber connection counts what a publisher connection sends (both
//!   connections of the same library, with the same options). The run ends when the
//!   subscriber has all `--msgs` messages, or when the marker (the only message with a
//!   reply subject, published last) arrives. Metric: messages received per second
//!   (higher is better). Pending limits are large enough that neither library should drop
//!   (tether `pending_limits(n + 10, 1 GiB)`, async-nats `subscription_capacity(n + 10)`);
//!   any message missing at the end is reported as dropped.
//! - **reqrep**: `--requests` sequential requests with a `--size` payload to an echo
//!   responder. Metrics: p50/p90/p99 latency in µs (lower is better).
//!
//! # Fairness rules
//!
//! - One nats-server for the whole run (started through tether-testkit unless `--server`
//!   is given), and one process running both libraries on the same tokio runtime.
//! - Same subjects (per run unique), same payload bytes, same message counts. The clock
//!   starts after the connections are up and their subscriptions are known to be
//!   registered (each connection round-trips a message through its own subscription
//!   first), and stops on a message received from the server, never on a local flush:
//!   async-nats's `flush` does not wait for the server, so it cannot end a fair run.
//! - The echo responder runs in its own process (this binary, re-invoked with the hidden
//!   `responder` subcommand) and always uses async-nats, so both libraries talk to the
//!   very same responder. Measurement starts only once it answers, and each round starts
//!   with a few unmeasured warm-up requests (async-nats sets up its reply subscription on
//!   the first request).
//! - Each library uses its own default options except where the workload needs
//!   otherwise (pending limits above); options that exist on both sides are set alike
//!   (echo on, no name, no auth). async-nats publishes with a pre-built `Subject` and a
//!   `Bytes` payload, both cloned per message (reference-count bumps, the cheapest way
//!   to call it); tether publishes `&str` and `&[u8]`, which it copies into its buffer.
//! - Every round runs both libraries, each on fresh connections, and the order
//!   alternates (tether first in even rounds, async-nats first in odd ones). Warm-up
//!   rounds (`--warmup`, default 1) are run the same way and discarded. At least 5
//!   measured rounds; each figure is the median over rounds, and the ratio is
//!   tether / async-nats of the medians (for reqrep, of the p50).
//!
//! Not a test: never run it as a timed check in CI.

use std::error::Error;
use std::fmt::Write as _;
use std::future::Future;
use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use serde_json::{json, Value};

type BoxError = Box<dyn Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

/// How long a run may wait for the marker (pub) or between two messages (pubsub).
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Unmeasured requests at the start of each reqrep run.
const REQ_WARMUP: usize = 100;
/// Pause between two runs, so one run's teardown does not overlap the next.
const SETTLE: Duration = Duration::from_millis(200);
/// Subject the echo responder listens on (suffixed with the process id).
const ECHO_SUBJECT: &str = "cmp.echo";

#[derive(Debug, Parser)]
#[command(
    name = "tether-compare",
    about = "Side-by-side benchmark of tether and async-nats against one nats-server.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Measured rounds (each runs both libraries; at least 5).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(5..))]
    rounds: u32,
    /// Unmeasured rounds before the measured ones.
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// Messages per run for pub and pubsub.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    msgs: u64,
    /// Payload size in bytes (all workloads).
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Sequential requests per run for reqrep.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,
    /// Use this server instead of starting one.
    #[arg(long)]
    server: Option<String>,
    /// Workloads to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "pub,pubsub,reqrep"
    )]
    workloads: Vec<Workload>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Echo responder (async-nats), run in its own process by the reqrep workload.
    #[command(hide = true)]
    Responder {
        #[arg(long)]
        server: String,
        #[arg(long)]
        subject: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    Pub,
    Pubsub,
    Reqrep,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Pub => "pub",
            Workload::Pubsub => "pubsub",
            Workload::Reqrep => "reqrep",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lib {
    Tether,
    AsyncNats,
}

impl Lib {
    fn name(self) -> &'static str {
        match self {
            Lib::Tether => "tether",
            Lib::AsyncNats => "async-nats",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Lib::Tether => "tether",
            Lib::AsyncNats => "async_nats",
        }
    }
}

/// What one throughput run measured.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    msgs_per_sec: f64,
    received: u64,
    dropped: u64,
    secs: f64,
    /// False when the run ended on a stall instead of on the last message or the marker.
    complete: bool,
}

/// What one reqrep run measured, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

#[derive(Debug, Clone, Copy)]
enum RunResult {
    Throughput(Throughput),
    Latency(Latency),
}

/// The measured rounds of one workload, per library.
#[derive(Debug)]
struct Series {
    workload: Workload,
    tether: Vec<RunResult>,
    async_nats: Vec<RunResult>,
}

impl Series {
    fn of(&self, lib: Lib) -> &[RunResult] {
        match lib {
            Lib::Tether => &self.tether,
            Lib::AsyncNats => &self.async_nats,
        }
    }

    fn push(&mut self, lib: Lib, r: RunResult) {
        match lib {
            Lib::Tether => self.tether.push(r),
            Lib::AsyncNats => self.async_nats.push(r),
        }
    }

    fn values(&self, lib: Lib, f: impl Fn(&RunResult) -> Option<f64>) -> Vec<f64> {
        self.of(lib).iter().filter_map(f).collect()
    }
}

fn rate(r: &RunResult) -> Option<f64> {
    match r {
        RunResult::Throughput(t) => Some(t.msgs_per_sec),
        RunResult::Latency(_) => None,
    }
}

fn p50(r: &RunResult) -> Option<f64> {
    match r {
        RunResult::Latency(l) => Some(l.p50),
        RunResult::Throughput(_) => None,
    }
}

fn p90(r: &RunResult) -> Option<f64> {
    match r {
        RunResult::Latency(l) => Some(l.p90),
        RunResult::Throughput(_) => None,
    }
}

fn p99(r: &RunResult) -> Option<f64> {
    match r {
        RunResult::Latency(l) => Some(l.p99),
        RunResult::Throughput(_) => None,
    }
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    if s.len() % 2 == 1 {
        s[mid]
    } else {
        f64::midpoint(s[mid - 1], s[mid])
    }
}

/// Nearest-rank percentile of sorted `v` (`q` in 0..=1).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Some(Cmd::Responder { server, subject }) => run_responder(server, subject),
        None => run_compare(&cli),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-compare: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

// ===== responder process =====

fn run_responder(server: &str, subject: &str) -> Res<()> {
    // Exit when the parent goes away (it holds our stdin open while it lives).
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = async_nats::connect(server).await?;
        let mut sub = client.subscribe(subject.to_owned()).await?;
        client.flush().await?;
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                client.publish(reply, msg.payload).await?;
            }
        }
        Ok(())
    })
}

/// The responder child; killed on drop.
#[derive(Debug)]
struct Responder {
    child: Child,
}

impl Responder {
    fn spawn(server: &str, subject: &str) -> Res<Self> {
        let exe = std::env::current_exe()?;
        let child = Command::new(exe)
            .args(["responder", "--server", server, "--subject", subject])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(Self { child })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Retries a request until the responder answers.
async fn wait_responder(url: &str, subject: &str, responder: &mut Responder) -> Res<()> {
    let client = tether::connect(url).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = responder.child.try_wait()? {
            return Err(format!("the responder exited early ({status})").into());
        }
        match client
            .request_with(subject, None, b"ready?", Duration::from_millis(500))
            .await
        {
            Ok(m) if &m.payload[..] == b"ready?" => break,
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(_) => return Err("the responder answered with a wrong payload".into()),
            Err(e) => return Err(format!("the responder never answered: {e}").into()),
        }
    }
    client.close().await;
    Ok(())
}

// ===== the comparison =====

struct Params {
    url: String,
    msgs: u64,
    requests: u64,
    payload: Bytes,
    echo_subject: String,
}

fn run_compare(cli: &Cli) -> Res<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let local = match &cli.server {
        Some(_) => None,
        None => Some(tether_testkit::NatsServer::start()?),
    };
    let url = match (&cli.server, &local) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) => s.url(),
        (None, None) => unreachable!("a local server is started when no --server is given"),
    };
    let server_version = if local.is_some() {
        tether_testkit::nats_server_version()
            .ok()
            .map(|(a, b, c)| format!("{a}.{b}.{c}"))
    } else {
        None
    };

    let mut workloads = cli.workloads.clone();
    workloads.dedup();
    let params = Params {
        url: url.clone(),
        msgs: cli.msgs,
        requests: cli.requests,
        payload: Bytes::from(vec![b'x'; cli.size]),
        echo_subject: format!("{ECHO_SUBJECT}.{}", std::process::id()),
    };

    let mut responder = None;
    if workloads.contains(&Workload::Reqrep) {
        let mut r = Responder::spawn(&url, &params.echo_subject)?;
        rt.block_on(wait_responder(&url, &params.echo_subject, &mut r))?;
        responder = Some(r);
    }

    let total_rounds = cli.warmup + cli.rounds;
    let mut all = Vec::new();
    let started = Instant::now();
    for &w in &workloads {
        let mut series = Series {
            workload: w,
            tether: Vec::new(),
            async_nats: Vec::new(),
        };
        for round in 0..total_rounds {
            // Parity of the measured round index: tether first in measured rounds 1, 3, 5...
            let order = if (round + cli.warmup) % 2 == 0 {
                [Lib::Tether, Lib::AsyncNats]
            } else {
                [Lib::AsyncNats, Lib::Tether]
            };
            let measured = round >= cli.warmup;
            for lib in order {
                let tag = format!("{}.{}.{round}.{}", w.name(), lib.key(), std::process::id());
                let r = rt.block_on(run_one(w, lib, &params, &tag))?;
                if !cli.json {
                    eprintln!(
                        "{:<7} {} {:<10} {}",
                        w.name(),
                        if measured {
                            format!("round {:>2}", round - cli.warmup + 1)
                        } else {
                            "warm-up ".to_owned()
                        },
                        lib.name(),
                        describe(&r)
                    );
                }
                if measured {
                    series.push(lib, r);
                }
                std::thread::sleep(SETTLE);
            }
        }
        all.push(series);
    }
    let elapsed = started.elapsed();
    drop(responder);

    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(cli, &url, server_version, &all, elapsed))?
        );
    } else {
        print!(
            "{}",
            table(cli, &url, server_version.as_deref(), &all, elapsed)
        );
    }
    drop(local);
    Ok(())
}

async fn run_one(w: Workload, lib: Lib, p: &Params, tag: &str) -> Res<RunResult> {
    Ok(match (w, lib) {
        (Workload::Pub, Lib::Tether) => RunResult::Throughput(pub_tether(p, tag).await?),
        (Workload::Pub, Lib::AsyncNats) => RunResult::Throughput(pub_async_nats(p, tag).await?),
        (Workload::Pubsub, Lib::Tether) => RunResult::Throughput(pubsub_tether(p, tag).await?),
        (Workload::Pubsub, Lib::AsyncNats) => {
            RunResult::Throughput(pubsub_async_nats(p, tag).await?)
        }
        (Workload::Reqrep, Lib::Tether) => RunResult::Latency(reqrep_tether(p).await?),
        (Workload::Reqrep, Lib::AsyncNats) => RunResult::Latency(reqrep_async_nats(p).await?),
    })
}

fn describe(r: &RunResult) -> String {
    match r {
        RunResult::Throughput(t) => {
            let mut s = format!(
                "{:>12} msgs/s  ({} msgs in {:.3} s)",
                group(t.msgs_per_sec),
                t.received,
                t.secs
            );
            if t.dropped > 0 {
                let _ = write!(s, "  DROPPED {}", t.dropped);
            }
            if !t.complete {
                s.push_str("  INCOMPLETE (stalled)");
            }
            s
        }
        RunResult::Latency(l) => format!(
            "p50 {:.1} µs  p90 {:.1} µs  p99 {:.1} µs  mean {:.1} µs",
            l.p50, l.p90, l.p99, l.mean
        ),
    }
}

/// Waits for `fut`, failing with `what` after `STALL_TIMEOUT`.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Res<T> {
    tokio::time::timeout(STALL_TIMEOUT, fut)
        .await
        .map_err(|_| format!("timed out waiting for {what}").into())
}

// ----- pub -----

async fn pub_tether(p: &Params, tag: &str) -> Res<Throughput> {
    let client = tether::ConnectOptions::new()
        .connect(p.url.as_str())
        .await?;
    let data = format!("cmp.{tag}.data");
    let marker = format!("cmp.{tag}.marker");
    let mut sub = client.subscribe(&marker).await?;
    // Round-trip once through the marker subscription: the SUB is registered.
    client.publish(&marker, b"sync").await?;
    within("the sync message", sub.next()).await?;

    let payload: &[u8] = &p.payload;
    let start = Instant::now();
    for _ in 0..p.msgs {
        client.publish(&data, payload).await?;
    }
    client.publish(&marker, b"end").await?;
    within("the marker", sub.next())
        .await?
        .ok_or("subscription ended")?;
    let secs = start.elapsed().as_secs_f64();

    drop(sub);
    client.close().await;
    Ok(Throughput {
        msgs_per_sec: p.msgs as f64 / secs,
        received: p.msgs,
        dropped: 0,
        secs,
        complete: true,
    })
}

async fn pub_async_nats(p: &Params, tag: &str) -> Res<Throughput> {
    let client = async_nats::ConnectOptions::new()
        .connect(p.url.as_str())
        .await?;
    let data = async_nats::Subject::from(format!("cmp.{tag}.data"));
    let marker = async_nats::Subject::from(format!("cmp.{tag}.marker"));
    let mut sub = client.subscribe(marker.clone()).await?;
    client
        .publish(marker.clone(), Bytes::from_static(b"sync"))
        .await?;
    within("the sync message", sub.next()).await?;

    let start = Instant::now();
    for _ in 0..p.msgs {
        client.publish(data.clone(), p.payload.clone()).await?;
    }
    client
        .publish(marker.clone(), Bytes::from_static(b"end"))
        .await?;
    within("the marker", sub.next())
        .await?
        .ok_or("subscription ended")?;
    let secs = start.elapsed().as_secs_f64();

    drop(sub);
    client.drain().await?;
    Ok(Throughput {
        msgs_per_sec: p.msgs as f64 / secs,
        received: p.msgs,
        dropped: 0,
        secs,
        complete: true,
    })
}

// ----- pubsub -----

/// How a pubsub subscriber stopped counting.
#[derive(Debug)]
struct Counted {
    received: u64,
    last: Option<Instant>,
    complete: bool,
}

/// Counts data messages (no reply subject) until `n` or the marker (has a reply subject).
async fn count<S, M>(mut sub: S, n: u64, is_marker: impl Fn(&M) -> bool) -> (Counted, S)
where
    S: futures_util::Stream<Item = M> + Unpin,
{
    let mut received = 0;
    let mut last = None;
    let complete = loop {
        match tokio::time::timeout(STALL_TIMEOUT, sub.next()).await {
            Ok(Some(m)) => {
                last = Some(Instant::now());
                if is_marker(&m) {
                    break true;
                }
                received += 1;
                if received == n {
                    break true;
                }
            }
            Ok(None) | Err(_) => break false,
        }
    };
    (
        Counted {
            received,
            last,
            complete,
        },
        sub,
    )
}

fn throughput(n: u64, start: Instant, c: &Counted) -> Throughput {
    let secs = c
        .last
        .map_or(f64::NAN, |t| t.duration_since(start).as_secs_f64());
    Throughput {
        msgs_per_sec: c.received as f64 / secs,
        received: c.received,
        dropped: n - c.received,
        secs,
        complete: c.complete,
    }
}

async fn pubsub_tether(p: &Params, tag: &str) -> Res<Throughput> {
    let opts = tether::ConnectOptions::new().pending_limits(p.msgs as usize + 10, 1 << 30);
    let sub_client = opts.clone().connect(p.url.as_str()).await?;
    let pub_client = opts.connect(p.url.as_str()).await?;
    let subject = format!("cmp.{tag}");
    let sync = format!("cmp.{tag}.sync");
    let sub = sub_client.subscribe(&subject).await?;
    let mut sync_sub = sub_client.subscribe(&sync).await?;
    sub_client.publish(&sync, b"sync").await?;
    within("the sync message", sync_sub.next()).await?;
    drop(sync_sub);

    let n = p.msgs;
    let counter = tokio::spawn(count(sub, n, |m: &tether::Message| m.reply.is_some()));
    let payload: &[u8] = &p.payload;
    let start = Instant::now();
    for _ in 0..n {
        pub_client.publish(&subject, payload).await?;
    }
    pub_client
        .publish_with_reply(&subject, "cmp.marker", b"")
        .await?;
    let (counted, sub) = counter.await?;
    let mut t = throughput(n, start, &counted);
    // The library's own count, for the record (the subscriber may stop before the marker).
    t.dropped = t.dropped.max(sub.dropped());

    drop(sub);
    pub_client.close().await;
    sub_client.close().await;
    Ok(t)
}

async fn pubsub_async_nats(p: &Params, tag: &str) -> Res<Throughput> {
    let opts = || async_nats::ConnectOptions::new().subscription_capacity(p.msgs as usize + 10);
    let sub_client = opts().connect(p.url.as_str()).await?;
    let pub_client = opts().connect(p.url.as_str()).await?;
    let subject = async_nats::Subject::from(format!("cmp.{tag}"));
    let sync = async_nats::Subject::from(format!("cmp.{tag}.sync"));
    let sub = sub_client.subscribe(subject.clone()).await?;
    let mut sync_sub = sub_client.subscribe(sync.clone()).await?;
    sub_client
        .publish(sync.clone(), Bytes::from_static(b"sync"))
        .await?;
    within("the sync message", sync_sub.next()).await?;
    drop(sync_sub);

    let n = p.msgs;
    let counter = tokio::spawn(count(sub, n, |m: &async_nats::Message| m.reply.is_some()));
    let start = Instant::now();
    for _ in 0..n {
        pub_client
            .publish(subject.clone(), p.payload.clone())
            .await?;
    }
    pub_client
        .publish_with_reply(subject.clone(), "cmp.marker", Bytes::new())
        .await?;
    let (counted, sub) = counter.await?;
    let t = throughput(n, start, &counted);

    drop(sub);
    pub_client.drain().await?;
    sub_client.drain().await?;
    Ok(t)
}

// ----- reqrep -----

fn latency(mut us: Vec<f64>) -> Latency {
    us.sort_by(f64::total_cmp);
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    Latency {
        p50: percentile(&us, 0.50),
        p90: percentile(&us, 0.90),
        p99: percentile(&us, 0.99),
        mean,
    }
}

fn check_echo(got: &[u8], sent: &[u8]) -> Res<()> {
    if got == sent {
        Ok(())
    } else {
        Err(format!(
            "the responder echoed {} bytes instead of the {} sent",
            got.len(),
            sent.len()
        )
        .into())
    }
}

async fn reqrep_tether(p: &Params) -> Res<Latency> {
    let client = tether::ConnectOptions::new()
        .connect(p.url.as_str())
        .await?;
    let subject = p.echo_subject.as_str();
    let payload: &[u8] = &p.payload;
    for _ in 0..REQ_WARMUP {
        let m = client.request(subject, payload).await?;
        check_echo(&m.payload, payload)?;
    }
    let mut us = Vec::with_capacity(p.requests as usize);
    for _ in 0..p.requests {
        let t = Instant::now();
        let m = client.request(subject, payload).await?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        check_echo(&m.payload, payload)?;
    }
    client.close().await;
    Ok(latency(us))
}

async fn reqrep_async_nats(p: &Params) -> Res<Latency> {
    let client = async_nats::ConnectOptions::new()
        .connect(p.url.as_str())
        .await?;
    let subject = async_nats::Subject::from(p.echo_subject.as_str());
    for _ in 0..REQ_WARMUP {
        let m = client.request(subject.clone(), p.payload.clone()).await?;
        check_echo(&m.payload, &p.payload)?;
    }
    let mut us = Vec::with_capacity(p.requests as usize);
    for _ in 0..p.requests {
        let t = Instant::now();
        let m = client.request(subject.clone(), p.payload.clone()).await?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        check_echo(&m.payload, &p.payload)?;
    }
    client.drain().await?;
    Ok(latency(us))
}

// ===== output =====

/// `1234567.8` as `1,234,568`.
fn group(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// The rows of the summary: (label, metric extractor, higher is better).
type Metric = fn(&RunResult) -> Option<f64>;

fn rows(w: Workload) -> Vec<(&'static str, Metric, bool)> {
    match w {
        Workload::Pub => vec![("pub          msgs/s", rate, true)],
        Workload::Pubsub => vec![("pubsub       msgs/s", rate, true)],
        Workload::Reqrep => vec![
            ("reqrep p50   µs", p50, false),
            ("reqrep p90   µs", p90, false),
            ("reqrep p99   µs", p99, false),
        ],
    }
}

fn fmt_value(v: f64, higher_better: bool) -> String {
    if higher_better {
        group(v)
    } else {
        format!("{v:.1}")
    }
}

fn drops(s: &Series, lib: Lib) -> (u64, usize) {
    s.of(lib).iter().fold((0, 0), |(d, inc), r| match r {
        RunResult::Throughput(t) => (d + t.dropped, inc + usize::from(!t.complete)),
        RunResult::Latency(_) => (d, inc),
    })
}

fn table(
    cli: &Cli,
    url: &str,
    server_version: Option<&str>,
    all: &[Series],
    elapsed: Duration,
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\ntether vs async-nats — server {url}{}; {} measured rounds (+{} warm-up), \
         alternating order",
        server_version.map_or(String::new(), |v| format!(" (nats-server {v})")),
        cli.rounds,
        cli.warmup
    );
    let _ = writeln!(
        o,
        "pub/pubsub: {} msgs of {} B; reqrep: {} sequential requests of {} B; total {:.1} s\n",
        group(cli.msgs as f64),
        cli.size,
        group(cli.requests as f64),
        cli.size,
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "{:<20} {:>14} {:>14} {:>8}   (median over rounds; ratio = tether/async-nats)",
        "workload", "tether", "async-nats", "ratio"
    );
    for s in all {
        for (label, metric, higher) in rows(s.workload) {
            let t = median(&s.values(Lib::Tether, metric));
            let a = median(&s.values(Lib::AsyncNats, metric));
            let _ = writeln!(
                o,
                "{label:<20} {:>14} {:>14} {:>8.3}   {}",
                fmt_value(t, higher),
                fmt_value(a, higher),
                t / a,
                if higher {
                    "higher is better"
                } else {
                    "lower is better"
                }
            );
        }
    }
    let _ = writeln!(o);
    let mut any = false;
    for s in all {
        if s.workload == Workload::Reqrep {
            continue;
        }
        for lib in [Lib::Tether, Lib::AsyncNats] {
            let (dropped, incomplete) = drops(s, lib);
            if dropped > 0 || incomplete > 0 {
                any = true;
                let _ = writeln!(
                    o,
                    "WARNING: {} {}: {dropped} messages dropped, {incomplete} runs stalled",
                    s.workload.name(),
                    lib.name()
                );
            }
        }
    }
    if !any {
        let _ = writeln!(o, "no client dropped messages");
    }
    let _ = writeln!(o, "\nper round (measured):");
    for s in all {
        for (label, metric, higher) in rows(s.workload) {
            for lib in [Lib::Tether, Lib::AsyncNats] {
                let vals: Vec<String> = s
                    .values(lib, metric)
                    .iter()
                    .map(|&v| fmt_value(v, higher))
                    .collect();
                let _ = writeln!(o, "  {label:<20} {:<10} {}", lib.name(), vals.join("  "));
            }
        }
    }
    o
}

fn to_json(
    cli: &Cli,
    url: &str,
    server_version: Option<String>,
    all: &[Series],
    elapsed: Duration,
) -> Value {
    let mut workloads = serde_json::Map::new();
    for s in all {
        let mut w = serde_json::Map::new();
        for lib in [Lib::Tether, Lib::AsyncNats] {
            let rounds: Vec<Value> = s
                .of(lib)
                .iter()
                .map(|r| match r {
                    RunResult::Throughput(t) => json!({
                        "msgs_per_sec": t.msgs_per_sec,
                        "received": t.received,
                        "dropped": t.dropped,
                        "secs": t.secs,
                        "complete": t.complete,
                    }),
                    RunResult::Latency(l) => json!({
                        "p50_us": l.p50,
                        "p90_us": l.p90,
                        "p99_us": l.p99,
                        "mean_us": l.mean,
                    }),
                })
                .collect();
            let median_obj = if s.workload == Workload::Reqrep {
                json!({
                    "p50_us": median(&s.values(lib, p50)),
                    "p90_us": median(&s.values(lib, p90)),
                    "p99_us": median(&s.values(lib, p99)),
                })
            } else {
                let (dropped, incomplete) = drops(s, lib);
                json!({
                    "msgs_per_sec": median(&s.values(lib, rate)),
                    "dropped_total": dropped,
                    "stalled_runs": incomplete,
                })
            };
            w.insert(
                lib.key().to_owned(),
                json!({ "median": median_obj, "rounds": rounds }),
            );
        }
        let (metric, unit, better): (Metric, &str, &str) = if s.workload == Workload::Reqrep {
            (p50, "p50 latency µs", "lower")
        } else {
            (rate, "msgs/s", "higher")
        };
        let ratio =
            median(&s.values(Lib::Tether, metric)) / median(&s.values(Lib::AsyncNats, metric));
        w.insert("ratio".to_owned(), json!(ratio));
        w.insert("ratio_of".to_owned(), json!(unit));
        w.insert("better".to_owned(), json!(better));
        workloads.insert(s.workload.name().to_owned(), Value::Object(w));
    }
    json!({
        "server": url,
        "nats_server_version": server_version,
        "rounds": cli.rounds,
        "warmup_rounds": cli.warmup,
        "msgs": cli.msgs,
        "size": cli.size,
        "requests": cli.requests,
        "order": "alternating: tether first in even rounds, async-nats first in odd rounds",
        "elapsed_secs": elapsed.as_secs_f64(),
        "workloads": workloads,
    })
}
