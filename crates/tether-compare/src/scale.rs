//! The scale workloads: many connections from one process (`conns`) and many
//! subscriptions on one connection (`subs`). Each measurement runs in a child process
//! (this binary re-invoked with the hidden `scale-child` subcommand), one library and one
//! N per child, so the resident set and the thread count are that library's alone.
//!
//! - `conns`: against the run's server. The child connects N clients one after another
//!   with default options (connect time per client), then per client subscribes one
//!   subject and flushes (subscribe + flush), publishes to that subject and waits for the
//!   message (subscribe → message), then reads VmRSS and Threads from
//!   `/proc/self/status`; RSS per connection is over a baseline read before the first
//!   connect.
//! - `subs`: against a nats-server of its own (it is killed). The child connects, then
//!   subscribes N distinct subjects and flushes (setup), publishes to the last one and
//!   waits for the message (setup → message), and reads VmRSS (per subscription over a
//!   baseline read after the connect). The parent checks that the server's `/subsz`
//!   counts the N subscriptions, SIGKILLs the server and restarts it on the same port;
//!   resubscribe is the time from the restarted server answering a connection with INFO
//!   to `/subsz` reporting all N again.
//!
//! Both check the open-file limit first ([`nofile`]).

mod child;
mod nofile;

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::plot::{Group, BELOW_FASTER, BELOW_SMALLER};
use crate::report::group;
use crate::stats::median;
use crate::{ByLib, Cli, Lib, Res, Workload, SETTLE};

pub(crate) use child::run_scale_child;

/// How often the parent asks `/subsz` for the count while the client resubscribes.
const SUBSZ_POLL: Duration = Duration::from_millis(2);
/// How often the parent tries to connect while the server restarts.
const ACCEPT_POLL: Duration = Duration::from_micros(250);
/// How long the server may take to accept again, or the client to resubscribe everything.
const SCALE_DEADLINE: Duration = Duration::from_secs(60);

/// Which scale workload a child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ScaleKind {
    Conns,
    Subs,
}

/// What one `conns` child measured (also its JSON line).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct ConnsRun {
    client: String,
    n: u64,
    connect_p50_ms: f64,
    connect_p90_ms: f64,
    connect_max_ms: f64,
    /// All N connects, one after another.
    connect_all_secs: f64,
    /// Per client, from calling subscribe to flush returning (median over the clients).
    sub_flush_p50_ms: f64,
    /// Per client, from calling subscribe to the client's own message coming back
    /// through the new subscription (median over the clients).
    sub_live_p50_ms: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    rss_per_conn_kib: f64,
    threads_before: u64,
    threads_after: u64,
}

/// What one `subs` child measured (its JSON line), and what the parent saw after the
/// restart.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct SubsRun {
    client: String,
    n: u64,
    /// From the first subscribe to flush returning.
    setup_ms: f64,
    /// From the first subscribe to a message published after the last one coming back
    /// through it.
    setup_msg_ms: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    rss_per_sub_bytes: f64,
    /// Filled in by the parent.
    #[serde(default)]
    resub: Option<Resub>,
}

/// The restart of a `subs` measurement, as the parent saw it.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct Resub {
    /// From the restarted server answering with INFO to `/subsz` counting all N again.
    resubscribe_ms: f64,
    /// From the same start to `/subsz` counting any of them.
    first_seen_ms: Option<f64>,
    /// The count waited for: the server's own subscriptions plus N.
    target: u64,
}

/// A server the conns workload runs against: plaintext, or TLS trusting `tls_ca`.
#[derive(Debug, Clone)]
pub(crate) struct ConnsTarget {
    pub(crate) url: String,
    pub(crate) tls_ca: Option<Arc<Path>>,
}

/// The results of the scale workloads.
#[derive(Debug, Default)]
pub(crate) struct Scale {
    conns_server: String,
    /// `--tls`: the TLS server of conns.
    conns_tls_server: String,
    subs_server: String,
    rounds: u32,
    /// Per N, in the order given.
    conns: Vec<(u64, ByLib<Vec<ConnsRun>>)>,
    /// `--tls`: the same over TLS.
    conns_tls: Vec<(u64, ByLib<Vec<ConnsRun>>)>,
    subs: Vec<(u64, ByLib<Vec<SubsRun>>)>,
}

/// Tether first in even measured rounds, as in the other workloads.
fn order(round: u32, warmup: u32) -> [Lib; 2] {
    if (round + warmup) % 2 == 0 {
        [Lib::Tether, Lib::AsyncNats]
    } else {
        [Lib::AsyncNats, Lib::Tether]
    }
}

fn child_command(
    kind: &str,
    lib: Lib,
    n: u64,
    server: &str,
    tls_ca: Option<&Path>,
) -> Res<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["scale-child", "--kind", kind, "--client", lib.name(), "--n"])
        .arg(n.to_string())
        .arg("--server")
        .arg(server);
    if let Some(ca) = tls_ca {
        cmd.arg("--tls-ca").arg(ca);
    }
    Ok(cmd)
}

/// The scale workloads named in `workloads`: `conns` against each of `conns_targets` (the
/// run's server, plaintext or TLS, or both), `subs` against a server of its own.
pub(crate) fn run_scale(
    cli: &Cli,
    conns_targets: &[ConnsTarget],
    workloads: &[Workload],
) -> Res<Scale> {
    let mut scale = Scale {
        rounds: cli.rounds,
        ..Scale::default()
    };
    if workloads.contains(&Workload::Conns) {
        let most = cli.conns.iter().copied().max().unwrap_or(0);
        nofile::ensure(
            &format!("the conns workload with {} connections", group(most as f64)),
            nofile::FdNeed::for_sockets(most),
        )?;
        for target in conns_targets {
            let tls = target.tls_ca.is_some();
            let (server, results) = if tls {
                (&mut scale.conns_tls_server, &mut scale.conns_tls)
            } else {
                (&mut scale.conns_server, &mut scale.conns)
            };
            target.url.clone_into(server);
            let what = if tls { "conns tls" } else { "conns" };
            for &n in &cli.conns {
                let runs = rounds(
                    cli,
                    |lib| conns_one(&target.url, target.tls_ca.as_deref(), lib, n),
                    |r: &ConnsRun| {
                        format!(
                    "{what} {:>7} {:<10} connect p50 {:.3} ms p90 {:.3} ms; sub+flush {:.3} ms, \
                     sub→live {:.3} ms; RSS {:+.1} KiB/conn; {} threads",
                    group(n as f64),
                    r.client,
                    r.connect_p50_ms,
                    r.connect_p90_ms,
                    r.sub_flush_p50_ms,
                    r.sub_live_p50_ms,
                    r.rss_per_conn_kib,
                    r.threads_after
                )
                    },
                )?;
                results.push((n, runs));
            }
        }
    }
    if workloads.contains(&Workload::Subs) {
        nofile::ensure("the subs workload", nofile::FdNeed::for_sockets(1))?;
        let mut server = tether_testkit::NatsServer::start()?;
        scale.subs_server = server.url();
        for &n in &cli.subs {
            let runs = rounds(
                cli,
                |lib| subs_one(&mut server, lib, n),
                |r: &SubsRun| {
                    format!(
                        "subs {:>8} {:<10} setup {:.1} ms (→msg {:.1} ms); RSS {:.0} B/sub; \
                     resubscribe {:.1} ms",
                        group(n as f64),
                        r.client,
                        r.setup_ms,
                        r.setup_msg_ms,
                        r.rss_per_sub_bytes,
                        r.resub.map_or(f64::NAN, |x| x.resubscribe_ms)
                    )
                },
            )?;
            scale.subs.push((n, runs));
        }
    }
    Ok(scale)
}

/// `--warmup` then `--rounds` rounds of `one` per library, in alternating order, with a
/// progress line per run (unless `--json`); keeps the measured ones.
fn rounds<R>(
    cli: &Cli,
    mut one: impl FnMut(Lib) -> Res<R>,
    progress: impl Fn(&R) -> String,
) -> Res<ByLib<Vec<R>>> {
    let mut runs: ByLib<Vec<R>> = ByLib::default();
    for round in 0..cli.warmup + cli.rounds {
        for lib in order(round, cli.warmup) {
            let r = one(lib)?;
            if !cli.json {
                eprintln!("{} {}", round_label(round, cli.warmup), progress(&r));
            }
            if round >= cli.warmup {
                runs.of_mut(lib).push(r);
            }
            std::thread::sleep(SETTLE);
        }
    }
    Ok(runs)
}

fn round_label(round: u32, warmup: u32) -> String {
    if round >= warmup {
        format!("round {:>2}", round - warmup + 1)
    } else {
        "warm-up ".to_owned()
    }
}

/// One `conns` child, start to end.
fn conns_one(url: &str, tls_ca: Option<&Path>, lib: Lib, n: u64) -> Res<ConnsRun> {
    let out = child_command("conns", lib, n, url, tls_ca)?
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "the conns child ({}, {n} connections) failed ({}): {}",
            lib.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_start_matches("tether-compare: ")
        )
        .into());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .ok_or("the conns child printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

/// A `subs` child; killed on drop.
#[derive(Debug)]
struct SubsChild(Child);

impl Drop for SubsChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `subs` child: setup, the server's count, kill, restart, the count again.
fn subs_one(server: &mut tether_testkit::NatsServer, lib: Lib, n: u64) -> Res<SubsRun> {
    let own = server.num_subscriptions()?;
    let target = own + n;
    let mut child = SubsChild(
        child_command("subs", lib, n, &server.url(), None)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let mut stdin = child.0.stdin.take().ok_or("no stdin")?;
    let mut lines = std::io::BufReader::new(child.0.stdout.take().ok_or("no stdout")?).lines();
    let line = match lines.next() {
        Some(l) => l?,
        None => {
            return Err(format!(
                "the subs child ({}, {n} subscriptions) exited before its setup figures",
                lib.name()
            )
            .into())
        }
    };
    let mut run: SubsRun = serde_json::from_str(&line)?;
    // Its message came back through the last subscription, so the server has them all.
    let count = server.num_subscriptions()?;
    if count < target {
        return Err(format!(
            "after the subs child's setup the server counts {count} subscriptions, \
             expected at least {target} ({own} of its own + {n})"
        )
        .into());
    }

    server.kill();
    let addr = server.addr();
    let poller = std::thread::spawn(move || wait_accepting(addr, Instant::now() + SCALE_DEADLINE));
    server.restart()?;
    let accepting = poller.join().map_err(|_| "the accept poller panicked")??;
    let (all, first) = wait_subsz(server, own, target, accepting + SCALE_DEADLINE)?;
    let ms = |t: Instant| t.saturating_duration_since(accepting).as_secs_f64() * 1e3;
    run.resub = Some(Resub {
        resubscribe_ms: ms(all),
        first_seen_ms: first.map(ms),
        target,
    });

    writeln!(stdin, "DONE")?;
    stdin.flush()?;
    let status = child.0.wait()?;
    if !status.success() {
        return Err(format!("the subs child ({}) failed: {status}", lib.name()).into());
    }
    Ok(run)
}

/// When a connection to `addr` first reads INFO: the restarted server accepts.
fn wait_accepting(addr: SocketAddr, deadline: Instant) -> Res<Instant> {
    loop {
        let last;
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut head = [0u8; 5];
                match s.read_exact(&mut head) {
                    Ok(()) if &head == b"INFO " => return Ok(Instant::now()),
                    Ok(()) => last = format!("read {head:?} instead of INFO"),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(format!("the restarted server did not accept on {addr} ({last})").into());
        }
        std::thread::sleep(ACCEPT_POLL);
    }
}

/// Polls `/subsz` until it counts `target`; returns when the request that saw it was
/// sent, and when a request first saw more than the server's own `own`.
fn wait_subsz(
    server: &tether_testkit::NatsServer,
    own: u64,
    target: u64,
    deadline: Instant,
) -> Res<(Instant, Option<Instant>)> {
    let mut first = None;
    loop {
        let last;
        let sent = Instant::now();
        match server.num_subscriptions() {
            Ok(count) if count >= target => return Ok((sent, first.or(Some(sent)))),
            Ok(count) => {
                if count > own && first.is_none() {
                    first = Some(sent);
                }
                last = format!("{count} subscriptions");
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the client did not resubscribe within {SCALE_DEADLINE:?}: the server \
                 reports {last}, waiting for {target}"
            )
            .into());
        }
        std::thread::sleep(SUBSZ_POLL);
    }
}

impl Scale {
    /// The plot's groups: tether / async-nats of the medians, per N, of connect time,
    /// subscribe → live and RSS per connection (conns), and of setup time, RSS per
    /// subscription and resubscribe time (subs). All lower is better.
    pub(crate) fn plot_groups(&self) -> Vec<Group> {
        let mut groups = Vec::new();
        for (n, runs) in &self.conns {
            plot_rows(&mut groups, "conns", *n, runs, CONNS_PLOT);
        }
        for (n, runs) in &self.conns_tls {
            plot_rows(&mut groups, "conns tls", *n, runs, CONNS_PLOT);
        }
        for (n, runs) in &self.subs {
            plot_rows(&mut groups, "subs", *n, runs, SUBS_PLOT);
        }
        groups
    }
}

/// A bar of the plot: the metric's name, what below 1 means, the figure of one run.
type PlotRow<R> = (&'static str, &'static str, fn(&R) -> f64);

const CONNS_PLOT: &[PlotRow<ConnsRun>] = &[
    ("connect p50", BELOW_FASTER, |r| r.connect_p50_ms),
    ("sub→live p50", BELOW_FASTER, |r| r.sub_live_p50_ms),
    ("RSS/conn", BELOW_SMALLER, |r| r.rss_per_conn_kib),
];

const SUBS_PLOT: &[PlotRow<SubsRun>] = &[
    ("setup", BELOW_FASTER, |r| r.setup_ms),
    ("RSS/sub", BELOW_SMALLER, |r| r.rss_per_sub_bytes),
    ("resubscribe", BELOW_FASTER, |r| {
        r.resub.map_or(f64::NAN, |x| x.resubscribe_ms)
    }),
];

/// One group per row: tether / async-nats of the medians over `runs`.
fn plot_rows<R>(
    groups: &mut Vec<Group>,
    what: &str,
    n: u64,
    runs: &ByLib<Vec<R>>,
    rows: &[PlotRow<R>],
) {
    for &(metric, better, f) in rows {
        groups.push(Group {
            label: format!("{what} {}", group(n as f64)),
            better,
            metric,
            vs_async: med(runs.of(Lib::Tether), f) / med(runs.of(Lib::AsyncNats), f),
            vs_raw: None,
        });
    }
}

/// A row of the table: label, JSON key, the figure of one run.
type Row<R> = (&'static str, &'static str, fn(&R) -> f64);

const CONNS_ROWS: &[Row<ConnsRun>] = &[
    ("connect p50 ms", "connect_p50_ms", |r| r.connect_p50_ms),
    ("connect p90 ms", "connect_p90_ms", |r| r.connect_p90_ms),
    ("sub+flush p50 ms", "sub_flush_p50_ms", |r| {
        r.sub_flush_p50_ms
    }),
    ("sub→live p50 ms", "sub_live_p50_ms", |r| {
        r.sub_live_p50_ms
    }),
    ("RSS/conn KiB", "rss_per_conn_kib", |r| r.rss_per_conn_kib),
    ("threads", "threads", |r| r.threads_after as f64),
];

const SUBS_ROWS: &[Row<SubsRun>] = &[
    ("setup ms", "setup_ms", |r| r.setup_ms),
    ("setup→msg ms", "setup_msg_ms", |r| r.setup_msg_ms),
    ("RSS/sub B", "rss_per_sub_bytes", |r| r.rss_per_sub_bytes),
    ("resubscribe ms", "resubscribe_ms", |r| {
        r.resub.map_or(f64::NAN, |x| x.resubscribe_ms)
    }),
    ("first resub ms", "first_resub_ms", |r| {
        r.resub.and_then(|x| x.first_seen_ms).unwrap_or(f64::NAN)
    }),
];

fn med<R>(runs: &[R], f: fn(&R) -> f64) -> f64 {
    median(&runs.iter().map(f).collect::<Vec<_>>())
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 || (v.fract() == 0.0 && v.is_finite()) {
        group(v)
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The width of the label column: 32, or 36 with the longer `conns tls` labels.
fn label_width(s: &Scale) -> usize {
    if s.conns_tls.is_empty() {
        32
    } else {
        36
    }
}

fn rows_table<R>(
    o: &mut String,
    lw: usize,
    (what, n): (&str, u64),
    runs: &ByLib<Vec<R>>,
    rows: &[Row<R>],
) {
    use std::fmt::Write as _;
    for (label, _, f) in rows {
        let t = med(runs.of(Lib::Tether), *f);
        let a = med(runs.of(Lib::AsyncNats), *f);
        let _ = writeln!(
            o,
            "{:<lw$} {:>12} {:>12} {:>8.3}",
            format!("{what} {:<8} {label}", group(n as f64)),
            fmt(t),
            fmt(a),
            t / a
        );
    }
}

fn rounds_detail<R>(
    o: &mut String,
    lw: usize,
    (what, n): (&str, u64),
    runs: &ByLib<Vec<R>>,
    rows: &[Row<R>],
) {
    let lw = lw - 2;
    use std::fmt::Write as _;
    for (label, _, f) in rows {
        for lib in [Lib::Tether, Lib::AsyncNats] {
            let v: Vec<String> = runs.of(lib).iter().map(|r| fmt(f(r))).collect();
            let _ = writeln!(
                o,
                "  {:<lw$} {:<10} {}",
                format!("{what} {} {label}", group(n as f64)),
                lib.name(),
                v.join("  ")
            );
        }
    }
}

/// The scale part of the summary (empty when no scale workload ran).
pub(crate) fn scale_table(s: &Scale) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    if s.conns.is_empty() && s.conns_tls.is_empty() && s.subs.is_empty() {
        return o;
    }
    let lw = label_width(s);
    let _ = writeln!(
        o,
        "\nscale: one child process per library, N and round; median over {} rounds \
         (lower is better throughout)",
        s.rounds
    );
    let _ = writeln!(
        o,
        "{:<lw$} {:>12} {:>12} {:>8}",
        "workload", "tether", "async-nats", "ratio"
    );
    for (n, runs) in &s.conns {
        rows_table(&mut o, lw, ("conns", *n), runs, CONNS_ROWS);
    }
    for (n, runs) in &s.conns_tls {
        rows_table(&mut o, lw, ("conns tls", *n), runs, CONNS_ROWS);
    }
    for (n, runs) in &s.subs {
        rows_table(&mut o, lw, ("subs", *n), runs, SUBS_ROWS);
    }
    tls_cost_table(&mut o, s);
    if !s.conns_tls.is_empty() {
        let _ = writeln!(
            o,
            "\nconns tls: server {}, the same over TLS (a full TLS handshake per connect; \
             both libraries trust the run's CA only).",
            s.conns_tls_server
        );
    }
    if !s.conns.is_empty() {
        let _ = writeln!(
            o,
            "\nconns: server {}; N clients connected one after another with default options. \
             sub+flush: subscribe, then flush. async-nats 0.51's flush returns once its \
             connection task has written and flushed its buffer to the socket; it does not \
             wait for the server's PONG, while tether's waits for the PONG. sub→live is like for \
             like: a second subscription, then a publish to it and no flush, timed until that \
             message comes back through it (the server reads a connection in order). \
             RSS/conn: VmRSS growth over the baseline before the first connect, divided by N \
             (the subscription included); threads: the child's threads with all N connected.",
            s.conns_server
        );
    }
    if !s.subs.is_empty() {
        let _ = writeln!(
            o,
            "\nsubs: own server {} (SIGKILLed and restarted after each setup). setup: first \
             subscribe to flush returning (same flush caveat); setup→msg: to a message \
             through the last subscription. RSS/sub: VmRSS growth after the connect, \
             divided by N. resubscribe: from the restarted server answering with INFO to \
             its /subsz counting all N again (polled every {} ms); first resub: to its \
             /subsz counting any of them.",
            s.subs_server,
            SUBSZ_POLL.as_millis()
        );
    }
    let _ = writeln!(o, "\nscale per round (measured):");
    for (n, runs) in &s.conns {
        rounds_detail(&mut o, lw, ("conns", *n), runs, CONNS_ROWS);
    }
    for (n, runs) in &s.conns_tls {
        rounds_detail(&mut o, lw, ("conns tls", *n), runs, CONNS_ROWS);
    }
    for (n, runs) in &s.subs {
        rounds_detail(&mut o, lw, ("subs", *n), runs, SUBS_ROWS);
    }
    o
}

/// The conns rows whose TLS / plaintext ratio says what TLS costs a connection.
const CONNS_TLS_COST_ROWS: &[Row<ConnsRun>] = &[
    ("connect p50 ms", "connect_p50_ms", |r| r.connect_p50_ms),
    ("connect p90 ms", "connect_p90_ms", |r| r.connect_p90_ms),
    ("sub→live p50 ms", "sub_live_p50_ms", |r| {
        r.sub_live_p50_ms
    }),
    ("RSS/conn KiB", "rss_per_conn_kib", |r| r.rss_per_conn_kib),
];

/// Per N run both in plaintext and over TLS: the plaintext runs and the TLS ones.
fn tls_pairs(
    s: &Scale,
) -> impl Iterator<Item = (u64, &ByLib<Vec<ConnsRun>>, &ByLib<Vec<ConnsRun>>)> {
    s.conns_tls.iter().filter_map(|(n, tls)| {
        s.conns
            .iter()
            .find(|(m, _)| m == n)
            .map(|(_, plain)| (*n, plain, tls))
    })
}

/// With `--tls both`: each library's TLS / plaintext of the conns medians.
fn tls_cost_table(o: &mut String, s: &Scale) {
    use std::fmt::Write as _;
    let lw = label_width(s);
    let mut header = false;
    for (n, plain, tls) in tls_pairs(s) {
        if !header {
            header = true;
            let _ = writeln!(
                o,
                "\nconns TLS cost: TLS / plaintext of the medians, same run (above 1: TLS costs \
                 more)\n{:<lw$} {:>12} {:>12}",
                "", "tether", "async-nats"
            );
        }
        for (label, _, f) in CONNS_TLS_COST_ROWS {
            let ratio = |lib| med(tls.of(lib), *f) / med(plain.of(lib), *f);
            let _ = writeln!(
                o,
                "{:<lw$} {:>12.3} {:>12.3}",
                format!("conns {:<8} {label}", group(n as f64)),
                ratio(Lib::Tether),
                ratio(Lib::AsyncNats)
            );
        }
    }
}

fn rows_json<R: serde::Serialize>(runs: &ByLib<Vec<R>>, rows: &[Row<R>]) -> Value {
    let mut w = serde_json::Map::new();
    for lib in [Lib::Tether, Lib::AsyncNats] {
        let medians: serde_json::Map<String, Value> = rows
            .iter()
            .map(|(_, key, f)| ((*key).to_owned(), json!(med(runs.of(lib), *f))))
            .collect();
        w.insert(
            lib.key().to_owned(),
            json!({ "median": medians, "rounds": runs.of(lib) }),
        );
    }
    let ratios: serde_json::Map<String, Value> = rows
        .iter()
        .map(|(_, key, f)| {
            (
                (*key).to_owned(),
                json!(med(runs.of(Lib::Tether), *f) / med(runs.of(Lib::AsyncNats), *f)),
            )
        })
        .collect();
    w.insert("ratio".to_owned(), Value::Object(ratios));
    Value::Object(w)
}

/// Adds the scale workloads to `out["workloads"]` (nothing when none ran).
pub(crate) fn add_scale_json(s: &Scale, out: &mut Value) {
    let Some(workloads) = out.get_mut("workloads").and_then(Value::as_object_mut) else {
        return;
    };
    if !s.conns.is_empty() {
        let by_n: serde_json::Map<String, Value> = s
            .conns
            .iter()
            .map(|(n, runs)| (n.to_string(), rows_json(runs, CONNS_ROWS)))
            .collect();
        workloads.insert(
            "conns".to_owned(),
            json!({
                "server": s.conns_server,
                "async_nats_flush": "returns once written to the socket, without the server's PONG",
                "ratio_of": "tether / async-nats of the medians; lower is better",
                "n": by_n,
            }),
        );
    }
    if !s.conns_tls.is_empty() {
        let by_n: serde_json::Map<String, Value> = s
            .conns_tls
            .iter()
            .map(|(n, runs)| (n.to_string(), rows_json(runs, CONNS_ROWS)))
            .collect();
        let tls_cost: serde_json::Map<String, Value> = tls_pairs(s)
            .map(|(n, plain, tls)| {
                let per_lib = |lib: Lib| -> serde_json::Map<String, Value> {
                    CONNS_TLS_COST_ROWS
                        .iter()
                        .map(|(_, key, f)| {
                            (
                                (*key).to_owned(),
                                json!(med(tls.of(lib), *f) / med(plain.of(lib), *f)),
                            )
                        })
                        .collect()
                };
                (
                    n.to_string(),
                    json!({
                        "tether": per_lib(Lib::Tether),
                        "async_nats": per_lib(Lib::AsyncNats),
                    }),
                )
            })
            .collect();
        let mut entry = json!({
            "server": s.conns_tls_server,
            "tls": true,
            "async_nats_flush": "returns once written to the socket, without the server's PONG",
            "ratio_of": "tether / async-nats of the medians; lower is better",
            "n": by_n,
        });
        if !tls_cost.is_empty() {
            entry["tls_cost"] = json!({
                "ratio_of": "TLS / plaintext of each library's medians, same run; above 1 TLS costs more",
                "n": tls_cost,
            });
        }
        workloads.insert("conns_tls".to_owned(), entry);
    }
    if !s.subs.is_empty() {
        let by_n: serde_json::Map<String, Value> = s
            .subs
            .iter()
            .map(|(n, runs)| (n.to_string(), rows_json(runs, SUBS_ROWS)))
            .collect();
        workloads.insert(
            "subs".to_owned(),
            json!({
                "server": s.subs_server,
                "subsz_poll_ms": SUBSZ_POLL.as_millis() as u64,
                "ratio_of": "tether / async-nats of the medians; lower is better",
                "n": by_n,
            }),
        );
    }
}
