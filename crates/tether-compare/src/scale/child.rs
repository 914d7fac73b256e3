//! The child side of the scale workloads: one library, one N, one process, so that the
//! resident set and the thread count are that library's alone.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;

use super::nofile::{connect_failed, FdNeed};
use super::{ConnsRun, ScaleKind, SubsRun};
use crate::client::{AsyncNatsClient, BenchClient, Setup, TetherClient};
use crate::stats::{median, percentile};
use crate::{within, BoxError, Lib, Res};

/// A field of `/proc/self/status` (`VmRSS:` in KiB, `Threads:`).
fn status_field(name: &str) -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {name} in /proc/self/status").into())
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Runs one measurement and prints it as one JSON line; `subs` then waits for `DONE` on
/// stdin (the parent restarts the server meanwhile). `conns` connects over TLS, trusting
/// `tls_ca`, when given.
pub(crate) fn run_scale_child(
    kind: ScaleKind,
    lib: Lib,
    n: u64,
    server: &str,
    tls_ca: Option<&Path>,
) -> Res<()> {
    let setup = Setup {
        tls_ca: tls_ca.map(Arc::from),
        ..Setup::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let line = match (kind, lib) {
        (ScaleKind::Conns, Lib::Tether) => {
            serde_json::to_string(&rt.block_on(conns::<TetherClient>(server, n, &setup))?)?
        }
        (ScaleKind::Conns, Lib::AsyncNats) => {
            serde_json::to_string(&rt.block_on(conns::<AsyncNatsClient>(server, n, &setup))?)?
        }
        (ScaleKind::Subs, Lib::Tether) => {
            let (run, held) = rt.block_on(subs::<TetherClient>(server, n))?;
            return subs_then_wait(rt, &run, held);
        }
        (ScaleKind::Subs, Lib::AsyncNats) => {
            let (run, held) = rt.block_on(subs::<AsyncNatsClient>(server, n))?;
            return subs_then_wait(rt, &run, held);
        }
    };
    print_line(&line)?;
    // 1,000 clients need not say goodbye one by one: the process exits.
    rt.shutdown_background();
    Ok(())
}

fn print_line(line: &str) -> Res<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Prints the setup's figures and keeps the client (and its subscriptions) alive until
/// the parent says `DONE`.
fn subs_then_wait<H>(rt: tokio::runtime::Runtime, run: &SubsRun, held: H) -> Res<()> {
    print_line(&serde_json::to_string(run)?)?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    {
        // async-nats's subscriber spawns its unsubscribe on drop: inside the runtime.
        let _in_runtime = rt.enter();
        drop(held);
    }
    rt.shutdown_background();
    if line.trim() == "DONE" {
        Ok(())
    } else {
        Err(format!("expected DONE from the parent, got {line:?}").into())
    }
}

/// N clients connected one after another, then per client a subscription and a flush,
/// and a second subscription timed until a message through it comes back,
/// then the resident set and the threads.
async fn conns<C: BenchClient>(server: &str, n: u64, setup: &Setup) -> Res<ConnsRun> {
    let need = FdNeed::for_sockets(n);
    let payload = Bytes::from_static(b"scale");
    let prefix = format!("cmp.conns.{}", std::process::id());
    let rss_before_kib = status_field("VmRSS:")?;
    let threads_before = status_field("Threads:")?;

    let started = Instant::now();
    let mut clients = Vec::with_capacity(n as usize);
    let mut connect_ms = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        let c = C::connect(server, setup.clone())
            .await
            .map_err(|e| BoxError::from(connect_failed(i, need, &*e)))?;
        connect_ms.push(ms_since(t));
        clients.push(c);
    }
    let connect_all_secs = started.elapsed().as_secs_f64();

    let mut sub_flush_ms = Vec::with_capacity(n as usize);
    let mut sub_live_ms = Vec::with_capacity(n as usize);
    let mut subscribers = Vec::with_capacity(n as usize);
    for (i, c) in clients.iter().enumerate() {
        let subject = C::subject(format!("{prefix}.{i}"));
        let t = Instant::now();
        let sub = c.subscribe(&subject).await?;
        c.flush().await?;
        sub_flush_ms.push(ms_since(t));
        subscribers.push(sub);
        // Like for like: a second subscription, live for certain once a message
        // published after it comes back (the server reads a connection in order), with
        // no flush between, so neither library's flush semantics count.
        let subject = C::subject(format!("{prefix}.{i}.live"));
        let t = Instant::now();
        let mut sub = c.subscribe(&subject).await?;
        c.publish(&subject, &payload).await?;
        within(
            "a client's message through its new subscription",
            sub.next(),
        )
        .await?
        .ok_or("a subscription ended before its first message")?;
        sub_live_ms.push(ms_since(t));
        subscribers.push(sub);
    }

    let rss_after_kib = status_field("VmRSS:")?;
    let threads_after = status_field("Threads:")?;
    let mut sorted = connect_ms.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(ConnsRun {
        client: C::LIB.name().to_owned(),
        n,
        connect_p50_ms: percentile(&sorted, 0.50),
        connect_p90_ms: percentile(&sorted, 0.90),
        connect_max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        connect_all_secs,
        sub_flush_p50_ms: median(&sub_flush_ms),
        sub_live_p50_ms: median(&sub_live_ms),
        rss_before_kib,
        rss_after_kib,
        rss_per_conn_kib: (rss_after_kib as f64 - rss_before_kib as f64) / n as f64,
        threads_before,
        threads_after,
    })
}

/// One client with default options, N subscriptions on distinct subjects and a flush,
/// then a message through the last one; returns the figures and the client, which must
/// stay alive (with its subscriptions) for the resubscribe measurement.
async fn subs<C: BenchClient>(server: &str, n: u64) -> Res<(SubsRun, (C, Vec<C::Subscriber>))> {
    let payload = Bytes::from_static(b"scale");
    let client = C::connect(server, Setup::default())
        .await
        .map_err(|e| BoxError::from(connect_failed(0, FdNeed::for_sockets(1), &*e)))?;
    let rss_before_kib = status_field("VmRSS:")?;

    let t = Instant::now();
    let mut subscribers = Vec::with_capacity(n as usize);
    let mut last = None;
    for i in 0..n {
        let subject = C::subject(format!("cmp.subs.{i}"));
        subscribers.push(client.subscribe(&subject).await?);
        last = Some(subject);
    }
    client.flush().await?;
    let setup_ms = ms_since(t);
    // The server handles one connection's frames in order: a message published after
    // the last SUB and delivered through it means every SUB was processed.
    let last = last.ok_or("no subscriptions (N is 0)")?;
    client.publish(&last, &payload).await?;
    let sub = subscribers.last_mut().ok_or("no subscriptions (N is 0)")?;
    within("a message through the last subscription", sub.next())
        .await?
        .ok_or("the last subscription ended before its message")?;
    let setup_msg_ms = ms_since(t);

    let rss_after_kib = status_field("VmRSS:")?;
    let run = SubsRun {
        client: C::LIB.name().to_owned(),
        n,
        setup_ms,
        setup_msg_ms,
        rss_before_kib,
        rss_after_kib,
        rss_per_sub_bytes: (rss_after_kib as f64 - rss_before_kib as f64) * 1024.0 / n as f64,
        resub: None,
    };
    Ok((run, (client, subscribers)))
}
