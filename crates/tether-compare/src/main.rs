//! `tether-compare`: the same end-to-end workloads with tether and async-nats, against one
//! nats-server, in one run.
//!
//! ```text
//! cargo run --release -p tether-compare -- --rounds 5 [--msgs N] [--size S]
//!     [--requests R] [--server URL] [--json] [--workloads pub,pubsub,reqrep,reconnect,memory]
//! ```
//!
//! `pub`, `pubsub` and `reqrep` run by default; `reconnect` and `memory` only when named.
//!
//! # Workloads
//!
//! - **pub**: one connection publishes `--msgs` messages of `--size` bytes (one payload,
//!   reused) to a subject nobody listens on, then a marker message to a subject the same
//!   connection subscribed to before the run. The run ends when that marker comes back:
//!   the server handles one connection's messages in order, so by then it has processed
//!   every publish. Metric: messages per second (higher is better).
//!
//!   With the server this binary started, pub and pubsub also report the nats-server's
//!   CPU time over the measured window as a share of one core (utime + stime from
//!   `/proc/PID/stat`). nats-server reads and processes each connection on one
//!   goroutine, so near 100 % the server is the limit, not the client: then the ratio
//!   says how close the other library comes to that ceiling, and no client can raise it.
//! - **pubsub**: a subscriber connection counts what a publisher connection sends (both
//!   connections of the same library, with the same options). The run ends when the
//!   subscriber has all `--msgs` messages, or when the marker (the only message with a
//!   reply subject, published last) arrives. Metric: messages received per second
//!   (higher is better). Pending limits are large enough that neither library should drop
//!   (tether `pending_limits(n + 10, 1 GiB)`, async-nats `subscription_capacity(n + 10)`);
//!   any message missing at the end is reported as dropped.
//! - **reqrep**: `--requests` sequential requests with a `--size` payload to an echo
//!   responder. Metrics: p50/p90/p99 latency in µs (lower is better).
//! - **reconnect** (opt-in): one nats-server of its own (started through tether-testkit
//!   even with `--server`, since it is killed). Per library, one connection with default
//!   options, then 10 times: SIGKILL the server, wait 1 s (the injected fault), restart it
//!   on the same port; the clock starts when the restart returns (the server accepts
//!   connections again) and stops when the client reports its reconnect (tether
//!   `Event::Reconnected` from `events()`, async-nats `Event::Connected` from
//!   `event_callback`, both timestamped on arrival and forwarded through a channel; the
//!   callback is the only option set on async-nats). Then the same with a fixed 100 ms
//!   reconnect wait on both sides, and a third series with default options again but
//!   the server down 1.0 s, 1.1 s, ... 1.9 s. The 1 s series alone can mislead: a
//!   deterministic schedule such as async-nats's (0, 2, 4, 8, ... ms, so attempts about
//!   1,022 ms and 2,046 ms into the outage) is either just in time for a server that
//!   restarts in under 20 ms or about 1 s late, so the varied series shows what an
//!   outage of unknown length costs. The order alternates (default wait: tether first;
//!   the others: async-nats first). Metrics: p50/p90/max in ms over the 10 restarts
//!   (lower is better); `--rounds` and `--warmup` do not apply.
//! - **memory** (opt-in): VmHWM growth, one child process per measurement (this binary
//!   re-invoked with the hidden `memory-child` subcommand), since both libraries in one
//!   process would share the high-water mark. The child connects with default options,
//!   publishes 4 MiB of 1 KiB messages and flushes (warm-up), reads VmHWM (the baseline)
//!   and prints `READY`; the parent kills the server (its own, as for reconnect) and
//!   writes `GO`; the child waits for the library's Disconnected event, publishes 50 MiB of
//!   1 KiB messages (one payload, reused) with the default buffer, and reads VmHWM again.
//!   tether publishes with `try_publish` (never waits); async-nats with `publish` under a
//!   50 ms timeout, a timeout counting as refused. Once async-nats has refused, its
//!   channel is full and nothing drains it while the server is down, so further
//!   publishes are polled once (`now_or_never`, still counted) and only every 1024th
//!   refusal waits the full 50 ms again (else the run would take about 40 minutes).
//!   `--rounds` rounds, alternating order; metric: VmHWM growth in MiB (lower is
//!   better), plus accepted and refused counts, and for tether its own refused counters
//!   and `BufferOverflow` events, which must account for every refused message.
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
use std::io::{BufRead as _, Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{FutureExt as _, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

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
    /// One memory measurement of one library, run in its own process by the memory
    /// workload (prints `READY`, waits for `GO` on stdin, prints one JSON line).
    #[command(hide = true)]
    MemoryChild {
        #[arg(long, value_enum)]
        client: Lib,
        #[arg(long)]
        server: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    Pub,
    Pubsub,
    Reqrep,
    Reconnect,
    Memory,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Pub => "pub",
            Workload::Pubsub => "pubsub",
            Workload::Reqrep => "reqrep",
            Workload::Reconnect => "reconnect",
            Workload::Memory => "memory",
        }
    }

    /// Whether the workload kills the server (and so runs against its own).
    fn kills_server(self) -> bool {
        matches!(self, Workload::Reconnect | Workload::Memory)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
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
    /// The nats-server's CPU time over the measured window, as a share of one core
    /// (known only for the server this binary started).
    server_cpu: Option<f64>,
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

fn server_cpu(r: &RunResult) -> Option<f64> {
    match r {
        RunResult::Throughput(t) => t.server_cpu,
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
        Some(Cmd::MemoryChild { client, server }) => run_memory_child(*client, server),
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
    /// The local nats-server's process id, for its CPU time.
    server_pid: Option<u32>,
}

/// CPU time of the nats-server process (all threads), from `/proc/PID/stat`.
struct ServerCpu {
    pid: Option<u32>,
    ticks: Option<u64>,
}

/// Clock ticks per second of `/proc/PID/stat` (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

impl ServerCpu {
    fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            ticks: pid.and_then(cpu_ticks),
        }
    }

    /// CPU seconds since `start` over `secs` of wall time.
    fn share(&self, secs: f64) -> Option<f64> {
        let now = cpu_ticks(self.pid?)?;
        Some(now.saturating_sub(self.ticks?) as f64 / USER_HZ / secs)
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses: state is field 3, utime 14
    // and stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[allow(clippy::too_many_lines)] // issue 12 step 6 splits it; remove then
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
    let (faults, workloads): (Vec<Workload>, Vec<Workload>) =
        workloads.into_iter().partition(|w| w.kills_server());
    let params = Params {
        url: url.clone(),
        msgs: cli.msgs,
        requests: cli.requests,
        payload: Bytes::from(vec![b'x'; cli.size]),
        echo_subject: format!("{ECHO_SUBJECT}.{}", std::process::id()),
        server_pid: local.as_ref().and_then(tether_testkit::NatsServer::pid),
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
    drop(responder);

    let mut faulty = Faulty::default();
    if !faults.is_empty() {
        // The fault workloads kill their server: never the shared one, nor a given one.
        let mut server = tether_testkit::NatsServer::start()?;
        faulty.url = server.url();
        if faults.contains(&Workload::Reconnect) {
            faulty.reconnect = run_reconnect(&rt, &mut server, cli.json)?;
        }
        if faults.contains(&Workload::Memory) {
            faulty.memory = run_memory(&mut server, cli.rounds, cli.json)?;
        }
    }
    let elapsed = started.elapsed();

    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(
                cli,
                &url,
                server_version,
                &all,
                &faulty,
                elapsed
            ))?
        );
    } else {
        print!(
            "{}",
            table(cli, &url, server_version.as_deref(), &all, &faulty, elapsed)
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
        (Workload::Reconnect | Workload::Memory, _) => {
            return Err(format!("{} is not a throughput or latency workload", w.name()).into());
        }
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
            if let Some(c) = t.server_cpu {
                let _ = write!(s, "  nats-server CPU {:.0} %", c * 100.0);
            }
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
    let cpu = ServerCpu::start(p.server_pid);
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
        server_cpu: cpu.share(secs),
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

    let cpu = ServerCpu::start(p.server_pid);
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
        server_cpu: cpu.share(secs),
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
        server_cpu: None,
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
    let cpu = ServerCpu::start(p.server_pid);
    let start = Instant::now();
    for _ in 0..n {
        pub_client.publish(&subject, payload).await?;
    }
    pub_client
        .publish_with_reply(&subject, "cmp.marker", b"")
        .await?;
    let (counted, sub) = counter.await?;
    let mut t = throughput(n, start, &counted);
    t.server_cpu = cpu.share(t.secs);
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
    let cpu = ServerCpu::start(p.server_pid);
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
    let mut t = throughput(n, start, &counted);
    t.server_cpu = cpu.share(t.secs);

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

// ===== reconnect =====

/// Server restarts per library and reconnect wait.
const RESTARTS: usize = 10;
/// How long the server stays down each time: the injected fault.
const DOWNTIME: Duration = Duration::from_secs(1);
/// The varied series adds this to [`DOWNTIME`] at each restart (1.0 s, 1.1 s, ... 1.9 s).
const DOWNTIME_STEP: Duration = Duration::from_millis(100);
/// The reconnect wait of the second reconnect series, on both sides.
const FIXED_WAIT: Duration = Duration::from_millis(100);

/// The reconnect wait a reconnect series runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReconnectWait {
    /// Each library's default backoff.
    Default,
    /// [`FIXED_WAIT`] before every attempt.
    Fixed,
    /// Each library's default backoff, with the server down [`DOWNTIME`] plus
    /// [`DOWNTIME_STEP`] per restart: no fixed retry schedule lines up with every outage.
    DefaultVaried,
}

impl ReconnectWait {
    fn name(self) -> &'static str {
        match self {
            ReconnectWait::Default => "default wait",
            ReconnectWait::Fixed => "100 ms wait",
            ReconnectWait::DefaultVaried => "default, 1-1.9 s",
        }
    }

    fn key(self) -> &'static str {
        match self {
            ReconnectWait::Default => "default_wait",
            ReconnectWait::Fixed => "fixed_100ms_wait",
            ReconnectWait::DefaultVaried => "default_wait_varied_downtime",
        }
    }

    /// How long the server stays down before restart `i` (from 0).
    fn downtime(self, i: usize) -> Duration {
        match self {
            ReconnectWait::Default | ReconnectWait::Fixed => DOWNTIME,
            ReconnectWait::DefaultVaried => DOWNTIME + DOWNTIME_STEP * i as u32,
        }
    }
}

/// Milliseconds from "the server accepts again" to the client's reconnected event, per
/// restart, per library.
#[derive(Debug)]
struct ReconnectSeries {
    wait: ReconnectWait,
    tether: Vec<f64>,
    async_nats: Vec<f64>,
    /// Per restart, ms from the client's disconnected event to its reconnected event (the
    /// outage as the client saw it; about `DOWNTIME` plus the restart plus the figure above).
    tether_outage: Vec<f64>,
    async_nats_outage: Vec<f64>,
}

impl ReconnectSeries {
    fn of(&self, lib: Lib) -> &[f64] {
        match lib {
            Lib::Tether => &self.tether,
            Lib::AsyncNats => &self.async_nats,
        }
    }

    fn outage_of(&self, lib: Lib) -> &[f64] {
        match lib {
            Lib::Tether => &self.tether_outage,
            Lib::AsyncNats => &self.async_nats_outage,
        }
    }

    /// (p50, p90, max) in ms.
    fn stats(&self, lib: Lib) -> (f64, f64, f64) {
        let mut v = self.of(lib).to_vec();
        v.sort_by(f64::total_cmp);
        (
            percentile(&v, 0.50),
            percentile(&v, 0.90),
            v.last().copied().unwrap_or(f64::NAN),
        )
    }
}

/// A link change a client reported, as the reconnect workload sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Down,
    Up,
}

/// A client of either library, kept alive through its reconnects.
#[derive(Debug)]
enum AnyClient {
    Tether(tether::Client),
    AsyncNats(async_nats::Client),
}

impl AnyClient {
    async fn close(self) -> Res<()> {
        match self {
            AnyClient::Tether(c) => {
                c.close().await;
            }
            AnyClient::AsyncNats(c) => c.drain().await?,
        }
        Ok(())
    }
}

type LinkRx = mpsc::UnboundedReceiver<(Instant, Link)>;

/// Connects `lib` and forwards its disconnect and (re)connect events, each timestamped
/// when it reaches us.
async fn connect_watched(lib: Lib, wait: ReconnectWait, url: &str) -> Res<(AnyClient, LinkRx)> {
    let (tx, rx) = mpsc::unbounded_channel();
    match lib {
        Lib::Tether => {
            let client = match wait {
                ReconnectWait::Default | ReconnectWait::DefaultVaried => {
                    tether::connect(url).await?
                }
                ReconnectWait::Fixed => {
                    tether::ConnectOptions::new()
                        .reconnect_delay(|_, _, _| FIXED_WAIT)
                        .connect(url)
                        .await?
                }
            };
            let mut events = client.events();
            tokio::spawn(async move {
                while let Some(e) = events.next().await {
                    let link = match e.kind {
                        tether::EventKind::Disconnected { .. } => Link::Down,
                        tether::EventKind::Reconnected { .. } => Link::Up,
                        _ => continue,
                    };
                    if tx.send((Instant::now(), link)).is_err() {
                        break;
                    }
                }
            });
            Ok((AnyClient::Tether(client), rx))
        }
        Lib::AsyncNats => {
            let opts = match wait {
                ReconnectWait::Default | ReconnectWait::DefaultVaried => {
                    async_nats::ConnectOptions::new()
                }
                ReconnectWait::Fixed => {
                    async_nats::ConnectOptions::new().reconnect_delay_callback(|_| FIXED_WAIT)
                }
            };
            let client = opts
                .event_callback(move |e| {
                    let now = Instant::now();
                    let link = match e {
                        async_nats::Event::Disconnected => Some(Link::Down),
                        async_nats::Event::Connected => Some(Link::Up),
                        _ => None,
                    };
                    if let Some(link) = link {
                        let _ = tx.send((now, link));
                    }
                    async {}
                })
                .connect(url)
                .await?;
            Ok((AnyClient::AsyncNats(client), rx))
        }
    }
}

/// The arrival time of the next `want` event, skipping others (async-nats reports its
/// first connect as `Connected` too).
async fn next_link(rx: &mut LinkRx, want: Link, what: &str) -> Res<Instant> {
    within(what, async {
        loop {
            match rx.recv().await {
                Some((t, link)) if link == want => return Ok(t),
                Some(_) => {}
                None => return Err(BoxError::from("the event channel closed")),
            }
        }
    })
    .await?
}

/// Signed milliseconds from `from` to `to`.
fn signed_ms(from: Instant, to: Instant) -> f64 {
    if to >= from {
        to.duration_since(from).as_secs_f64() * 1e3
    } else {
        -(from.duration_since(to).as_secs_f64() * 1e3)
    }
}

/// One library's [`RESTARTS`] restarts on one connection.
fn reconnect_one(
    rt: &tokio::runtime::Runtime,
    server: &mut tether_testkit::NatsServer,
    lib: Lib,
    wait: ReconnectWait,
    quiet: bool,
) -> Res<(Vec<f64>, Vec<f64>)> {
    let url = server.url();
    let (client, mut rx) = rt.block_on(connect_watched(lib, wait, &url))?;
    let mut ms = Vec::with_capacity(RESTARTS);
    let mut outage = Vec::with_capacity(RESTARTS);
    for i in 0..RESTARTS {
        server.kill();
        std::thread::sleep(wait.downtime(i));
        let down = rt.block_on(next_link(&mut rx, Link::Down, "the disconnected event"))?;
        server.restart()?;
        let accepting = Instant::now();
        let up = rt.block_on(next_link(&mut rx, Link::Up, "the reconnected event"))?;
        let d = signed_ms(accepting, up);
        let o = signed_ms(down, up);
        if !quiet {
            eprintln!(
                "reconnect {:<12} restart {:>2} {:<10} {d:>8.1} ms after the server accepted \
                 again (outage seen by the client {o:.1} ms)",
                wait.name(),
                i + 1,
                lib.name()
            );
        }
        ms.push(d);
        outage.push(o);
        std::thread::sleep(SETTLE);
    }
    rt.block_on(client.close())?;
    Ok((ms, outage))
}

fn run_reconnect(
    rt: &tokio::runtime::Runtime,
    server: &mut tether_testkit::NatsServer,
    quiet: bool,
) -> Res<Vec<ReconnectSeries>> {
    let mut out = Vec::new();
    for (wait, order) in [
        (ReconnectWait::Default, [Lib::Tether, Lib::AsyncNats]),
        (ReconnectWait::Fixed, [Lib::AsyncNats, Lib::Tether]),
        (ReconnectWait::DefaultVaried, [Lib::AsyncNats, Lib::Tether]),
    ] {
        let mut series = ReconnectSeries {
            wait,
            tether: Vec::new(),
            async_nats: Vec::new(),
            tether_outage: Vec::new(),
            async_nats_outage: Vec::new(),
        };
        for lib in order {
            let (ms, outage) = reconnect_one(rt, server, lib, wait, quiet)?;
            match lib {
                Lib::Tether => (series.tether, series.tether_outage) = (ms, outage),
                Lib::AsyncNats => (series.async_nats, series.async_nats_outage) = (ms, outage),
            }
        }
        out.push(series);
    }
    Ok(out)
}

// ===== memory =====

/// Size of every message of the memory workload.
const MEM_MSG_SIZE: usize = 1024;
/// Bytes published while connected before the baseline.
const MEM_WARMUP_BYTES: usize = 4 << 20;
/// Bytes published while disconnected.
const MEM_FLOOD_BYTES: usize = 50 << 20;
/// How long one async-nats publish may wait before it counts as refused.
const ASYNC_NATS_PUBLISH_TIMEOUT: Duration = Duration::from_millis(50);
/// Once async-nats refuses, every this many refusals one publish waits the full timeout
/// again; the others are polled once.
const ASYNC_NATS_PROBE_EVERY: u64 = 1024;
/// How long the memory child collects tether's events after the flood.
const EVENT_DRAIN: Duration = Duration::from_millis(500);

/// The peak resident set size of this process, in KiB.
fn vm_hwm_kib() -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmHWM in /proc/self/status".into())
}

/// Tells the parent the baseline is taken and waits for it to kill the server.
fn ready_then_go() -> Res<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY")?;
    out.flush()?;
    drop(out);
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim() == "GO" {
        Ok(())
    } else {
        Err(format!("expected GO from the parent, got {line:?}").into())
    }
}

/// What one memory child measured (also its JSON line).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct MemRun {
    client: String,
    baseline_kib: u64,
    after_kib: u64,
    growth_mib: f64,
    /// From GO to the library's Disconnected event.
    disconnect_seen_ms: f64,
    /// How long the flood of publishes took.
    publish_secs: f64,
    attempted_msgs: u64,
    accepted_msgs: u64,
    accepted_bytes: u64,
    refused_msgs: u64,
    refused_bytes: u64,
    /// Publishes that failed for another reason than a full buffer (or a timeout).
    other_errors: u64,
    first_other_error: Option<String>,
    /// tether only: its own counters and events.
    tether: Option<TetherRefusals>,
}

/// tether's own account of the refused publishes.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct TetherRefusals {
    stats_refused_msgs: u64,
    /// Encoded bytes (control line and payload), unlike `refused_bytes` (payload only).
    stats_refused_bytes: u64,
    buffered_msgs: u64,
    buffered_bytes: u64,
    buffer_overflow_events: u64,
    overflow_event_refused_msgs: u64,
    overflow_event_refused_bytes: u64,
}

fn run_memory_child(lib: Lib, server: &str) -> Res<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let subject = format!("cmp.mem.{}", std::process::id());
    let run = match lib {
        Lib::Tether => memory_tether(&rt, server, &subject)?,
        Lib::AsyncNats => memory_async_nats(&rt, server, &subject)?,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&run)?)?;
    out.flush()?;
    drop(out);
    // Do not wait for the clients to give up on the dead server.
    rt.shutdown_background();
    Ok(())
}

fn growth_mib(baseline_kib: u64, after_kib: u64) -> f64 {
    (after_kib as f64 - baseline_kib as f64) / 1024.0
}

fn memory_tether(rt: &tokio::runtime::Runtime, server: &str, subject: &str) -> Res<MemRun> {
    let payload = vec![b'm'; MEM_MSG_SIZE];
    let client = rt.block_on(tether::connect(server))?;
    let mut events = client.events();
    rt.block_on(async {
        for _ in 0..MEM_WARMUP_BYTES / MEM_MSG_SIZE {
            client.publish(subject, &payload).await?;
        }
        client.flush().await?;
        Ok::<_, BoxError>(())
    })?;
    let baseline_kib = vm_hwm_kib()?;
    ready_then_go()?;
    let go = Instant::now();
    rt.block_on(within("the Disconnected event", async {
        while let Some(e) = events.next().await {
            if matches!(e.kind, tether::EventKind::Disconnected { .. }) {
                return Ok(());
            }
        }
        Err(BoxError::from("the event stream ended"))
    }))??;
    let disconnect_seen_ms = go.elapsed().as_secs_f64() * 1e3;

    let n = (MEM_FLOOD_BYTES / MEM_MSG_SIZE) as u64;
    let (mut accepted, mut refused, mut other) = (0_u64, 0_u64, 0_u64);
    let mut first_other = None;
    let start = Instant::now();
    rt.block_on(async {
        for _ in 0..n {
            match client.try_publish(subject, &payload) {
                Ok(()) => accepted += 1,
                Err(tether::PublishError::BufferFull { .. }) => refused += 1,
                Err(e) => {
                    other += 1;
                    first_other.get_or_insert_with(|| e.to_string());
                }
            }
        }
    });
    let publish_secs = start.elapsed().as_secs_f64();
    let after_kib = vm_hwm_kib()?;

    let (mut overflow_events, mut ev_msgs, mut ev_bytes) = (0, 0, 0);
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + EVENT_DRAIN;
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.next()).await {
            if let tether::EventKind::BufferOverflow {
                refused_msgs,
                refused_bytes,
            } = e.kind
            {
                overflow_events += 1;
                ev_msgs += refused_msgs;
                ev_bytes += refused_bytes;
            }
        }
    });
    let stats = client.statistics();
    Ok(MemRun {
        client: Lib::Tether.name().to_owned(),
        baseline_kib,
        after_kib,
        growth_mib: growth_mib(baseline_kib, after_kib),
        disconnect_seen_ms,
        publish_secs,
        attempted_msgs: n,
        accepted_msgs: accepted,
        accepted_bytes: accepted * MEM_MSG_SIZE as u64,
        refused_msgs: refused,
        refused_bytes: refused * MEM_MSG_SIZE as u64,
        other_errors: other,
        first_other_error: first_other,
        tether: Some(TetherRefusals {
            stats_refused_msgs: stats.refused_msgs,
            stats_refused_bytes: stats.refused_bytes,
            buffered_msgs: stats.buffered_msgs,
            buffered_bytes: stats.buffered_bytes,
            buffer_overflow_events: overflow_events,
            overflow_event_refused_msgs: ev_msgs,
            overflow_event_refused_bytes: ev_bytes,
        }),
    })
}

fn memory_async_nats(rt: &tokio::runtime::Runtime, server: &str, subject: &str) -> Res<MemRun> {
    let payload = Bytes::from(vec![b'm'; MEM_MSG_SIZE]);
    let subject = async_nats::Subject::from(subject);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = rt.block_on(
        async_nats::ConnectOptions::new()
            .event_callback(move |e| {
                let _ = tx.send(e);
                async {}
            })
            .connect(server),
    )?;
    rt.block_on(async {
        for _ in 0..MEM_WARMUP_BYTES / MEM_MSG_SIZE {
            client.publish(subject.clone(), payload.clone()).await?;
        }
        client.flush().await?;
        Ok::<_, BoxError>(())
    })?;
    let baseline_kib = vm_hwm_kib()?;
    ready_then_go()?;
    let go = Instant::now();
    rt.block_on(within("the Disconnected event", async {
        while let Some(e) = rx.recv().await {
            if matches!(e, async_nats::Event::Disconnected) {
                return Ok(());
            }
        }
        Err(BoxError::from("the event channel closed"))
    }))??;
    let disconnect_seen_ms = go.elapsed().as_secs_f64() * 1e3;

    let n = (MEM_FLOOD_BYTES / MEM_MSG_SIZE) as u64;
    let (mut accepted, mut refused, mut other) = (0_u64, 0_u64, 0_u64);
    let mut first_other = None;
    let mut full = false;
    let start = Instant::now();
    rt.block_on(async {
        for _ in 0..n {
            let publish = client.publish(subject.clone(), payload.clone());
            let done = if full && refused % ASYNC_NATS_PROBE_EVERY != 0 {
                publish.now_or_never()
            } else {
                tokio::time::timeout(ASYNC_NATS_PUBLISH_TIMEOUT, publish)
                    .await
                    .ok()
            };
            match done {
                Some(Ok(())) => {
                    accepted += 1;
                    full = false;
                }
                None => {
                    refused += 1;
                    full = true;
                }
                Some(Err(e)) => {
                    other += 1;
                    first_other.get_or_insert_with(|| e.to_string());
                }
            }
        }
    });
    let publish_secs = start.elapsed().as_secs_f64();
    let after_kib = vm_hwm_kib()?;
    Ok(MemRun {
        client: Lib::AsyncNats.name().to_owned(),
        baseline_kib,
        after_kib,
        growth_mib: growth_mib(baseline_kib, after_kib),
        disconnect_seen_ms,
        publish_secs,
        attempted_msgs: n,
        accepted_msgs: accepted,
        accepted_bytes: accepted * MEM_MSG_SIZE as u64,
        refused_msgs: refused,
        refused_bytes: refused * MEM_MSG_SIZE as u64,
        other_errors: other,
        first_other_error: first_other,
        tether: None,
    })
}

/// A memory child; killed on drop.
#[derive(Debug)]
struct MemoryChild {
    child: Child,
}

impl Drop for MemoryChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One child: baseline while connected, kill the server, flood, restart the server.
fn memory_one(server: &mut tether_testkit::NatsServer, lib: Lib) -> Res<MemRun> {
    let exe = std::env::current_exe()?;
    let mut child = MemoryChild {
        child: Command::new(exe)
            .args(["memory-child", "--client", lib.name(), "--server"])
            .arg(server.url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?,
    };
    let mut stdin = child.child.stdin.take().ok_or("no stdin")?;
    let mut lines = std::io::BufReader::new(child.child.stdout.take().ok_or("no stdout")?).lines();
    let mut next_line = |what: &str| -> Res<String> {
        match lines.next() {
            Some(l) => Ok(l?),
            None => Err(format!("the memory child ({}) exited before {what}", lib.name()).into()),
        }
    };
    let ready = next_line("READY")?;
    if ready.trim() != "READY" {
        return Err(format!("the memory child said {ready:?} instead of READY").into());
    }
    server.kill();
    writeln!(stdin, "GO")?;
    stdin.flush()?;
    let line = next_line("its result")?;
    let run: MemRun = serde_json::from_str(&line)?;
    let status = child.child.wait()?;
    if !status.success() {
        return Err(format!("the memory child ({}) failed: {status}", lib.name()).into());
    }
    server.restart()?;
    Ok(run)
}

/// Memory runs per library.
#[derive(Debug, Default)]
struct MemorySeries {
    tether: Vec<MemRun>,
    async_nats: Vec<MemRun>,
}

impl MemorySeries {
    fn of(&self, lib: Lib) -> &[MemRun] {
        match lib {
            Lib::Tether => &self.tether,
            Lib::AsyncNats => &self.async_nats,
        }
    }

    fn values(&self, lib: Lib, f: impl Fn(&MemRun) -> f64) -> Vec<f64> {
        self.of(lib).iter().map(f).collect()
    }

    /// Why tether's account of refused messages does not add up, if it does not.
    fn tether_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, r) in self.tether.iter().enumerate() {
            let Some(t) = r.tether else {
                continue;
            };
            let round = i + 1;
            if t.stats_refused_msgs != r.refused_msgs {
                out.push(format!(
                    "round {round}: statistics().refused_msgs = {} but {} publishes were refused",
                    t.stats_refused_msgs, r.refused_msgs
                ));
            }
            if r.refused_msgs > 0 && t.buffer_overflow_events == 0 {
                out.push(format!(
                    "round {round}: {} publishes refused and no BufferOverflow event",
                    r.refused_msgs
                ));
            } else if t.overflow_event_refused_msgs != r.refused_msgs {
                out.push(format!(
                    "round {round}: BufferOverflow events count {} refused messages, \
                     {} publishes were refused",
                    t.overflow_event_refused_msgs, r.refused_msgs
                ));
            }
            if t.overflow_event_refused_bytes != t.stats_refused_bytes {
                out.push(format!(
                    "round {round}: BufferOverflow events count {} refused bytes, \
                     statistics() {}",
                    t.overflow_event_refused_bytes, t.stats_refused_bytes
                ));
            }
            if r.other_errors > 0 {
                out.push(format!(
                    "round {round}: {} publishes failed otherwise ({})",
                    r.other_errors,
                    r.first_other_error.as_deref().unwrap_or("?")
                ));
            }
        }
        out
    }
}

fn run_memory(
    server: &mut tether_testkit::NatsServer,
    rounds: u32,
    quiet: bool,
) -> Res<Option<MemorySeries>> {
    let mut series = MemorySeries::default();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Lib::Tether, Lib::AsyncNats]
        } else {
            [Lib::AsyncNats, Lib::Tether]
        };
        for lib in order {
            let r = memory_one(server, lib)?;
            if !quiet {
                eprintln!(
                    "memory  round {:>2} {:<10} VmHWM {:+.1} MiB ({} -> {} KiB); accepted {} \
                     ({:.1} MiB), refused {} ({:.1} MiB) in {:.2} s",
                    round + 1,
                    lib.name(),
                    r.growth_mib,
                    r.baseline_kib,
                    r.after_kib,
                    r.accepted_msgs,
                    r.accepted_bytes as f64 / 1_048_576.0,
                    r.refused_msgs,
                    r.refused_bytes as f64 / 1_048_576.0,
                    r.publish_secs
                );
            }
            match lib {
                Lib::Tether => series.tether.push(r),
                Lib::AsyncNats => series.async_nats.push(r),
            }
            std::thread::sleep(SETTLE);
        }
    }
    Ok(Some(series))
}

/// The results of the workloads that kill their server.
#[derive(Debug, Default)]
struct Faulty {
    /// Their server.
    url: String,
    reconnect: Vec<ReconnectSeries>,
    memory: Option<MemorySeries>,
}

/// Target of the issue: tether's default-wait reconnect p50 at most this share of
/// async-nats's.
const TARGET_DEFAULT_RATIO: f64 = 0.5;
/// Target: with a 100 ms wait, tether's p50 at most this many ms above async-nats's.
const TARGET_FIXED_DIFF_MS: f64 = 10.0;
/// Target: tether's VmHWM growth at most this many MiB.
const TARGET_GROWTH_MIB: f64 = 10.0;

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT MET"
    }
}

fn faulty_table(o: &mut String, f: &Faulty) {
    for s in &f.reconnect {
        let (tp50, tp90, tmax) = s.stats(Lib::Tether);
        let (ap50, ap90, amax) = s.stats(Lib::AsyncNats);
        let label = match s.wait {
            ReconnectWait::Default => "reconnect",
            ReconnectWait::Fixed => "reconn 100ms",
            ReconnectWait::DefaultVaried => "reconn 1-1.9s",
        };
        for (what, t, a) in [
            ("p50", tp50, ap50),
            ("p90", tp90, ap90),
            ("max", tmax, amax),
        ] {
            let extra = if what == "p50" && s.wait == ReconnectWait::Fixed {
                format!("   diff {:+.1} ms", t - a)
            } else {
                String::new()
            };
            let _ = writeln!(
                o,
                "{:<20} {t:>14.1} {a:>14.1} {:>8.3}   lower is better{extra}",
                format!("{label} {what} ms"),
                t / a
            );
        }
    }
    if let Some(m) = &f.memory {
        let t = median(&m.values(Lib::Tether, |r| r.growth_mib));
        let a = median(&m.values(Lib::AsyncNats, |r| r.growth_mib));
        let ratio = if a.abs() >= 0.5 {
            format!("{:>8.3}", t / a)
        } else {
            format!("{:>8}", "n/a")
        };
        let _ = writeln!(
            o,
            "{:<20} {t:>14.1} {a:>14.1} {ratio}   lower is better",
            "memory VmHWM +MiB"
        );
        for (label, f) in [
            (
                "memory accepted",
                (|r: &MemRun| r.accepted_msgs as f64) as fn(&MemRun) -> f64,
            ),
            ("memory refused", |r: &MemRun| r.refused_msgs as f64),
        ] {
            let _ = writeln!(
                o,
                "{label:<20} {:>14} {:>14}",
                group(median(&m.values(Lib::Tether, f))),
                group(median(&m.values(Lib::AsyncNats, f)))
            );
        }
    }
}

#[allow(clippy::too_many_lines)] // issue 12 step 6 splits it; remove then
fn faulty_details(o: &mut String, f: &Faulty) {
    if f.reconnect.is_empty() && f.memory.is_none() {
        return;
    }
    let _ = writeln!(
        o,
        "\nreconnect/memory: own nats-server at {} (killed and restarted)",
        f.url
    );
    if !f.reconnect.is_empty() {
        let _ = writeln!(
            o,
            "reconnect: {RESTARTS} restarts per library and series, {} s down each (the \
             varied series: {} s more at each restart); ms from the server accepting again \
             to the client's reconnected event",
            DOWNTIME.as_secs_f64(),
            DOWNTIME_STEP.as_secs_f64()
        );
    }
    for s in &f.reconnect {
        for lib in [Lib::Tether, Lib::AsyncNats] {
            let v: Vec<String> = s.of(lib).iter().map(|v| format!("{v:.1}")).collect();
            let _ = writeln!(
                o,
                "  {:<14} {:<10} {}",
                s.wait.name(),
                lib.name(),
                v.join("  ")
            );
            let v: Vec<String> = s.outage_of(lib).iter().map(|v| format!("{v:.0}")).collect();
            let _ = writeln!(o, "  {:<14} {:<10} outage seen: {}", "", "", v.join("  "));
        }
    }
    if let Some(m) = &f.memory {
        let _ = writeln!(
            o,
            "memory: VmHWM growth from a warmed-up connected baseline while publishing {} MiB \
             of {} B messages disconnected, default buffers; per round:",
            MEM_FLOOD_BYTES >> 20,
            MEM_MSG_SIZE
        );
        for lib in [Lib::Tether, Lib::AsyncNats] {
            for (i, r) in m.of(lib).iter().enumerate() {
                let mut line = format!(
                    "  round {:>2} {:<10} {:+6.1} MiB  accepted {:>6}  refused {:>6}",
                    i + 1,
                    lib.name(),
                    r.growth_mib,
                    r.accepted_msgs,
                    r.refused_msgs
                );
                if let Some(t) = r.tether {
                    let _ = write!(
                        line,
                        "  stats refused {} ({} B)  BufferOverflow events {} (refused {})  \
                         buffered {} ({} B)",
                        t.stats_refused_msgs,
                        t.stats_refused_bytes,
                        t.buffer_overflow_events,
                        t.overflow_event_refused_msgs,
                        t.buffered_msgs,
                        t.buffered_bytes
                    );
                }
                if r.other_errors > 0 {
                    let _ = write!(line, "  OTHER ERRORS {}", r.other_errors);
                }
                let _ = writeln!(o, "{line}");
            }
        }
        for p in m.tether_problems() {
            let _ = writeln!(o, "WARNING: tether memory {p}");
        }
    }
    let _ = writeln!(o, "\ntargets:");
    for s in &f.reconnect {
        let t = s.stats(Lib::Tether).0;
        let a = s.stats(Lib::AsyncNats).0;
        match s.wait {
            ReconnectWait::Default => {
                let _ = writeln!(
                    o,
                    "  reconnect, default wait: p50 {t:.1} ms vs {a:.1} ms, ratio {:.3} \
                     (at most {TARGET_DEFAULT_RATIO}): {}",
                    t / a,
                    verdict(t / a <= TARGET_DEFAULT_RATIO)
                );
            }
            ReconnectWait::Fixed => {
                let _ = writeln!(
                    o,
                    "  reconnect, 100 ms wait: p50 {t:.1} ms vs {a:.1} ms, diff {:+.1} ms \
                     (at most +{TARGET_FIXED_DIFF_MS} ms): {}",
                    t - a,
                    verdict(t - a <= TARGET_FIXED_DIFF_MS)
                );
            }
            ReconnectWait::DefaultVaried => {
                let _ = writeln!(
                    o,
                    "  reconnect, default wait, 1.0-1.9 s down (no target; shows how the \
                     1 s figure depends on where each library's retry schedule falls): p50 \
                     {t:.1} ms vs {a:.1} ms, ratio {:.3}",
                    t / a
                );
            }
        }
    }
    if let Some(m) = &f.memory {
        let v = m.values(Lib::Tether, |r| r.growth_mib);
        let worst = v.iter().copied().fold(f64::NAN, f64::max);
        let _ = writeln!(
            o,
            "  memory: tether VmHWM growth median {:.1} MiB, max {worst:.1} MiB \
             (at most {TARGET_GROWTH_MIB} MiB, checked on the max): {}",
            median(&v),
            verdict(worst <= TARGET_GROWTH_MIB)
        );
        let problems = m.tether_problems();
        let _ = writeln!(
            o,
            "  memory: every refused tether publish reported (counters and BufferOverflow): {}",
            verdict(problems.is_empty())
        );
    }
}

fn faulty_json(f: &Faulty, workloads: &mut serde_json::Map<String, Value>) {
    if !f.reconnect.is_empty() {
        let mut w = serde_json::Map::new();
        w.insert("server".to_owned(), json!(f.url));
        w.insert("restarts".to_owned(), json!(RESTARTS));
        w.insert("downtime_ms".to_owned(), json!(DOWNTIME.as_millis() as u64));
        w.insert(
            "metric".to_owned(),
            json!("ms from restart() returning (server accepting again) to the reconnected event"),
        );
        for s in &f.reconnect {
            let mut one = serde_json::Map::new();
            for lib in [Lib::Tether, Lib::AsyncNats] {
                let (p50, p90, max) = s.stats(lib);
                one.insert(
                    lib.key().to_owned(),
                    json!({
                        "p50_ms": p50,
                        "p90_ms": p90,
                        "max_ms": max,
                        "ms": s.of(lib),
                        "outage_seen_ms": s.outage_of(lib),
                    }),
                );
            }
            let t = s.stats(Lib::Tether).0;
            let a = s.stats(Lib::AsyncNats).0;
            one.insert(
                "downtime_ms".to_owned(),
                json!((0..RESTARTS)
                    .map(|i| s.wait.downtime(i).as_millis() as u64)
                    .collect::<Vec<_>>()),
            );
            one.insert("ratio_p50".to_owned(), json!(t / a));
            one.insert("diff_p50_ms".to_owned(), json!(t - a));
            one.insert(
                "target_met".to_owned(),
                json!(match s.wait {
                    ReconnectWait::Default => Some(t / a <= TARGET_DEFAULT_RATIO),
                    ReconnectWait::Fixed => Some(t - a <= TARGET_FIXED_DIFF_MS),
                    ReconnectWait::DefaultVaried => None,
                }),
            );
            w.insert(s.wait.key().to_owned(), Value::Object(one));
        }
        workloads.insert("reconnect".to_owned(), Value::Object(w));
    }
    if let Some(m) = &f.memory {
        let mut w = serde_json::Map::new();
        w.insert("server".to_owned(), json!(f.url));
        w.insert("msg_size".to_owned(), json!(MEM_MSG_SIZE));
        w.insert("warmup_bytes".to_owned(), json!(MEM_WARMUP_BYTES));
        w.insert("flood_bytes".to_owned(), json!(MEM_FLOOD_BYTES));
        w.insert(
            "async_nats_publish_timeout_ms".to_owned(),
            json!(ASYNC_NATS_PUBLISH_TIMEOUT.as_millis() as u64),
        );
        for lib in [Lib::Tether, Lib::AsyncNats] {
            let growth = m.values(lib, |r| r.growth_mib);
            w.insert(
                lib.key().to_owned(),
                json!({
                    "median": {
                        "growth_mib": median(&growth),
                        "accepted_msgs": median(&m.values(lib, |r| r.accepted_msgs as f64)),
                        "refused_msgs": median(&m.values(lib, |r| r.refused_msgs as f64)),
                    },
                    "max_growth_mib": growth.iter().copied().fold(f64::NAN, f64::max),
                    "rounds": m.of(lib),
                }),
            );
        }
        let worst = m
            .values(Lib::Tether, |r| r.growth_mib)
            .into_iter()
            .fold(f64::NAN, f64::max);
        let problems = m.tether_problems();
        w.insert(
            "target_met".to_owned(),
            json!(worst <= TARGET_GROWTH_MIB && problems.is_empty()),
        );
        w.insert("tether_refusal_problems".to_owned(), json!(problems));
        workloads.insert("memory".to_owned(), Value::Object(w));
    }
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
        Workload::Reconnect | Workload::Memory => Vec::new(),
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
    faulty: &Faulty,
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
    if all.is_empty() {
        let _ = writeln!(o, "total {:.1} s\n", elapsed.as_secs_f64());
    } else {
        let _ = writeln!(
            o,
            "pub/pubsub: {} msgs of {} B; reqrep: {} sequential requests of {} B; total {:.1} s\n",
            group(cli.msgs as f64),
            cli.size,
            group(cli.requests as f64),
            cli.size,
            elapsed.as_secs_f64()
        );
    }
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
    server_cpu_table(&mut o, all);
    faulty_table(&mut o, faulty);
    faulty_details(&mut o, faulty);
    if all.is_empty() {
        return o;
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

/// The nats-server's CPU share per throughput workload: near 100 % of one core, the
/// server's single reader per connection is the ceiling and the client is not the limit.
fn server_cpu_table(o: &mut String, all: &[Series]) {
    let mut header = false;
    for s in all.iter().filter(|s| s.workload != Workload::Reqrep) {
        let t = median(&s.values(Lib::Tether, server_cpu));
        let a = median(&s.values(Lib::AsyncNats, server_cpu));
        if !t.is_finite() || !a.is_finite() {
            continue;
        }
        if !header {
            header = true;
            let _ = writeln!(
                o,
                "\nnats-server CPU while measured (median, % of one core; it reads each \
                 connection on one thread, so about 100 % is the most one connection can get)"
            );
        }
        let _ = writeln!(
            o,
            "{:<20} {:>13.0}% {:>13.0}%",
            format!("{:<12} cpu", s.workload.name()),
            t * 100.0,
            a * 100.0
        );
    }
}

fn to_json(
    cli: &Cli,
    url: &str,
    server_version: Option<String>,
    all: &[Series],
    faulty: &Faulty,
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
                        "server_cpu": t.server_cpu,
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
                    "server_cpu": Some(median(&s.values(lib, server_cpu))).filter(|v| v.is_finite()),
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
    faulty_json(faulty, &mut workloads);
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
