//! `tether bench MODE --msgs N --size S [--subject SUBJECT] [--json]`
//!
//! The JetStream modes (`js-pub`, `js-consume`) are in `bench/js.rs`.
//!
//! Messages go to `--subject` (default: a subject unique to the run); the end marker
//! always goes to a subject unique to the run, so the subject carries exactly the N
//! messages. Every run ends when the last message is observed, never on a flush:
//! - `pub`: one connection publishes N messages (one payload, reused), then a marker
//!   message that the same connection receives on its own subscription (subscribed and
//!   confirmed before the clock starts). The server processes a connection's bytes in
//!   order, so the marker arriving means every message before it was processed.
//! - `pubsub`: a subscriber connection counts what one publisher connection sends; the
//!   run ends when it has all N, or when the marker arrives (then `received` < N tells
//!   what was lost, e.g. to a slow consumer). Data and marker subscriptions share the
//!   subscriber's connection, whose messages are queued in the order they arrive: when
//!   the marker is taken, every data message before it is queued (or was dropped).
//! - `reqrep`: sequential requests to an echo responder on its own connection (an
//!   in-process task); one untimed warm-up request first sets up the request inbox.
//!
//! `--confirm-interval 20ms,1s` sets the client's `confirm_interval` (how often a PING
//! confirms what was written) and, with several values, compares them in one invocation:
//! `--rounds` rounds (5 by default) each run every value once against the same server,
//! in alternating order (ABBA…) so warm-up and drift fall on every value alike. Each run
//! is a fresh connection; the report gives, per value, the median msgs/s of its runs,
//! its ratio to the first value's median, and the median of its per-round ratios to the
//! first value (`paired_ratio`: each pair ran back to back, so load from other processes
//! shifts both alike). Without the flag the library default is used and the output is
//! one run's report as before.
//!
//! Measured when the default went from 1 s to 20 ms (release build, nats-server 2.15.1,
//! 2 vCPUs shared with other work): `bench pub --msgs 5000000 --size 16
//! --confirm-interval 20ms,1s --rounds 60` gave medians of 3,661,293 msgs/s (20 ms) and
//! 3,725,262 (1 s), a per-round ratio of 1.0077; over 160 rounds of 3 and 5 million
//! messages the per-round ratio was 1.0045 (95 % bootstrap interval 0.995–1.017), so the
//! cost is under 2 %. At these rates the 1 MiB trigger already sends a PING every 20 ms
//! or sooner (in instrumented runs of 5 million, the timer added at most 5 PINGs to
//! ~100); the timer adds PINGs only where the byte trigger is slower, at most 50 a second.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tether::{Client, ConnectOptions, Subscriber};
use tether_testkit::{NatsServer, TestkitError};

use crate::error::Context;
use crate::{util, CliError, Global};

mod js;

/// Default --msgs for `pub` and `pubsub`.
pub(crate) const DEFAULT_MSGS: u64 = 1_000_000;
/// Default --msgs for `reqrep`.
pub(crate) const DEFAULT_REQREP_MSGS: u64 = 10_000;
/// How long to wait for the end marker after the last publish.
const MARKER_TIMEOUT: Duration = Duration::from_secs(60);
/// `pubsub`: the subscriber gives up after this long without a message.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// `reqrep`: timeout of each request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The progress bar is updated every this many messages.
const PROGRESS_STEP: u64 = 4096;
/// Outbound buffer of the bench connections.
const BENCH_BUFFER_BYTES: usize = 64 * 1024 * 1024;
/// Default --rounds when several --confirm-interval values are compared.
pub(crate) const DEFAULT_COMPARE_ROUNDS: u32 = 5;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// Publish only; ends on a marker received by the publisher's own subscription
    Pub,
    /// One publisher, one subscriber connection; counts what arrives
    Pubsub,
    /// Sequential request-reply to an echo responder; latency percentiles
    Reqrep,
    /// JetStream publish with acks, a window of --window outstanding, to a memory stream
    #[serde(rename = "js-pub")]
    JsPub,
    /// JetStream pull consumer draining a memory stream of --msgs messages, acking each
    #[serde(rename = "js-consume")]
    JsConsume,
}

impl Mode {
    /// Whether the mode needs JetStream.
    pub(crate) fn is_js(self) -> bool {
        matches!(self, Mode::JsPub | Mode::JsConsume)
    }
}

/// Measure throughput and latency against a NATS server
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tether bench pub                            1,000,000 messages of 16 bytes
  tether bench pubsub --msgs 200000 --size 1024
  tether bench reqrep --msgs 5000 --json
  tether bench pub --server nats://10.0.0.5:4222
  tether bench pubsub --subject orders.eu.new.priority.high
  tether bench pub --msgs 5000000 --confirm-interval 20ms,1s --rounds 7
  tether bench pub --tls                      over TLS, against a local TLS server
  tether bench reqrep --server tls://nats.example:4222 --tls-ca ca.pem
  tether bench js-pub --window 256            JetStream publish, 256 acks outstanding
  tether bench js-consume --msgs 1000000      fill a memory stream, drain it by pull

Without --server (or NATS_URL) the bench starts a local nats-server (found through
NATS_SERVER_BIN or PATH, 2.10 or newer) and stops it afterwards; with --tls that server
serves TLS with certificates from a throwaway CA made for the run, which the bench's
clients trust. Against a server of your own, give a tls:// URL and the global TLS and
credential options (--tls-ca, --tls-cert/--tls-key, --token, --user/--password...).
MB/s counts payload bytes (10^6 bytes per MB). With --json, one JSON object is printed
on stdout: mode, subject, msgs, size, secs, msgs_per_sec, mb_per_sec, plus received and
dropped for pubsub, p50_us, p90_us, p99_us for reqrep, window and stored for js-pub,
batch, ack_policy, received and pull_events for js-consume (and confirm_interval_ms when
--confirm-interval gives one value).
js-pub and js-consume need JetStream: the local nats-server is started with -js (a
store in a temp dir); against --server, each run creates a memory stream of its own
capturing the subject (TETHER_BENCH_...) and deletes it afterwards. js-pub times from
the first publish to the last ack, with at most --window acks outstanding (the oldest
is awaited when the window is full), then checks that the stream holds every message.
js-consume fills the stream first (untimed, with the same window), then times a
durable pull consumer (explicit acks, each message acked as it arrives) from its first
pull request to the last message; the connection's close then sends the last acks.
With several --confirm-interval values (or --rounds above 1) the runs are interleaved
(ABBA...) and the summary gives each value's median msgs/s and its ratio to the first
value's (list the baseline first), also as the median of the per-round ratios, which
a drifting machine load disturbs less; each run is also logged on stderr. A value given
twice (20ms,20ms) shows the noise. --json then prints one object: mode, subject, msgs,
size, rounds, cadences (per value: confirm_interval_ms, msgs_per_sec of each of its
runs, median_msgs_per_sec, min_msgs_per_sec, max_msgs_per_sec, median_mb_per_sec,
ratio, paired_ratio) and runs (every run's report in the order run, with round and
confirm_interval_ms).")]
pub(crate) struct Args {
    /// What to measure
    #[arg(value_enum)]
    pub mode: Mode,
    /// Number of messages (requests for reqrep) [default: 1000000; 10000 for reqrep]
    #[arg(long, short = 'n')]
    pub msgs: Option<u64>,
    /// Payload size in bytes [default: 16; 128 for js-pub and js-consume]
    #[arg(long)]
    pub size: Option<usize>,
    /// Subject to publish to (requests go to it for reqrep; no wildcards) [default: one
    /// unique to the run, tether.bench.<pid>.<nanos>.data, or .echo for reqrep]. The
    /// server's cost per message grows with the frame (subject and payload), so a short
    /// subject shows mostly the client's cost rather than the server's
    #[arg(long, value_name = "SUBJECT")]
    pub subject: Option<String>,
    /// Print one JSON object instead of the human summary (and no progress bar)
    #[arg(long)]
    pub json: bool,
    /// The client's confirm_interval (a PING confirming what was written at least this
    /// often while there is unconfirmed data); several, comma-separated (e.g. 20ms,1s),
    /// are compared in interleaved rounds [default: the library's, 20ms]
    #[arg(
        long,
        value_name = "DURATION[,DURATION...]",
        value_delimiter = ',',
        value_parser = util::parse_duration
    )]
    pub confirm_interval: Vec<Duration>,
    /// Runs of each --confirm-interval value, interleaved; the summary gives the median
    /// [default: 1; 5 with several --confirm-interval values]
    #[arg(long, value_name = "N")]
    pub rounds: Option<u32>,
    /// Start the local nats-server (no --server) with TLS, with certificates from a
    /// throwaway CA that the bench trusts (with --tls-first the server wants the TLS
    /// handshake first) [for a server of your own: a tls:// --server URL and --tls-ca]
    #[arg(long)]
    pub tls: bool,
    /// js-pub and js-consume (its fill): publish acks outstanding at once
    #[arg(long, default_value_t = js::DEFAULT_WINDOW, value_name = "N")]
    pub window: usize,
    /// js-consume: messages asked for per pull request
    #[arg(long, default_value_t = tether::jetstream::DEFAULT_BATCH, value_name = "N")]
    pub batch: usize,
}

/// The result of a run.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub mode: Mode,
    /// The subject the messages (requests) went to.
    pub subject: String,
    pub msgs: u64,
    pub size: usize,
    pub secs: f64,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p90_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<f64>,
    /// The confirm_interval of the run, when --confirm-interval set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_interval_ms: Option<f64>,
    /// The round of the run (from 1), in a comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    /// js-pub: publish acks outstanding at most.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    /// js-pub: messages the stream held at the end (every one sent, if all is well).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored: Option<u64>,
    /// js-consume: messages per pull request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// js-consume: the consumer's ack policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_policy: Option<&'static str>,
    /// js-consume: pull events that were not messages (missed heartbeats, statuses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_events: Option<u64>,
}

impl Report {
    fn new(mode: Mode, subject: &str, msgs: u64, size: usize, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let msgs_per_sec = msgs as f64 / secs;
        Self {
            mode,
            subject: subject.to_owned(),
            msgs,
            size,
            secs,
            msgs_per_sec,
            mb_per_sec: msgs_per_sec * size as f64 / 1e6,
            received: None,
            dropped: None,
            p50_us: None,
            p90_us: None,
            p99_us: None,
            confirm_interval_ms: None,
            round: None,
            window: None,
            stored: None,
            batch: None,
            ack_policy: None,
            pull_events: None,
        }
    }

    fn human(&self) -> String {
        let mode = mode_name(self.mode);
        let mut s = format!(
            "bench {mode} on {}: {} msgs of {} B in {:.3} s: {} msgs/s, {:.2} MB/s",
            self.subject,
            group(self.msgs),
            self.size,
            self.secs,
            group(self.msgs_per_sec.round() as u64),
            self.mb_per_sec
        );
        if let (Some(w), Some(st)) = (self.window, self.stored) {
            let _ = write!(
                s,
                "\n  window of {w} acks outstanding; the stream holds {} messages",
                group(st)
            );
        }
        if let (Some(b), Some(ack), Some(r)) = (self.batch, self.ack_policy, self.received) {
            let _ = write!(
                s,
                "\n  pull batch {b}, ack {ack}; received {} of {} ({} pull events)",
                group(r),
                group(self.msgs),
                self.pull_events.unwrap_or(0)
            );
        } else if let Some(r) = self.received {
            let _ = write!(
                s,
                "\n  received {} of {} ({} dropped by the client)",
                group(r),
                group(self.msgs),
                self.dropped.unwrap_or(0)
            );
        }
        if let (Some(p50), Some(p90), Some(p99)) = (self.p50_us, self.p90_us, self.p99_us) {
            let _ = write!(
                s,
                "\n  latency: p50 {p50:.1} µs, p90 {p90:.1} µs, p99 {p99:.1} µs"
            );
        }
        s
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Pub => "pub",
        Mode::Pubsub => "pubsub",
        Mode::Reqrep => "reqrep",
        Mode::JsPub => "js-pub",
        Mode::JsConsume => "js-consume",
    }
}

/// 1234567 → "1,234,567".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) async fn run(args: Args, global: &Global) -> Result<(), CliError> {
    let msgs = args.msgs.unwrap_or(match args.mode {
        Mode::Reqrep => DEFAULT_REQREP_MSGS,
        _ => DEFAULT_MSGS,
    });
    if msgs == 0 {
        return Err(CliError::new("--msgs must be at least 1"));
    }
    if let Some(subject) = &args.subject {
        util::check_publish_subject("--subject", subject)?;
    }
    let size = args.size.unwrap_or(if args.mode.is_js() {
        js::DEFAULT_SIZE
    } else {
        16
    });
    if args.mode.is_js() {
        js::check(&args)?;
    }
    let prefix = unique_prefix();
    let subject = args.subject.clone().unwrap_or_else(|| match args.mode {
        Mode::Reqrep => format!("{prefix}.echo"),
        _ => format!("{prefix}.data"),
    });
    let marker = format!("{prefix}.end");
    let cadences = cadences(&args.confirm_interval)?;
    let rounds = args.rounds.unwrap_or(if cadences.len() > 1 {
        DEFAULT_COMPARE_ROUNDS
    } else {
        1
    });
    if rounds == 0 {
        return Err(CliError::new("--rounds must be at least 1"));
    }
    let mut local = None;
    // The local server's certificates (with --tls): they live until the run ends.
    let mut certs = None;
    let url = if let Some(url) = &global.server {
        if args.tls {
            util::check_local_tls(global)?;
        }
        url.clone()
    } else {
        if args.tls {
            util::check_local_tls(global)?;
        }
        let (tls, tls_first, jetstream) = (args.tls, global.tls_first, args.mode.is_js());
        let (server, local_certs) = tokio::task::spawn_blocking(move || {
            let (mut cfg, certs) = util::local_server_config(tls, tls_first)?;
            cfg.jetstream = jetstream;
            Ok::<_, TestkitError>((NatsServer::start_with(cfg)?, certs))
        })
        .await
        .map_err(|e| CliError::new(format!("starting a local nats-server: {e}")))?
        .map_err(local_server_error)?;
        eprintln!(
            "bench: no --server given; started a local nats-server on {}",
            server.url()
        );
        let url = server.url();
        local = Some(server);
        certs = local_certs;
        url
    };
    let plan = Plan {
        mode: args.mode,
        global,
        local_ca: certs.as_ref().map(|c| c.ca_file()),
        url: &url,
        subject: &subject,
        marker: &marker,
        msgs,
        size,
        window: args.window,
        batch: args.batch,
        json: args.json,
    };
    let result = if cadences.len() == 1 && rounds == 1 {
        plan.run_once(cadences[0]).await.map(Output::One)
    } else {
        plan.compare(&cadences, rounds).await.map(Output::Compared)
    };
    if let Some(mut server) = local {
        tokio::task::spawn_blocking(move || server.stop())
            .await
            .map_err(|e| CliError::new(format!("stopping the local nats-server: {e}")))?;
    }
    let (json, human) = match result? {
        Output::One(report) => (serde_json::to_string(&report), report.human()),
        Output::Compared(c) => (serde_json::to_string(&c), c.human()),
    };
    if args.json {
        println!("{}", json.context("encoding the report")?);
    } else {
        println!("{human}");
    }
    Ok(())
}

/// The --confirm-interval values, checked; one `None` (the library's default) when none
/// was given.
fn cadences(given: &[Duration]) -> Result<Vec<Option<Duration>>, CliError> {
    if given.is_empty() {
        return Ok(vec![None]);
    }
    for d in given {
        if d.is_zero() || *d > tether::options::MAX_TIMEOUT {
            return Err(CliError::new(format!(
                "--confirm-interval: {d:?} is out of range (above 0, at most {:?})",
                tether::options::MAX_TIMEOUT
            )));
        }
    }
    Ok(given.iter().copied().map(Some).collect())
}

/// What [`run`] prints.
enum Output {
    One(Report),
    Compared(Comparison),
}

/// What every run of one invocation shares.
struct Plan<'a> {
    mode: Mode,
    /// The credentials and TLS options given.
    global: &'a Global,
    /// The CA of the local TLS server (`--tls`).
    local_ca: Option<std::path::PathBuf>,
    url: &'a str,
    subject: &'a str,
    marker: &'a str,
    msgs: u64,
    size: usize,
    /// js-pub, js-consume: publish acks outstanding at most.
    window: usize,
    /// js-consume: messages per pull request.
    batch: usize,
    json: bool,
}

impl Plan<'_> {
    /// One run on fresh connections, with `confirm` as their confirm_interval (the
    /// library's default when `None`).
    async fn run_once(&self, confirm: Option<Duration>) -> Result<Report, CliError> {
        let mut opts = bench_options(self.msgs, self.size, self.global, self.local_ca.as_deref())?;
        if let Some(d) = confirm {
            opts = opts.confirm_interval(d);
        }
        let progress = progress_bar(self.msgs, self.json);
        let (url, subject, marker, msgs, size) =
            (self.url, self.subject, self.marker, self.msgs, self.size);
        let result = match self.mode {
            Mode::Pub => bench_pub(url, subject, marker, msgs, size, opts, &progress).await,
            Mode::Pubsub => bench_pubsub(url, subject, marker, msgs, size, opts, &progress).await,
            Mode::Reqrep => bench_reqrep(url, subject, msgs, size, opts, &progress).await,
            Mode::JsPub => {
                js::bench_js_pub(url, subject, msgs, size, self.window, opts, &progress).await
            }
            Mode::JsConsume => {
                let shape = js::ConsumeShape {
                    window: self.window,
                    batch: self.batch,
                };
                js::bench_js_consume(url, subject, msgs, size, shape, opts, &progress).await
            }
        };
        progress.finish_and_clear();
        let mut report = result?;
        report.confirm_interval_ms = confirm.map(millis);
        Ok(report)
    }

    /// `rounds` rounds, each running every cadence once, in alternating order.
    async fn compare(
        &self,
        cadences: &[Option<Duration>],
        rounds: u32,
    ) -> Result<Comparison, CliError> {
        let mut runs = Vec::new();
        // Per value (by position: `20ms,20ms` is an A/A run showing the noise), its runs.
        let mut mine: Vec<Vec<usize>> = vec![Vec::new(); cadences.len()];
        for round in 1..=rounds {
            let mut order: Vec<usize> = (0..cadences.len()).collect();
            if round % 2 == 0 {
                order.reverse();
            }
            for i in order {
                let mut report = self.run_once(cadences[i]).await?;
                report.round = Some(round);
                report.confirm_interval_ms = Some(millis(resolved(cadences[i])));
                eprintln!(
                    "bench: round {round}/{rounds}, confirm_interval {:?}: {} msgs/s",
                    resolved(cadences[i]),
                    group(report.msgs_per_sec.round() as u64)
                );
                mine[i].push(runs.len());
                runs.push(report);
            }
        }
        let mut cadences: Vec<CadenceSummary> = cadences
            .iter()
            .zip(&mine)
            .map(|(c, runs_of)| {
                let of = runs_of.iter().map(|&i| &runs[i]);
                CadenceSummary::of(millis(resolved(*c)), of)
            })
            .collect();
        // Against the first value: the ratio of the medians, and the median of the
        // per-round ratios (each run against the first value's run of the same round, run
        // right next to it and so under much the same load from the rest of the machine).
        let base = cadences
            .first()
            .map(|c| (c.median_msgs_per_sec.max(1e-9), c.msgs_per_sec.clone()));
        if let Some((base_median, base_rounds)) = base {
            for c in &mut cadences {
                c.ratio = c.median_msgs_per_sec / base_median;
                let per_round: Vec<f64> = c
                    .msgs_per_sec
                    .iter()
                    .zip(&base_rounds)
                    .map(|(x, b)| x / b.max(1e-9))
                    .collect();
                c.paired_ratio = median(&per_round);
            }
        }
        Ok(Comparison {
            mode: self.mode,
            subject: self.subject.to_owned(),
            msgs: self.msgs,
            size: self.size,
            rounds,
            cadences,
            runs,
        })
    }
}

/// The confirm_interval a run used.
fn resolved(confirm: Option<Duration>) -> Duration {
    confirm.unwrap_or(tether::options::DEFAULT_CONFIRM_INTERVAL)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs of several confirm_interval values, interleaved.
#[derive(Debug, Serialize)]
pub(crate) struct Comparison {
    pub mode: Mode,
    pub subject: String,
    pub msgs: u64,
    pub size: usize,
    /// Runs of each value.
    pub rounds: u32,
    /// One summary per value, in the order given.
    pub cadences: Vec<CadenceSummary>,
    /// Every run, in the order run.
    pub runs: Vec<Report>,
}

/// The runs of one confirm_interval value.
#[derive(Debug, Serialize)]
pub(crate) struct CadenceSummary {
    pub confirm_interval_ms: f64,
    /// msgs/s of each run, in the order run.
    pub msgs_per_sec: Vec<f64>,
    pub median_msgs_per_sec: f64,
    pub min_msgs_per_sec: f64,
    pub max_msgs_per_sec: f64,
    pub median_mb_per_sec: f64,
    /// The median msgs/s over the first value's.
    pub ratio: f64,
    /// The median over the rounds of this value's msgs/s over the first value's in the
    /// same round: steadier than `ratio` on a machine whose load drifts.
    pub paired_ratio: f64,
}

impl CadenceSummary {
    /// The summary of one value's runs (the ratio is filled in later).
    fn of<'a>(confirm_interval_ms: f64, runs: impl Iterator<Item = &'a Report>) -> Self {
        let (rates, mb): (Vec<f64>, Vec<f64>) =
            runs.map(|r| (r.msgs_per_sec, r.mb_per_sec)).unzip();
        Self {
            confirm_interval_ms,
            median_msgs_per_sec: median(&rates),
            min_msgs_per_sec: rates.iter().copied().fold(f64::INFINITY, f64::min),
            max_msgs_per_sec: rates.iter().copied().fold(0.0, f64::max),
            median_mb_per_sec: median(&mb),
            msgs_per_sec: rates,
            ratio: 1.0,
            paired_ratio: 1.0,
        }
    }
}

/// The median (the mean of the middle two for an even count); 0 for none.
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

impl Comparison {
    fn human(&self) -> String {
        let mut s = format!(
            "bench {} on {}: {} msgs of {} B, {} round{} per confirm_interval, interleaved",
            mode_name(self.mode),
            self.subject,
            group(self.msgs),
            self.size,
            self.rounds,
            if self.rounds == 1 { "" } else { "s" }
        );
        let first = self.cadences.first().map(|c| c.confirm_interval_ms);
        for (i, c) in self.cadences.iter().enumerate() {
            let _ = write!(
                s,
                "\n  confirm_interval {:?}: median {} msgs/s (min {}, max {}), {:.2} MB/s",
                Duration::from_secs_f64(c.confirm_interval_ms / 1e3),
                group(c.median_msgs_per_sec.round() as u64),
                group(c.min_msgs_per_sec.round() as u64),
                group(c.max_msgs_per_sec.round() as u64),
                c.median_mb_per_sec
            );
            if let Some(f) = first.filter(|_| i > 0) {
                let _ = write!(
                    s,
                    "; ratio {:.4} to {:?} (median of the per-round ratios {:.4})",
                    c.ratio,
                    Duration::from_secs_f64(f / 1e3),
                    c.paired_ratio
                );
            }
        }
        s
    }
}

/// One line, with the server's log sent to the debug log instead.
fn local_server_error(e: TestkitError) -> CliError {
    let text = match e {
        TestkitError::NotReady { name, reason, log } => {
            tracing::debug!(%log, "log of the local nats-server");
            format!("nats-server {name} not ready: {reason}")
        }
        other => other.to_string(),
    };
    CliError::new(format!(
        "no --server given and could not start a local nats-server: {text}"
    ))
}

fn progress_bar(total: u64, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(8));
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>10} [{bar:40}] {human_pos}/{human_len} {per_sec:>14} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The bench connections' options: buffers and pending limits for `msgs` messages of
/// `size` bytes, the credentials and TLS options given, and `local_ca` (the local TLS
/// server's CA) to trust.
fn bench_options(
    msgs: u64,
    size: usize,
    global: &Global,
    local_ca: Option<&Path>,
) -> Result<ConnectOptions, CliError> {
    let msgs_limit = usize::try_from(msgs)
        .unwrap_or(usize::MAX)
        .saturating_add(16);
    // Header-less payloads: the pending byte count is the payload size.
    let bytes_limit = msgs_limit
        .saturating_mul(size.max(1))
        .max(tether::options::DEFAULT_PENDING_BYTES);
    let opts = global.apply(
        ConnectOptions::new()
            .outbound_buffer(BENCH_BUFFER_BYTES, tether::options::DEFAULT_BUFFER_MSGS)
            .pending_limits(msgs_limit, bytes_limit),
    )?;
    Ok(match local_ca {
        Some(ca) => opts.tls_ca_file(ca),
        None => opts,
    })
}

/// A subject prefix no other run shares.
fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("tether.bench.{}.{nanos}", std::process::id())
}

async fn publish_all(
    client: &Client,
    subject: &str,
    payload: &Bytes,
    msgs: u64,
    progress: Option<&ProgressBar>,
) -> Result<(), CliError> {
    for i in 0..msgs {
        client
            .publish(subject, payload)
            .await
            .with_context_fn(|| format!("publish #{} of {msgs} to {subject}", i + 1))?;
        if let Some(p) = progress {
            if i % PROGRESS_STEP == 0 {
                p.set_position(i);
            }
        }
    }
    Ok(())
}

trait WithContextFn<T> {
    fn with_context_fn(self, f: impl FnOnce() -> String) -> Result<T, CliError>;
}

impl<T, E: std::fmt::Display> WithContextFn<T> for Result<T, E> {
    fn with_context_fn(self, f: impl FnOnce() -> String) -> Result<T, CliError> {
        self.map_err(|e| CliError::new(format!("{}: {e}", f())))
    }
}

/// A fresh connection to `url` with a subscription to `subject` the server has confirmed;
/// an error says `what` was being done.
async fn connect_subscribed(
    url: &str,
    opts: ConnectOptions,
    subject: &str,
    what: &str,
) -> Result<(Client, Subscriber), CliError> {
    let client = util::connect(url, opts).await?;
    let sub = util::subscribe_confirmed(&client, subject, None, what).await?;
    Ok((client, sub))
}

async fn bench_pub(
    url: &str,
    data: &str,
    end: &str,
    msgs: u64,
    size: usize,
    opts: ConnectOptions,
    progress: &ProgressBar,
) -> Result<Report, CliError> {
    let (client, mut marker) =
        connect_subscribed(url, opts, end, "subscribing to the marker").await?;
    let payload = Bytes::from(vec![b'x'; size]);
    progress.set_message("publishing");

    let start = Instant::now();
    publish_all(&client, data, &payload, msgs, Some(progress)).await?;
    client
        .publish(end, b"")
        .await
        .context("publishing the end marker")?;
    progress.set_position(msgs);
    progress.set_message("draining");
    match tokio::time::timeout(MARKER_TIMEOUT, marker.next()).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(CliError::new(format!(
                "the marker subscription ended before the marker arrived ({})",
                marker
                    .error()
                    .map_or_else(|| "connection closed".to_owned(), |e| e.to_string())
            )))
        }
        Err(_) => {
            return Err(CliError::new(format!(
                "the end marker did not come back within {MARKER_TIMEOUT:?}"
            )))
        }
    }
    let elapsed = start.elapsed();
    client.close().await;
    Ok(Report::new(Mode::Pub, data, msgs, size, elapsed))
}

async fn bench_pubsub(
    url: &str,
    data: &str,
    end: &str,
    msgs: u64,
    size: usize,
    opts: ConnectOptions,
    progress: &ProgressBar,
) -> Result<Report, CliError> {
    let sub_client = util::connect(url, opts.clone()).await?;
    let pub_client = util::connect(url, opts).await?;
    let mut sub = util::subscribe(&sub_client, data, None, "subscribing").await?;
    let mut marker =
        util::subscribe_confirmed(&sub_client, end, None, "subscribing to the marker").await?;
    let payload = Bytes::from(vec![b'x'; size]);
    progress.set_message("receiving");

    /// What the subscriber connection gave next.
    enum Next {
        Data,
        Marker,
        Ended,
    }
    let counter_progress = progress.clone();
    let counter = tokio::spawn(async move {
        let mut received = 0u64;
        loop {
            let next = tokio::time::timeout(IDLE_TIMEOUT, async {
                tokio::select! {
                    biased;
                    m = sub.next() => if m.is_some() { Next::Data } else { Next::Ended },
                    m = marker.next() => if m.is_some() { Next::Marker } else { Next::Ended },
                }
            });
            match next.await {
                Ok(Next::Data) => {
                    received += 1;
                    if received % PROGRESS_STEP == 0 {
                        counter_progress.set_position(received);
                    }
                    if received == msgs {
                        break;
                    }
                }
                Ok(Next::Marker) => {
                    // Data that arrived before the marker is queued already.
                    while let Some(Some(_)) = sub.next().now_or_never() {
                        received += 1;
                    }
                    break;
                }
                Ok(Next::Ended) => {
                    tracing::warn!(received, "the subscription ended early");
                    break;
                }
                Err(_) => {
                    tracing::warn!(
                        received,
                        "no message for {IDLE_TIMEOUT:?}; the marker was lost, ending the run"
                    );
                    break;
                }
            }
        }
        (received, Instant::now(), sub.dropped())
    });

    let start = Instant::now();
    publish_all(&pub_client, data, &payload, msgs, None).await?;
    pub_client
        .publish(end, b"")
        .await
        .context("publishing the end marker")?;
    let (received, end_at, dropped) = counter
        .await
        .map_err(|e| CliError::new(format!("the subscriber task failed: {e}")))?;
    let elapsed = end_at.duration_since(start);
    pub_client.close().await;
    sub_client.close().await;
    let mut report = Report::new(Mode::Pubsub, data, msgs, size, elapsed);
    report.received = Some(received);
    report.dropped = Some(dropped);
    if received < msgs {
        tracing::warn!(
            received,
            msgs,
            dropped,
            "the subscriber did not receive every message"
        );
    }
    Ok(report)
}

async fn bench_reqrep(
    url: &str,
    subject: &str,
    msgs: u64,
    size: usize,
    opts: ConnectOptions,
    progress: &ProgressBar,
) -> Result<Report, CliError> {
    let (responder, mut requests) =
        connect_subscribed(url, opts.clone(), subject, "subscribing the echo responder").await?;
    let echo_client = responder.clone();
    let echo = tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            if let Some(reply) = &m.reply {
                if let Err(e) = echo_client.publish(reply, &m.payload).await {
                    tracing::warn!(error = %e, "the echo responder could not reply");
                }
            }
        }
    });

    let requester = util::connect(url, opts).await?;
    let payload = Bytes::from(vec![b'x'; size]);
    requester
        .request_with(subject, None, &payload, REQUEST_TIMEOUT)
        .await
        .context("warm-up request")?;
    progress.set_message("requests");
    let mut latencies = Vec::with_capacity(usize::try_from(msgs).unwrap_or(0));
    let start = Instant::now();
    for i in 0..msgs {
        let t = Instant::now();
        let reply = requester
            .request_with(subject, None, &payload, REQUEST_TIMEOUT)
            .await
            .with_context_fn(|| format!("request #{} of {msgs}", i + 1))?;
        latencies.push(t.elapsed());
        if reply.payload.len() != size {
            return Err(CliError::new(format!(
                "request #{}: the echo came back with {} bytes instead of {size}",
                i + 1,
                reply.payload.len()
            )));
        }
        if i % 256 == 0 {
            progress.set_position(i);
        }
    }
    let elapsed = start.elapsed();
    requester.close().await;
    responder.close().await;
    if tokio::time::timeout(Duration::from_secs(5), echo)
        .await
        .is_err()
    {
        tracing::warn!("the echo responder did not stop after close");
    }
    latencies.sort_unstable();
    let mut report = Report::new(Mode::Reqrep, subject, msgs, size, elapsed);
    report.p50_us = Some(percentile_us(&latencies, 50.0));
    report.p90_us = Some(percentile_us(&latencies, 90.0));
    report.p99_us = Some(percentile_us(&latencies, 99.0));
    Ok(report)
}

/// Nearest-rank percentile of sorted samples, in µs.
fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    sorted[idx].as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::{group, median, percentile_us};
    use std::time::Duration;

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
    }

    #[test]
    fn medians() {
        assert!(median(&[]).abs() < 1e-9);
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
        assert!((median(&[4.0, 1.0, 3.0, 2.0]) - 2.5).abs() < 1e-9);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert!((percentile_us(&v, 50.0) - 50.0).abs() < 1e-6);
        assert!((percentile_us(&v, 99.0) - 99.0).abs() < 1e-6);
        assert!((percentile_us(&v[..1], 90.0) - 1.0).abs() < 1e-6);
        assert!(percentile_us(&[], 50.0).abs() < 1e-9);
    }
}
