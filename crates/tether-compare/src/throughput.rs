//! The comparison workloads: pub, pubsub and reqrep, and what one run of them measured.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::client::{AsyncNatsClient, BenchClient, PullShape, Setup, TetherClient};
use crate::jetstream::{run_js_consume, run_js_consume_raw, run_js_pub, run_js_pub_raw};
use crate::raw;
use crate::stats::percentile;
use crate::{within, Lib, Res, Workload, PUB_SUBJECT, STALL_TIMEOUT};

/// Unmeasured requests at the start of each reqrep run.
pub(crate) const REQ_WARMUP: usize = 100;

/// What every run of pub, pubsub and reqrep is given.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) url: String,
    /// `host:port` for the raw connections of the ceiling and the floor.
    pub(crate) raw_addr: String,
    pub(crate) msgs: u64,
    pub(crate) requests: u64,
    pub(crate) payload: Bytes,
    /// Where the async-nats responder process listens (the libraries' reqrep).
    pub(crate) echo_subject: String,
    /// Where the raw responder of the floor listens (as long as `echo_subject`).
    pub(crate) raw_echo_subject: String,
    /// The local nats-server's process id, for its CPU time.
    pub(crate) server_pid: Option<u32>,
    /// With TLS (`--tls`): the CA the server's certificate is signed by, which both
    /// libraries trust; the raw side does not run.
    pub(crate) tls_ca: Option<Arc<Path>>,
    /// js-pub: publish acks outstanding at most (also js-consume's fill).
    pub(crate) js_window: usize,
    /// js-consume: how both libraries pull.
    pub(crate) js_pull: PullShape,
    /// `--in-task`: each library's run is a task spawned on the runtime, not the future
    /// the main thread blocks on.
    pub(crate) in_task: bool,
}

impl Params {
    /// Each library's default options, with TLS when the run has it.
    pub(crate) fn setup(&self) -> Setup {
        Setup {
            tls_ca: self.tls_ca.clone(),
            ..Setup::default()
        }
    }
}

/// CPU time of the nats-server process (all threads), from `/proc/PID/stat`.
pub(crate) struct ServerCpu {
    pid: Option<u32>,
    ticks: Option<u64>,
}

/// Clock ticks per second of `/proc/PID/stat` (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

impl ServerCpu {
    pub(crate) fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            ticks: pid.and_then(cpu_ticks),
        }
    }

    /// CPU seconds since `start` over `secs` of wall time.
    pub(crate) fn share(&self, secs: f64) -> Option<f64> {
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

/// What one throughput run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Throughput {
    pub(crate) msgs_per_sec: f64,
    pub(crate) received: u64,
    pub(crate) dropped: u64,
    pub(crate) secs: f64,
    /// The nats-server's CPU time over the measured window, as a share of one core
    /// (known only for the server this binary started).
    pub(crate) server_cpu: Option<f64>,
    /// False when the run ended on a stall instead of on the last message or the marker.
    pub(crate) complete: bool,
}

/// What one reqrep run measured, in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) mean: f64,
    /// Times a thread of this process went to sleep and was woken again, per measured
    /// request ([`Wakes`]); None where `/proc` cannot tell.
    pub(crate) wakes_per_request: Option<f64>,
}

/// Counts the sleeps of this process's threads (voluntary context switches, from
/// `/proc/self/task/*/status`): each is a thread that blocked (in `epoll_wait`, a
/// futex, a socket read) and had to be woken, the thread hops of the request path.
/// A thread named `except` (the floor's own responder) is left out, so every side
/// counts its requesting end alone.
pub(crate) struct Wakes {
    except: &'static str,
    start: Option<u64>,
}

impl Wakes {
    pub(crate) fn start(except: &'static str) -> Self {
        Self {
            except,
            start: voluntary_switches(except),
        }
    }

    /// Sleeps since `start` per request.
    pub(crate) fn per(&self, requests: u64) -> Option<f64> {
        let now = voluntary_switches(self.except)?;
        Some(now.saturating_sub(self.start?) as f64 / requests.max(1) as f64)
    }
}

/// Voluntary context switches of this process's threads, except the one named `except`.
fn voluntary_switches(except: &str) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        // A thread that ended in between is simply not counted.
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if comm.trim_end() == except {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue;
        };
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())?;
    }
    Some(total)
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum RunResult {
    Throughput(Throughput),
    Latency(Latency),
}

/// Who runs a workload: one of the libraries, or the raw sockets of the ceiling (pub),
/// the JetStream ceiling (js-pub) or the floor (reqrep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Tether,
    AsyncNats,
    Raw,
    /// js-pub's second raw side: the core publish ceiling (raw PUBs to `bench.pub`, no
    /// JetStream), beside the JetStream one.
    RawCore,
}

impl Side {
    /// Who runs `w`, in the order of the first measured round (rotated by one each
    /// round after): pubsub has no raw side, js-pub has two.
    pub(crate) fn of_workload(w: Workload) -> &'static [Side] {
        match w {
            Workload::Pub | Workload::Reqrep | Workload::JsConsume => {
                &[Side::Tether, Side::AsyncNats, Side::Raw]
            }
            Workload::JsPub => &[Side::Tether, Side::AsyncNats, Side::Raw, Side::RawCore],
            _ => &[Side::Tether, Side::AsyncNats],
        }
    }

    /// The name in progress lines and tables: the raw side is the pub "ceiling", the
    /// js-pub and js-consume "js ceiling" (js-pub's beside its "core ceiling") and the
    /// reqrep "floor".
    pub(crate) fn name(self, w: Workload) -> &'static str {
        match self {
            Side::Tether => Lib::Tether.name(),
            Side::AsyncNats => Lib::AsyncNats.name(),
            Side::Raw => raw_name(w),
            Side::RawCore => "core ceiling",
        }
    }

    /// The key in the JSON object.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Side::Tether => Lib::Tether.key(),
            Side::AsyncNats => Lib::AsyncNats.key(),
            Side::Raw => "raw",
            Side::RawCore => "raw_core",
        }
    }
}

/// What the raw side of `w` is: the best a client can do on this server and machine.
pub(crate) fn raw_name(w: Workload) -> &'static str {
    match w {
        Workload::Reqrep => "floor",
        Workload::JsPub | Workload::JsConsume => "js ceiling",
        _ => "ceiling",
    }
}

/// The measured rounds of one workload at one payload size, per side.
#[derive(Debug)]
pub(crate) struct Series {
    pub(crate) workload: Workload,
    /// Payload size in bytes.
    pub(crate) size: usize,
    /// Over TLS (`--tls`): no floor; the ceiling over TLS.
    pub(crate) tls: bool,
    tether: Vec<RunResult>,
    async_nats: Vec<RunResult>,
    raw: Vec<RunResult>,
    raw_core: Vec<RunResult>,
}

impl Series {
    pub(crate) fn new(workload: Workload, size: usize, tls: bool) -> Self {
        Self {
            workload,
            size,
            tls,
            tether: Vec::new(),
            async_nats: Vec::new(),
            raw: Vec::new(),
            raw_core: Vec::new(),
        }
    }

    /// Whether the series has a raw side: pub and reqrep in plaintext; over TLS pub only
    /// (the ceiling writes its chunks through a rustls session; the floor speaks no TLS).
    pub(crate) fn has_raw(&self) -> bool {
        Side::of_workload(self.workload).contains(&Side::Raw)
            && (!self.tls
                || matches!(
                    self.workload,
                    Workload::Pub | Workload::JsPub | Workload::JsConsume
                ))
    }

    /// Who runs the series, in the order of the first measured round: the workload's
    /// sides ([`Side::of_workload`]), without the floor over TLS.
    pub(crate) fn sides(&self) -> Vec<Side> {
        Side::of_workload(self.workload)
            .iter()
            .copied()
            .filter(|&s| s != Side::Raw || self.has_raw())
            .collect()
    }

    /// The series' name in tables and JSON keys: `pub 16 B`, or `pub 16 B tls`.
    pub(crate) fn name(&self) -> String {
        format!(
            "{} {} B{}",
            self.workload.name(),
            self.size,
            if self.tls { " tls" } else { "" }
        )
    }

    pub(crate) fn of(&self, side: Side) -> &[RunResult] {
        match side {
            Side::Tether => &self.tether,
            Side::AsyncNats => &self.async_nats,
            Side::Raw => &self.raw,
            Side::RawCore => &self.raw_core,
        }
    }

    pub(crate) fn push(&mut self, side: Side, r: RunResult) {
        match side {
            Side::Tether => self.tether.push(r),
            Side::AsyncNats => self.async_nats.push(r),
            Side::Raw => self.raw.push(r),
            Side::RawCore => self.raw_core.push(r),
        }
    }

    pub(crate) fn values(&self, side: Side, f: impl Fn(&RunResult) -> Option<f64>) -> Vec<f64> {
        self.of(side).iter().filter_map(f).collect()
    }
}

pub(crate) fn rate(r: &RunResult) -> Option<f64> {
    match r {
        RunResult::Throughput(t) => Some(t.msgs_per_sec),
        RunResult::Latency(_) => None,
    }
}

pub(crate) fn server_cpu(r: &RunResult) -> Option<f64> {
    match r {
        RunResult::Throughput(t) => t.server_cpu,
        RunResult::Latency(_) => None,
    }
}

pub(crate) fn p50(r: &RunResult) -> Option<f64> {
    match r {
        RunResult::Latency(l) => Some(l.p50),
        RunResult::Throughput(_) => None,
    }
}

pub(crate) fn p90(r: &RunResult) -> Option<f64> {
    match r {
        RunResult::Latency(l) => Some(l.p90),
        RunResult::Throughput(_) => None,
    }
}

pub(crate) fn p99(r: &RunResult) -> Option<f64> {
    match r {
        RunResult::Latency(l) => Some(l.p99),
        RunResult::Throughput(_) => None,
    }
}

pub(crate) fn wakes_per_request(r: &RunResult) -> Option<f64> {
    match r {
        RunResult::Latency(l) => l.wakes_per_request,
        RunResult::Throughput(_) => None,
    }
}

/// One run of `w` by `side`: the libraries on `rt`, the raw side on this thread (its
/// sockets block).
pub(crate) fn run_one(
    rt: &tokio::runtime::Runtime,
    w: Workload,
    side: Side,
    p: &Params,
    tag: &str,
) -> Res<RunResult> {
    match (side, w) {
        (Side::Tether, _) => run_lib!(TetherClient, rt, w, p, tag),
        (Side::AsyncNats, _) => run_lib!(AsyncNatsClient, rt, w, p, tag),
        (Side::Raw, Workload::Pub) => Ok(RunResult::Throughput(raw::run_pub(p)?)),
        (Side::Raw, Workload::JsPub) => Ok(RunResult::Throughput(run_js_pub_raw(rt, p)?)),
        (Side::Raw, Workload::JsConsume) => {
            Ok(RunResult::Throughput(run_js_consume_raw(rt, p, tag)?))
        }
        // Beside js-pub's own ceiling, the core one: raw PUBs of the same size to
        // `bench.pub`, no JetStream.
        (Side::RawCore, Workload::JsPub) => Ok(RunResult::Throughput(raw::run_pub(p)?)),
        (Side::Raw, Workload::Reqrep) => Ok(RunResult::Latency(raw::run_reqrep(p)?)),
        (Side::Raw | Side::RawCore, _) => Err(format!("{} has no such raw side", w.name()).into()),
    }
}

/// One library's run: on the thread that blocks on `rt` (a program working from `main`),
/// or with `--in-task` in a task spawned on `rt`'s workers (a service's handler), where
/// its wake-ups need not cross to a thread outside the runtime.
macro_rules! run_lib {
    ($client:ty, $rt:expr, $w:expr, $p:expr, $tag:expr) => {{
        let (rt, w, p, tag): (&tokio::runtime::Runtime, Workload, &Params, &str) =
            ($rt, $w, $p, $tag);
        if p.in_task {
            let (p, tag) = (p.clone(), tag.to_owned());
            let task = rt.spawn(async move {
                run_with::<$client>(w, &p, &tag)
                    .await
                    .map_err(|e| e.to_string())
            });
            match rt.block_on(task) {
                Ok(r) => r.map_err(Into::into),
                Err(e) => Err(format!("a {} run's task failed: {e}", <$client>::LIB.name()).into()),
            }
        } else {
            rt.block_on(run_with::<$client>(w, p, tag))
        }
    }};
}
use run_lib;

async fn run_with<C: BenchClient>(w: Workload, p: &Params, tag: &str) -> Res<RunResult> {
    Ok(match w {
        Workload::Pub => RunResult::Throughput(run_pub::<C>(p, tag).await?),
        Workload::Pubsub => RunResult::Throughput(run_pubsub::<C>(p, tag).await?),
        Workload::Reqrep => RunResult::Latency(run_reqrep::<C>(p).await?),
        Workload::JsPub => RunResult::Throughput(run_js_pub::<C>(p).await?),
        Workload::JsConsume => RunResult::Throughput(run_js_consume::<C>(p, tag).await?),
        Workload::Reconnect | Workload::Memory | Workload::Conns | Workload::Subs => {
            return Err(format!("{} is not a throughput or latency workload", w.name()).into());
        }
    })
}

// ----- pub -----

async fn run_pub<C: BenchClient>(p: &Params, tag: &str) -> Res<Throughput> {
    let client = C::connect(&p.url, p.setup()).await?;
    let data = C::subject(PUB_SUBJECT.to_owned());
    let marker = C::subject(format!("cmp.{tag}.marker"));
    let mut sub = client.subscribe(&marker).await?;
    // Round-trip once through the marker subscription: the SUB is registered.
    client
        .publish(&marker, &Bytes::from_static(b"sync"))
        .await?;
    within("the sync message", sub.next()).await?;

    let cpu = ServerCpu::start(p.server_pid);
    let start = Instant::now();
    for _ in 0..p.msgs {
        client.publish(&data, &p.payload).await?;
    }
    client.publish(&marker, &Bytes::from_static(b"end")).await?;
    within("the marker", sub.next())
        .await?
        .ok_or("subscription ended")?;
    let secs = start.elapsed().as_secs_f64();

    drop(sub);
    client.close().await?;
    Ok(Throughput::published(p.msgs, secs, cpu.share(secs)))
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

impl Throughput {
    /// A publish run that ended on the server's confirmation of all `msgs`.
    pub(crate) fn published(msgs: u64, secs: f64, server_cpu: Option<f64>) -> Self {
        Self {
            msgs_per_sec: msgs as f64 / secs,
            received: msgs,
            dropped: 0,
            secs,
            server_cpu,
            complete: true,
        }
    }
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

async fn run_pubsub<C: BenchClient>(p: &Params, tag: &str) -> Res<Throughput> {
    let setup = Setup {
        pending_msgs: Some(p.msgs as usize + 10),
        ..p.setup()
    };
    let sub_client = C::connect(&p.url, setup.clone()).await?;
    let pub_client = C::connect(&p.url, setup).await?;
    let subject = C::subject(format!("cmp.{tag}"));
    let sync = C::subject(format!("cmp.{tag}.sync"));
    let sub = sub_client.subscribe(&subject).await?;
    let mut sync_sub = sub_client.subscribe(&sync).await?;
    sub_client
        .publish(&sync, &Bytes::from_static(b"sync"))
        .await?;
    within("the sync message", sync_sub.next()).await?;
    drop(sync_sub);

    let n = p.msgs;
    let counter = tokio::spawn(count(sub, n, C::has_reply));
    let cpu = ServerCpu::start(p.server_pid);
    let start = Instant::now();
    for _ in 0..n {
        pub_client.publish(&subject, &p.payload).await?;
    }
    pub_client
        .publish_with_reply(&subject, "cmp.marker", &Bytes::new())
        .await?;
    let (counted, sub) = counter.await?;
    let mut t = throughput(n, start, &counted);
    t.server_cpu = cpu.share(t.secs);
    // The library's own count, for the record (the subscriber may stop before the marker).
    t.dropped = t.dropped.max(C::dropped(&sub));

    drop(sub);
    pub_client.close().await?;
    sub_client.close().await?;
    Ok(t)
}

// ----- reqrep -----

pub(crate) fn latency(mut us: Vec<f64>, wakes_per_request: Option<f64>) -> Latency {
    us.sort_by(f64::total_cmp);
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    Latency {
        p50: percentile(&us, 0.50),
        p90: percentile(&us, 0.90),
        p99: percentile(&us, 0.99),
        mean,
        wakes_per_request,
    }
}

pub(crate) fn check_echo(got: &[u8], sent: &[u8]) -> Res<()> {
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

async fn run_reqrep<C: BenchClient>(p: &Params) -> Res<Latency> {
    let client = C::connect(&p.url, p.setup()).await?;
    let subject = C::subject(p.echo_subject.clone());
    for _ in 0..REQ_WARMUP {
        let m = client.request(&subject, &p.payload).await?;
        check_echo(C::payload(&m), &p.payload)?;
    }
    let mut us = Vec::with_capacity(p.requests as usize);
    let wakes = Wakes::start(raw::RESPONDER_THREAD);
    for _ in 0..p.requests {
        let t = Instant::now();
        let m = client.request(&subject, &p.payload).await?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        check_echo(C::payload(&m), &p.payload)?;
    }
    let wakes = wakes.per(p.requests);
    client.close().await?;
    Ok(latency(us, wakes))
}
