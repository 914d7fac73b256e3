//! The memory workload: VmHWM growth while each library is fed publishes with its
//! server down, one child process per measurement.

use std::fmt::Display;
use std::io::{BufRead as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::client::{AsyncNatsClient, BenchClient, Offer, TetherClient};
use crate::{within, BoxError, ByLib, Lib, Res, SETTLE};

/// Size of every message of the memory workload.
pub(crate) const MEM_MSG_SIZE: usize = 1024;
/// Bytes published while connected before the baseline.
pub(crate) const MEM_WARMUP_BYTES: usize = 4 << 20;
/// Bytes published while disconnected.
pub(crate) const MEM_FLOOD_BYTES: usize = 50 << 20;
/// How long one async-nats publish may wait before it counts as refused.
pub(crate) const ASYNC_NATS_PUBLISH_TIMEOUT: Duration = Duration::from_millis(50);
/// Once async-nats refuses, every this many refusals one publish waits the full timeout
/// again; the others are polled once.
pub(crate) const ASYNC_NATS_PROBE_EVERY: u64 = 1024;
/// How long the memory child collects tether's events after the flood.
pub(crate) const EVENT_DRAIN: Duration = Duration::from_millis(500);

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
pub(crate) struct MemRun {
    client: String,
    baseline_kib: u64,
    after_kib: u64,
    pub(crate) growth_mib: f64,
    /// From GO to the library's Disconnected event.
    disconnect_seen_ms: f64,
    /// How long the flood of publishes took.
    publish_secs: f64,
    attempted_msgs: u64,
    pub(crate) accepted_msgs: u64,
    accepted_bytes: u64,
    pub(crate) refused_msgs: u64,
    refused_bytes: u64,
    /// Publishes that failed for another reason than a full buffer (or a timeout).
    pub(crate) other_errors: u64,
    first_other_error: Option<String>,
    /// tether only: its own counters and events.
    pub(crate) tether: Option<TetherRefusals>,
}

/// tether's own account of the refused publishes.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct TetherRefusals {
    pub(crate) stats_refused_msgs: u64,
    /// Encoded bytes (control line and payload), unlike `refused_bytes` (payload only).
    pub(crate) stats_refused_bytes: u64,
    pub(crate) buffered_msgs: u64,
    pub(crate) buffered_bytes: u64,
    pub(crate) buffer_overflow_events: u64,
    pub(crate) overflow_event_refused_msgs: u64,
    pub(crate) overflow_event_refused_bytes: u64,
}

pub(crate) fn run_memory_child(lib: Lib, server: &str) -> Res<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let subject = format!("cmp.mem.{}", std::process::id());
    let run = match lib {
        Lib::Tether => memory_run::<TetherClient>(&rt, server, &subject)?,
        Lib::AsyncNats => memory_run::<AsyncNatsClient>(&rt, server, &subject)?,
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

/// The tally of the flood.
#[derive(Debug, Default)]
pub(crate) struct Flood {
    accepted: u64,
    pub(crate) refused: u64,
    other: u64,
    first_other: Option<String>,
    /// The last publish answered was refused (for async-nats: its channel is full).
    pub(crate) full: bool,
}

impl Flood {
    fn record<E: Display>(&mut self, offer: Offer<E>) {
        match offer {
            Offer::Accepted => {
                self.accepted += 1;
                self.full = false;
            }
            Offer::Refused => {
                self.refused += 1;
                self.full = true;
            }
            Offer::Failed(e) => {
                self.other += 1;
                self.first_other.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// One measurement in the child: warm-up and baseline, READY, GO, the Disconnected
/// event, the flood, VmHWM again.
fn memory_run<C: BenchClient>(
    rt: &tokio::runtime::Runtime,
    server: &str,
    subject: &str,
) -> Res<MemRun> {
    let payload = Bytes::from(vec![b'm'; MEM_MSG_SIZE]);
    let subject = C::subject(subject.to_owned());
    let (client, mut events) = rt.block_on(C::connect_with_events(server))?;
    rt.block_on(async {
        for _ in 0..MEM_WARMUP_BYTES / MEM_MSG_SIZE {
            client.publish(&subject, &payload).await?;
        }
        client.flush().await?;
        Ok::<_, BoxError>(())
    })?;
    let baseline_kib = vm_hwm_kib()?;
    ready_then_go()?;
    let go = Instant::now();
    rt.block_on(within(
        "the Disconnected event",
        C::disconnected(&mut events),
    ))??;
    let disconnect_seen_ms = go.elapsed().as_secs_f64() * 1e3;

    let n = (MEM_FLOOD_BYTES / MEM_MSG_SIZE) as u64;
    let mut flood = Flood::default();
    let start = Instant::now();
    rt.block_on(async {
        for _ in 0..n {
            let offer = client.offer(&subject, &payload, &flood).await;
            flood.record(offer);
        }
    });
    let publish_secs = start.elapsed().as_secs_f64();
    let after_kib = vm_hwm_kib()?;
    let tether = rt.block_on(client.refusals(&mut events));
    Ok(MemRun {
        client: C::LIB.name().to_owned(),
        baseline_kib,
        after_kib,
        growth_mib: growth_mib(baseline_kib, after_kib),
        disconnect_seen_ms,
        publish_secs,
        attempted_msgs: n,
        accepted_msgs: flood.accepted,
        accepted_bytes: flood.accepted * MEM_MSG_SIZE as u64,
        refused_msgs: flood.refused,
        refused_bytes: flood.refused * MEM_MSG_SIZE as u64,
        other_errors: flood.other,
        first_other_error: flood.first_other,
        tether,
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
pub(crate) struct MemorySeries {
    runs: ByLib<Vec<MemRun>>,
}

impl MemorySeries {
    pub(crate) fn of(&self, lib: Lib) -> &[MemRun] {
        self.runs.of(lib)
    }

    pub(crate) fn values(&self, lib: Lib, f: impl Fn(&MemRun) -> f64) -> Vec<f64> {
        self.of(lib).iter().map(f).collect()
    }

    /// Why tether's account of refused messages does not add up, if it does not.
    pub(crate) fn tether_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, r) in self.runs.tether.iter().enumerate() {
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

pub(crate) fn run_memory(
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
            series.runs.of_mut(lib).push(r);
            std::thread::sleep(SETTLE);
        }
    }
    Ok(Some(series))
}
