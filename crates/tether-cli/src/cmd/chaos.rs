//! `tether chaos --fault kill|restart|blackhole|ldm [--outages K] [--outage-ms T]`
//!
//! A publisher and a subscriber run through tether at a steady rate while faults are
//! injected K times; then a report says, per outage and in total, what the client saw
//! and whether what was lost is accounted for.
//!
//! - Without `--server` chaos starts its own nats-server (tether-testkit), or three with
//!   `--cluster`. `kill` is SIGKILL, `restart` SIGTERM; either is restarted on the same
//!   port after the outage. `blackhole` puts a testkit `Proxy` between client and server
//!   and stops forwarding for the outage (at least 3 s, with a 1 s ping interval and pong
//!   timeout, so the stale link is found during the outage).
//! - `ldm` (with `--cluster`, whose nodes run with the testkit's `lame_duck_duration` of
//!   30 s and `lame_duck_grace_period` of 2 s) signals lame duck mode to the node the
//!   publisher is on. The clients run with the library's defaults (`ldm_jitter` included:
//!   chaos checks the default, as users get it, and notes on stderr if it is not under the
//!   grace period) and should move off it make-before-break (DESIGN semantics 9:
//!   `Migrating`, then `Migrated`) within the grace period. The outage lasts until the node has exited and
//!   is restarted, so successive faults roll across the nodes.
//! - Every payload is a u64 big-endian sequence number. `lost` = published and accepted
//!   by `publish` − distinct delivered, counted after a final `flush` and 1 s of quiet.
//!   Refused publishes (`publish` returned an error) are not published: the caller knows.
//! - One client by default (echo on), with pending limits large enough for the whole
//!   outage: then `lost ≤ unconfirmed + client_dropped + removed` must hold exactly, and
//!   with `--resend-unconfirmed`, `lost == 0`. The server delivers a connection's own
//!   messages back in order on that connection, so a message it confirmed (PONG) has
//!   reached the client: every loss is one the client counted.
//! - With `--two-clients` the subscriber's own outages lose messages no client can count:
//!   the server confirms them to the publisher while the subscriber has no subscription.
//!   Chaos measures those outages as sequence ranges: from the first message the
//!   subscriber had not received when its link went down (`Disconnected`) to the first
//!   message published after a probe that reached it again (probes: 16-byte
//!   payloads the publisher sends every 20 ms once the subscriber is connected, so the
//!   range ends only when the subscriber's interest is in place where the publisher's
//!   messages are processed, e.g. across a cluster route). Losses in those ranges are
//!   `lost_undetectable`; the rest must satisfy the one-client rule with the publisher's
//!   unconfirmed and removed counts and the subscriber's slow-consumer drops. A planned
//!   switch is no outage (the old link delivers until the new one does): what a client
//!   misses during one is lost like any other message, never set apart.
//! - Under `--fault ldm` the rule is stricter: nothing lost and no `Disconnected` on
//!   either client. A switch that loses messages but reports them unconfirmed (in
//!   `Migrated`) would pass the reporting rule; semantics 9 promises no loss at all.
//! - The invariant is checked per outage (with all client drops, which cannot be tied to
//!   a window) and in total; a client that does not reconnect (or finish its planned
//!   switch) fails it too.
//! - Besides the loss counts, the report gives per outage and in total each client's
//!   `Disconnected` events, its planned switches (`Migrating` and `Migrated` events, and
//!   the messages `Migrated` reported unconfirmed on the old link), and the duplicates
//!   (deliveries beyond the first of a sequence number).
//! - Outage windows: outage i covers every message published from halfway through the
//!   quiet run before its fault to halfway through the one after it (the last to the end
//!   of the run), so the messages in flight when the fault hits count for it.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{FutureExt as _, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tether::server_pool::ServerAddr;
use tether::{Client, ConnectOptions, EventKind, State};
use tether_testkit::{NatsCluster, NatsServer, Proxy};

use crate::{util, CliError, Global};

/// Run before the first fault.
const WARMUP: Duration = Duration::from_secs(1);
/// Run after each reconnect, before the next fault.
const SETTLE: Duration = Duration::from_secs(1);
/// Quiet period after the final flush, before counting.
const QUIET: Duration = Duration::from_secs(1);
/// How long to wait for the reconnect after the server is back.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest outage for `blackhole`.
const MIN_BLACKHOLE_OUTAGE: Duration = Duration::from_secs(3);
/// Ping interval and pong timeout under `blackhole`.
const BLACKHOLE_PING: Duration = Duration::from_secs(1);
/// The `lame_duck_grace_period` of the testkit's nodes (`ServerConfig::lame_duck_for_tests`):
/// after it the lame-duck node closes its clients, those still waiting out their
/// `ldm_jitter` included.
const LDM_GRACE: Duration = tether_testkit::DEFAULT_LAME_DUCK_GRACE;
/// How long a lame-duck node may take to exit before it is killed.
const LDM_EXIT_TIMEOUT: Duration = Duration::from_secs(45);
/// Pending limits cover rate × (longest outage + this).
const PENDING_MARGIN: Duration = Duration::from_secs(10);
/// The publisher wakes this often and catches up with the rate.
const PUBLISH_TICK: Duration = Duration::from_millis(5);
/// Live state and buffer sampling period.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Payload: the sequence number.
const PAYLOAD_LEN: usize = 8;
/// `--two-clients`: a probe is sent this often while the subscriber is back from an
/// outage and has not received one yet.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// A probe's payload: this, then the probe id as a u64 big-endian.
const PROBE_MAGIC: &[u8; 8] = b"chaosprb";

/// The fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Fault {
    /// SIGKILL the server, restart it on the same port after the outage
    Kill,
    /// SIGTERM the server, restart it on the same port after the outage
    Restart,
    /// Stop forwarding through a proxy for the outage (at least 3 s)
    Blackhole,
    /// Lame duck mode on the publisher's node (needs --cluster); restarted once it exits
    Ldm,
}

/// Publish and subscribe through server outages and check that every loss is reported
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tether chaos                                5 kills of 1 s at 1000 msgs/s
  tether chaos --fault blackhole --json
  tether chaos --fault restart --resend-unconfirmed
  tether chaos --fault kill --cluster --two-clients
  tether chaos --fault ldm --cluster --two-clients --outages 3

Without --server (or NATS_URL) chaos starts its own nats-server (NATS_SERVER_BIN or
PATH); with --server only --fault blackhole is possible (through a local proxy).

The invariant, checked per outage and in total (exit status 1 if it fails, or if a
client does not reconnect):
  one client      lost <= unconfirmed + client_dropped + removed
                  (lost == 0 with --resend-unconfirmed): every loss was reported.
  --two-clients   the same for the messages published outside the subscriber's own
                  outages, with the publisher's unconfirmed and removed counts and the
                  subscriber's drops. Messages lost while the subscriber was away (from
                  its link going down until a probe from the publisher reached it
                  again) cannot be counted by either client: reported as
                  lost_undetectable.
  --fault ldm     lost == 0 and no Disconnected on either client: the clients move off
                  the lame-duck node (Migrating, then Migrated) before it closes them.
                  A planned switch is no outage: nothing lost during one is excused.

The report also gives, per outage and in total, each client's disconnects, its
planned switches (migrations: Migrating and Migrated events, and the messages Migrated
reported unconfirmed on the old link) and the duplicates.")]
#[allow(clippy::struct_excessive_bools)] // issue 12 step 6; remove then
pub(crate) struct ChaosArgs {
    /// Start a 3-node cluster instead of one server
    #[arg(long)]
    pub cluster: bool,
    /// The fault to inject
    #[arg(long, value_enum, default_value_t = Fault::Kill)]
    pub fault: Fault,
    /// How many faults
    #[arg(long, default_value_t = 5)]
    pub outages: u32,
    /// How long each outage lasts, in milliseconds
    #[arg(long, default_value_t = 1000)]
    pub outage_ms: u64,
    /// Messages published per second
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Print the report as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
    /// Resend frames the server may not have received after a reconnect (then lost must
    /// be 0; duplicates are counted)
    #[arg(long)]
    pub resend_unconfirmed: bool,
    /// Publisher and subscriber on two clients (losses during the subscriber's own
    /// outages are then undetectable: reported, not checked, except under --fault ldm)
    #[arg(long)]
    pub two_clients: bool,
    /// Refused: the shared-client invariant needs echo
    #[arg(long)]
    pub no_echo: bool,
    /// Subject to publish on
    #[arg(long, default_value = "chaos.test")]
    pub subject: String,
    /// Server URL(s); taken from the global `--server` (a second `--server` here would
    /// collide with it)
    #[arg(skip)]
    pub server: Option<String>,
}

/// The name the `commands!` list in `main.rs` expects.
pub(crate) type Args = ChaosArgs;

/// Entry point for the `commands!` list: `--server` comes from the global options.
pub(crate) async fn run(mut args: Args, global: &Global) -> Result<(), CliError> {
    if args.server.is_none() {
        args.server.clone_from(&global.server);
    }
    run_chaos(args).await.map_err(CliError::new)
}

// ===== report =====

/// The planned switches (semantics 9: lame duck mode) of one client, from its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Migrations {
    /// `Migrating` events: switches started (publishing moved to the new link).
    pub migrating: u64,
    /// `Migrated` events: switches ended (the old link retired and closed).
    pub migrated: u64,
    /// Messages `Migrated` reported unconfirmed on the old links (possibly lost). The
    /// publisher's are also in `unconfirmed`.
    pub unconfirmed_msgs: u64,
    /// Their encoded bytes.
    pub unconfirmed_bytes: u64,
}

impl Migrations {
    /// Counts one event of the client (other events are ignored).
    fn count(&mut self, kind: &EventKind) {
        match kind {
            EventKind::Migrating { .. } => self.migrating += 1,
            EventKind::Migrated {
                unconfirmed_msgs,
                unconfirmed_bytes,
                ..
            } => {
                self.migrated += 1;
                self.unconfirmed_msgs += unconfirmed_msgs;
                self.unconfirmed_bytes += unconfirmed_bytes;
            }
            _ => {}
        }
    }

    fn add(&mut self, other: &Migrations) {
        self.migrating += other.migrating;
        self.migrated += other.migrated;
        self.unconfirmed_msgs += other.unconfirmed_msgs;
        self.unconfirmed_bytes += other.unconfirmed_bytes;
    }

    fn any(&self) -> bool {
        *self != Migrations::default()
    }
}

/// One outage.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct OutageReport {
    /// Disconnected → Reconnected, as the library reports it (sum over the window).
    pub downtime_ms: f64,
    /// Disconnected → Reconnected, as observed on the event stream.
    pub observed_downtime_ms: f64,
    /// Server accepting again (restarted, proxy passing; the fault for a cluster, where
    /// another node accepts all along) → Reconnected; NaN (null in JSON) without a
    /// reconnect, e.g. after a planned switch.
    pub reconnect_ms: f64,
    /// The fault → the publisher's first `Migrated` (its planned switch ended); null
    /// without one.
    pub migrated_ms: Option<f64>,
    /// The publisher's `Disconnected` events (with one client, the only client's).
    pub disconnects: u64,
    /// The publisher's planned switches (with one client, the only client's).
    pub migrations: Migrations,
    pub published: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Deliveries beyond the first of a sequence number.
    pub duplicates: u64,
    pub refused: u64,
    pub unconfirmed: u64,
    pub removed: u64,
    pub max_buffer_bytes: u64,
    /// `--two-clients`: the subscriber's `Disconnected` events (a planned switch is not
    /// an outage: see `subscriber_migrations`).
    pub subscriber_disconnects: u64,
    /// `--two-clients`: the subscriber's planned switches.
    pub subscriber_migrations: Migrations,
    /// `--two-clients`: messages published during the subscriber's own outages.
    pub subscriber_outage_msgs: u64,
    /// `--two-clients`: of those, the lost ones.
    pub lost_undetectable: u64,
    /// The invariant for this outage's messages.
    pub invariant_ok: bool,
}

/// The result of a run.
#[derive(Debug, Serialize)]
#[allow(clippy::struct_excessive_bools)] // issue 12 step 6; remove then
pub(crate) struct Report {
    pub fault: Fault,
    pub cluster: bool,
    pub two_clients: bool,
    pub resend_unconfirmed: bool,
    pub rate: u32,
    pub outage_ms: u64,
    pub outages: u32,
    /// Publishes accepted by `publish`.
    pub published: u64,
    /// Distinct sequence numbers delivered.
    pub delivered: u64,
    pub lost: u64,
    pub unconfirmed: u64,
    pub client_dropped: u64,
    pub removed: u64,
    /// Deliveries beyond the first of a sequence number.
    pub duplicates: u64,
    /// Publishes refused with an error.
    pub errors: u64,
    pub downtime_ms: Vec<f64>,
    pub reconnect_ms: Vec<f64>,
    pub max_buffer_bytes: u64,
    /// The publisher's `Disconnected` events (with one client, the only client's).
    pub disconnects: u64,
    /// The publisher's planned switches (with one client, the only client's).
    pub migrations: Migrations,
    /// `--two-clients`: the subscriber's `Disconnected` events.
    pub subscriber_disconnects: u64,
    /// `--two-clients`: the subscriber's planned switches.
    pub subscriber_migrations: Migrations,
    /// `--two-clients`: messages published during the subscriber's own outages.
    pub subscriber_outage_msgs: u64,
    /// `--two-clients`: messages lost during the subscriber's own outages, which no
    /// client can count.
    pub lost_undetectable: u64,
    /// The rule checked.
    pub invariant: &'static str,
    pub invariant_ok: bool,
    /// Publishes that returned an error and were delivered all the same.
    pub delivered_refused: u64,
    /// `statistics()` counters, to cross-check the event sums.
    pub stats_unconfirmed: u64,
    pub stats_removed: u64,
    pub stats_migrations: u64,
    /// `--two-clients`: the subscriber's `statistics().migrations`.
    pub subscriber_stats_migrations: u64,
    pub events_lagged: u64,
    /// The first publish error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Outages after which the publisher neither reconnected nor finished a planned
    /// switch in time, or a client was not connected (with two clients: or the
    /// subscriber did not receive a probe again).
    pub not_reconnected: u64,
    pub per_outage: Vec<OutageReport>,
}

// ===== shared state =====

/// What the event task saw in one window (0 = before the first fault).
#[derive(Debug, Default, Clone)]
struct Window {
    first_seq: u64,
    disconnects: u64,
    unconfirmed: u64,
    removed: u64,
    downtime: Duration,
    disconnected_at: Option<Instant>,
    reconnected_at: Option<Instant>,
    /// When the fault was injected.
    fault_at: Option<Instant>,
    up_at: Option<Instant>,
    /// The publisher's first `Migrated`.
    migrated_at: Option<Instant>,
    migrations: Migrations,
    max_buffer: u64,
    sub_disconnects: u64,
    sub_migrations: Migrations,
}

impl Window {
    /// The publisher is on a working link again after the fault: it reconnected, or a
    /// planned switch ended.
    fn recovered(&self) -> bool {
        self.reconnected_at.is_some() || self.migrated_at.is_some()
    }
}

/// `--two-clients`: one outage of the subscriber, as the sequence numbers `start..end`
/// (the end is `None` while no probe has reached the subscriber again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gap {
    start: u64,
    end: Option<u64>,
    /// Only probes from this id on may end it (those sent after its last disconnect).
    first_probe: u64,
}

/// `--two-clients`: probes sent by the publisher and received by the subscriber.
#[derive(Debug, Default)]
struct Probes {
    /// Per probe id: the first sequence number published after it (`None` while being
    /// sent, or if refused).
    after: Vec<Option<u64>>,
    /// Ids received.
    seen: Vec<u64>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Index of the current window.
    window: AtomicUsize,
    windows: Mutex<Vec<Window>>,
    next_seq: AtomicU64,
    published_ok: AtomicU64,
    refused: AtomicU64,
    delivered_msgs: AtomicU64,
    /// Highest sequence number delivered, plus one.
    delivered_upto: AtomicU64,
    /// `--two-clients`: the subscriber's outages.
    gaps: Mutex<Vec<Gap>>,
    probes: Mutex<Probes>,
    /// Per sequence number: accepted by publish.
    accepted: Mutex<Vec<bool>>,
    /// Per sequence number: times delivered.
    delivered: Mutex<Vec<u32>>,
    foreign: AtomicU64,
    lagged: AtomicU64,
    first_error: Mutex<Option<String>>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn with_window(&self, f: impl FnOnce(&mut Window)) {
        let i = self.window.load(Ordering::SeqCst);
        let mut w = lock(&self.windows);
        if let Some(w) = w.get_mut(i) {
            f(w);
        }
    }

    /// The subscriber lost its link: opens an outage at the first message it has not
    /// received, or restarts the probing of the one still open. (A planned switch is no
    /// outage: the old link delivers until the new one does.)
    fn subscriber_down(&self) {
        let mut gaps = lock(&self.gaps);
        let first_probe = lock(&self.probes).after.len() as u64;
        match gaps.last_mut() {
            Some(g) if g.end.is_none() => g.first_probe = first_probe,
            _ => gaps.push(Gap {
                start: self.delivered_upto.load(Ordering::SeqCst),
                end: None,
                first_probe,
            }),
        }
    }

    /// Ends the open subscriber outage if one of its probes has arrived; returns whether
    /// an outage is still open.
    fn subscriber_outage_open(&self) -> bool {
        let mut gaps = lock(&self.gaps);
        let Some(g) = gaps.last_mut().filter(|g| g.end.is_none()) else {
            return false;
        };
        let probes = lock(&self.probes);
        let end = probes
            .seen
            .iter()
            .filter(|&&id| id >= g.first_probe)
            .filter_map(|&id| probes.after.get(id as usize).copied().flatten())
            .min();
        match end {
            Some(end) => {
                g.end = Some(end.max(g.start));
                false
            }
            None => true,
        }
    }
}

// ===== servers and faults =====

#[derive(Debug)]
enum Env {
    External,
    Single(NatsServer),
    Cluster(NatsCluster),
}

#[derive(Debug)]
struct Target {
    env: Env,
    proxy: Option<Proxy>,
}

type Guarded = Arc<Mutex<Target>>;

/// Runs `f` on the target on a blocking thread (the testkit is synchronous).
async fn blocking<R: Send + 'static>(
    target: &Guarded,
    f: impl FnOnce(&mut Target) -> R + Send + 'static,
) -> Result<R, String> {
    let t = Arc::clone(target);
    tokio::task::spawn_blocking(move || f(&mut lock(&t)))
        .await
        .map_err(|e| format!("fault injection task failed: {e}"))
}

fn port_of(server: &str) -> Option<u16> {
    ServerAddr::parse(server).ok().map(|a| a.port())
}

/// The cluster node the client is on (node 0 if unknown).
fn node_of(cluster: &NatsCluster, server: Option<&str>) -> usize {
    let port = server.and_then(port_of);
    (0..cluster.len())
        .find(|&i| Some(cluster.node(i).port()) == port)
        .unwrap_or(0)
}

/// Injects the fault; returns a description.
fn inject(t: &mut Target, fault: Fault, connected: Option<&str>) -> Result<usize, String> {
    if fault == Fault::Blackhole {
        t.proxy.as_ref().ok_or("no proxy")?.black_hole();
        return Ok(0);
    }
    match &mut t.env {
        Env::Single(s) => {
            if fault == Fault::Kill {
                s.kill();
            } else {
                s.stop();
            }
            Ok(0)
        }
        Env::Cluster(c) => {
            let i = node_of(c, connected);
            match fault {
                Fault::Kill => c.kill(i),
                Fault::Ldm => c
                    .node(i)
                    .lame_duck()
                    .map_err(|e| format!("signalling lame duck mode to node {i}: {e}"))?,
                _ => c.node_mut(i).stop(),
            }
            Ok(i)
        }
        Env::External => Err(format!("--fault {fault:?} needs a local server").to_lowercase()),
    }
}

/// Ends the fault; returns when the server accepts again.
fn restore(t: &mut Target, fault: Fault, node: usize) -> Result<(), String> {
    if fault == Fault::Blackhole {
        t.proxy.as_ref().ok_or("no proxy")?.pass();
        return Ok(());
    }
    match &mut t.env {
        Env::Single(s) => s
            .restart()
            .map_err(|e| format!("restarting nats-server: {e}")),
        Env::Cluster(c) => {
            if fault == Fault::Ldm {
                // A lame-duck server closes its clients over lame_duck_duration, then exits.
                if !c.node_mut(node).wait_exit(LDM_EXIT_TIMEOUT) {
                    c.kill(node);
                }
            }
            c.restart(node)
                .map_err(|e| format!("restarting cluster node {node}: {e}"))
        }
        Env::External => Ok(()),
    }
}

async fn resolve(url: &str) -> Result<SocketAddr, String> {
    let first = url.split(',').next().unwrap_or("").trim();
    let addr = ServerAddr::parse(first).map_err(|e| e.to_string())?;
    let hostport = (addr.host(), addr.port());
    let mut addrs = tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| format!("resolving {addr}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("resolving {addr}: no address"))
}

/// Starts what the args ask for; returns the target and the URL(s) clients connect to.
async fn start_target(args: &ChaosArgs) -> Result<(Guarded, String), String> {
    let fault = args.fault;
    let cluster = args.cluster;
    let (env, upstream, urls) = if let Some(url) = &args.server {
        let addr = if fault == Fault::Blackhole {
            Some(resolve(url).await?)
        } else {
            None
        };
        (Env::External, addr, url.clone())
    } else if cluster {
        let c = tokio::task::spawn_blocking(move || {
            // Lame duck: the server's minimum duration (30 s) and a 2 s grace period.
            let c = NatsCluster::start_with(
                3,
                tether_testkit::ServerConfig {
                    lame_duck_for_tests: fault == Fault::Ldm,
                    ..tether_testkit::ServerConfig::default()
                },
            )?;
            c.wait_routes(Duration::from_secs(10))?;
            Ok::<_, tether_testkit::TestkitError>(c)
        })
        .await
        .map_err(|e| format!("starting the cluster: {e}"))?
        .map_err(|e| format!("starting a 3-node nats-server cluster: {e}"))?;
        let urls = c.urls().join(",");
        (Env::Cluster(c), None, urls)
    } else {
        let s = tokio::task::spawn_blocking(NatsServer::start)
            .await
            .map_err(|e| format!("starting nats-server: {e}"))?
            .map_err(|e| format!("starting a local nats-server: {e}"))?;
        let addr = s.addr();
        let url = s.url();
        (Env::Single(s), Some(addr), url)
    };
    let proxy = if fault == Fault::Blackhole {
        let upstream = upstream.ok_or("no upstream for the proxy")?;
        Some(
            tokio::task::spawn_blocking(move || Proxy::start(upstream))
                .await
                .map_err(|e| format!("starting the proxy: {e}"))?
                .map_err(|e| format!("starting the proxy: {e}"))?,
        )
    } else {
        None
    };
    let url = proxy.as_ref().map_or(urls, Proxy::url);
    Ok((Arc::new(Mutex::new(Target { env, proxy })), url))
}

fn check_args(args: &ChaosArgs) -> Result<(), String> {
    util::check_publish_subject("--subject", &args.subject).map_err(|e| e.to_string())?;
    if args.no_echo {
        return Err(
            "chaos refuses --no-echo: the shared-client invariant needs the \
                    client to receive its own messages (echo)"
                .into(),
        );
    }
    if args.rate == 0 {
        return Err("--rate must be at least 1".into());
    }
    if args.fault == Fault::Ldm && !args.cluster {
        return Err(
            "--fault ldm needs --cluster: the client moves to another node of the cluster".into(),
        );
    }
    if args.cluster && args.fault == Fault::Blackhole {
        return Err("--fault blackhole with --cluster is not supported yet".into());
    }
    if args.cluster && args.server.is_some() {
        return Err("--cluster starts its own servers; drop --server".into());
    }
    if args.server.is_some() && args.fault != Fault::Blackhole {
        return Err(format!(
            "--fault {} needs the local nats-server chaos starts: drop --server (or use \
             --fault blackhole)",
            match args.fault {
                Fault::Kill => "kill",
                _ => "restart",
            }
        ));
    }
    Ok(())
}

// ===== tasks =====

/// The publisher's client (also the subscriber's with one client): disconnects, downtime,
/// planned switches, unconfirmed and removed messages.
fn spawn_events(client: &Client, shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    let mut events = client.events();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            let now = Instant::now();
            match e.kind {
                EventKind::Disconnected {
                    unconfirmed_msgs, ..
                } => shared.with_window(|w| {
                    w.unconfirmed += unconfirmed_msgs;
                    w.disconnects += 1;
                    w.disconnected_at.get_or_insert(now);
                }),
                // A planned switch: no downtime. What stayed unconfirmed on the old link
                // may be lost, like a Disconnected's.
                EventKind::Migrating { .. } | EventKind::Migrated { .. } => {
                    shared.with_window(|w| {
                        w.migrations.count(&e.kind);
                        if let EventKind::Migrated {
                            unconfirmed_msgs, ..
                        } = e.kind
                        {
                            w.unconfirmed += unconfirmed_msgs;
                            w.migrated_at.get_or_insert(now);
                        }
                    });
                }
                EventKind::Reconnected { downtime, .. } => shared.with_window(|w| {
                    w.downtime += downtime;
                    w.reconnected_at = Some(now);
                }),
                EventKind::FramesRemoved { msgs, .. } => shared.with_window(|w| w.removed += msgs),
                EventKind::EventsLagged { dropped } => {
                    shared.lagged.fetch_add(dropped, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    })
}

/// `--two-clients`: an event of the subscriber's client. Its unconfirmed and removed
/// counts would be of its own publishes, of which there are none; what matters is its
/// own outages. Its planned switches are counted, but they are no outage: what it misses
/// during one is lost like any other message, not set apart as undetectable.
fn subscriber_event(shared: &Shared, e: tether::Event) {
    match e.kind {
        EventKind::Disconnected { .. } => {
            shared.subscriber_down();
            shared.with_window(|w| w.sub_disconnects += 1);
        }
        EventKind::Migrating { .. } | EventKind::Migrated { .. } => {
            shared.with_window(|w| w.sub_migrations.count(&e.kind));
        }
        EventKind::EventsLagged { dropped } => {
            shared.lagged.fetch_add(dropped, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// `--two-clients`: while a subscriber outage is open and the subscriber is connected,
/// the publisher sends a probe every [`PROBE_EVERY`]; the first of them to reach the
/// subscriber ends the outage (at the first sequence number published after it).
fn spawn_prober(
    pub_client: Client,
    sub_client: Client,
    subject: String,
    shared: Arc<Shared>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !shared.subscriber_outage_open() || sub_client.status() != State::Connected {
                continue;
            }
            let id = {
                let mut p = lock(&shared.probes);
                p.after.push(None);
                p.after.len() - 1
            };
            let mut payload = [0u8; 16];
            payload[..8].copy_from_slice(PROBE_MAGIC);
            payload[8..].copy_from_slice(&(id as u64).to_be_bytes());
            if pub_client.publish(&subject, payload).await.is_err() {
                continue;
            }
            // The publisher task stores next_seq = k between publishing k - 1 and k, so
            // it starts publishing k + 1 only after this load: after the probe.
            let after = shared.next_seq.load(Ordering::SeqCst) + 1;
            lock(&shared.probes).after[id] = Some(after);
        }
    })
}

fn spawn_publisher(
    client: Client,
    subject: String,
    rate: u32,
    shared: Arc<Shared>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(PUBLISH_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq: u64 = 0;
        while !shared.stop.load(Ordering::SeqCst) {
            tick.tick().await;
            let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
            while seq < due && !shared.stop.load(Ordering::SeqCst) {
                let r = client.publish(&subject, seq.to_be_bytes()).await;
                let ok = r.is_ok();
                if let Err(e) = r {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                    lock(&shared.first_error).get_or_insert_with(|| e.to_string());
                } else {
                    shared.published_ok.fetch_add(1, Ordering::Relaxed);
                }
                lock(&shared.accepted).push(ok);
                seq += 1;
                shared.next_seq.store(seq, Ordering::SeqCst);
            }
        }
    })
}

/// Counts deliveries. With `--two-clients` it also takes the subscriber client's events:
/// the driver emits `Disconnected` before it queues any message from the next link, so
/// taking the queued events before each message opens a subscriber outage before a
/// message from after it can raise `delivered_upto` (the outage's start).
fn spawn_subscriber(
    mut sub: tether::Subscriber,
    mut events: Option<tether::Events>,
    shared: Arc<Shared>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let next_event = async {
                match events.as_mut() {
                    Some(ev) => ev.next().await,
                    None => std::future::pending().await,
                }
            };
            let msg = tokio::select! {
                biased;
                Some(e) = next_event => {
                    subscriber_event(&shared, e);
                    continue;
                }
                m = sub.next() => m,
            };
            let Some(msg) = msg else { break };
            if let Some(ev) = events.as_mut() {
                while let Some(Some(e)) = ev.next().now_or_never() {
                    subscriber_event(&shared, e);
                }
            }
            if let Some(id) = msg
                .payload
                .strip_prefix(PROBE_MAGIC)
                .and_then(|id| <[u8; 8]>::try_from(id).ok())
            {
                lock(&shared.probes).seen.push(u64::from_be_bytes(id));
                continue;
            }
            let Ok(bytes) = <[u8; PAYLOAD_LEN]>::try_from(msg.payload.as_ref()) else {
                shared.foreign.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let seq = u64::from_be_bytes(bytes);
            // Far beyond anything published: someone else's message.
            if seq > shared.next_seq.load(Ordering::SeqCst) + 1_000_000 {
                shared.foreign.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let seq = seq as usize;
            let mut d = lock(&shared.delivered);
            if d.len() <= seq {
                d.resize(seq + 1, 0);
            }
            d[seq] += 1;
            drop(d);
            shared
                .delivered_upto
                .fetch_max(seq as u64 + 1, Ordering::SeqCst);
            shared.delivered_msgs.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Live state on the progress bar, and the buffer peak of the current window.
fn spawn_sampler(
    pub_client: Client,
    sub_client: Client,
    shared: Arc<Shared>,
    pb: ProgressBar,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            let stats = pub_client.statistics();
            shared.with_window(|w| w.max_buffer = w.max_buffer.max(stats.buffered_bytes));
            let state = |c: &Client| format!("{:?}", c.status()).to_lowercase();
            let states = if pub_client.status() == sub_client.status() {
                state(&pub_client)
            } else {
                format!("pub {} sub {}", state(&pub_client), state(&sub_client))
            };
            pb.set_message(format!(
                "{states} | pub {} deliv {} refused {} buffered {} B",
                shared.published_ok.load(Ordering::Relaxed),
                shared.delivered_msgs.load(Ordering::Relaxed),
                shared.refused.load(Ordering::Relaxed),
                stats.buffered_bytes,
            ));
        }
    })
}

fn all_connected(clients: &[&Client]) -> bool {
    clients.iter().all(|c| c.status() == State::Connected)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn since_ms(later: Instant, earlier: Instant) -> f64 {
    ms(later.saturating_duration_since(earlier))
}

// ===== the run =====

/// Runs chaos as the arguments say; prints the report; fails if the invariant fails.
pub(crate) async fn run_chaos(args: ChaosArgs) -> Result<(), String> {
    check_args(&args)?;
    let mut outage = Duration::from_millis(args.outage_ms);
    if args.fault == Fault::Blackhole {
        outage = outage.max(MIN_BLACKHOLE_OUTAGE);
    }
    let (target, url) = start_target(&args).await?;
    let result = drive(&args, outage, &target, &url).await;
    util::close_all(Duration::from_secs(2)).await;
    // The proxy joins its thread and servers are killed on drop: off the runtime.
    let _ = tokio::task::spawn_blocking(move || drop(target)).await;
    let report = result?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| format!("encoding the report: {e}"))?
        );
    } else {
        print_report(&report);
    }
    if report.invariant_ok {
        Ok(())
    } else {
        Err(invariant_failure(&report))
    }
}

/// "2 started, 2 ended, 0 unconfirmed".
fn migrations_text(m: &Migrations) -> String {
    format!(
        "{} started, {} ended, {} unconfirmed",
        m.migrating, m.migrated, m.unconfirmed_msgs
    )
}

/// Per outage: the clients' disconnects and planned switches.
fn print_migrations(r: &Report) {
    println!(
        "{:>3} {:>11} {:>19} {:>11} {:>15} {:>19}",
        "#",
        "disconnects",
        "migrating/migrated",
        "migrated in",
        "sub disconnects",
        "sub migr./migrated"
    );
    for (i, o) in r.per_outage.iter().enumerate() {
        let pair = |m: &Migrations| format!("{}/{}", m.migrating, m.migrated);
        println!(
            "{:>3} {:>11} {:>19} {:>8.0} ms {:>15} {:>19}",
            i + 1,
            o.disconnects,
            pair(&o.migrations),
            o.migrated_ms.unwrap_or(f64::NAN),
            if r.two_clients {
                o.subscriber_disconnects.to_string()
            } else {
                "-".into()
            },
            if r.two_clients {
                pair(&o.subscriber_migrations)
            } else {
                "-".into()
            },
        );
    }
}

/// One line saying why the run failed.
fn invariant_failure(r: &Report) -> String {
    let failed: Vec<String> = (r.per_outage.iter().enumerate())
        .filter(|(_, o)| !o.invariant_ok)
        .map(|(i, _)| (i + 1).to_string())
        .collect();
    let mut why = format!(
        "invariant failed ({}): lost {}, lost_undetectable {}, unconfirmed {}, \
         client_dropped {}, removed {}, disconnects {}, subscriber_disconnects {}",
        r.invariant,
        r.lost,
        r.lost_undetectable,
        r.unconfirmed,
        r.client_dropped,
        r.removed,
        r.disconnects,
        r.subscriber_disconnects
    );
    if !failed.is_empty() {
        let _ = write!(why, "; outages failing it: {}", failed.join(", "));
    }
    if r.not_reconnected > 0 {
        let _ = write!(
            why,
            "; {} outage(s) not recovered in time",
            r.not_reconnected
        );
    }
    why
}

/// `--fault ldm`: what the outages look like, and whether the library's default
/// ldm_jitter fits under the nodes' grace period.
fn ldm_notes(json: bool) {
    // The library's default ldm_jitter, as users get it: it is meant to fit inside a
    // short grace period (DESIGN semantics 9), and chaos checks that it does.
    let jitter = tether::options::DEFAULT_LDM_JITTER;
    if !json {
        eprintln!(
            "chaos: each lame-duck outage lasts until the node exits (lame_duck_duration, 30 s) \
             and is restarted; the clients should move to another node within ldm_jitter \
             ({jitter:?}, the library's default)"
        );
    }
    if jitter >= LDM_GRACE {
        eprintln!(
            "chaos: note: the default ldm_jitter ({jitter:?}) is not under the nodes' \
             lame_duck_grace_period ({LDM_GRACE:?}): a client still waiting when the grace \
             period ends is closed (Disconnected)"
        );
    }
}

/// The line said after outage `i` of `outages`.
fn outage_line(i: usize, outages: u32, w: &Window, up_at: Instant, fault_at: Instant) -> String {
    let mut line = format!("outage {i}/{outages}: downtime {:.0} ms", ms(w.downtime));
    if let Some(r) = w.reconnected_at {
        let _ = write!(
            line,
            ", reconnect {:.0} ms after the server was back",
            since_ms(r, up_at)
        );
    }
    if let Some(m) = w.migrated_at {
        let _ = write!(
            line,
            ", moved (Migrated) {:.0} ms after the fault",
            since_ms(m, fault_at)
        );
    }
    let _ = write!(
        line,
        ", unconfirmed {}, peak buffer {} B",
        w.unconfirmed, w.max_buffer
    );
    line
}

#[allow(clippy::too_many_lines)] // issue 12 step 6 splits it; remove then
async fn drive(
    args: &ChaosArgs,
    outage: Duration,
    target: &Guarded,
    url: &str,
) -> Result<Report, String> {
    let rate = args.rate;
    let pending_msgs = (f64::from(rate) * (outage + PENDING_MARGIN).as_secs_f64()).ceil() as usize;
    // Payload plus subject and headroom per message.
    let pending_bytes = pending_msgs * (PAYLOAD_LEN + args.subject.len() + 64);
    let mut opts = ConnectOptions::new()
        .pending_limits(pending_msgs.max(1), pending_bytes.max(1))
        .resend_unconfirmed(args.resend_unconfirmed);
    if args.fault == Fault::Blackhole {
        opts = opts
            .ping_interval(BLACKHOLE_PING)
            .pong_timeout(BLACKHOLE_PING);
    }
    if args.fault == Fault::Ldm {
        ldm_notes(args.json);
    }
    let pub_client = util::connect(url, opts.clone())
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))?;
    let sub_client = if args.two_clients {
        util::connect(url, opts)
            .await
            .map_err(|e| format!("connecting the subscriber to {url}: {e}"))?
    } else {
        pub_client.clone()
    };

    let shared = Arc::new(Shared::default());
    lock(&shared.windows).push(Window::default());
    let mut tasks = vec![spawn_events(&pub_client, Arc::clone(&shared))];
    let sub_events = args.two_clients.then(|| sub_client.events());
    if args.two_clients {
        tasks.push(spawn_prober(
            pub_client.clone(),
            sub_client.clone(),
            args.subject.clone(),
            Arc::clone(&shared),
        ));
    }
    let sub = util::subscribe_confirmed(
        &sub_client,
        &args.subject,
        None,
        &format!("subscribing to {}", args.subject),
    )
    .await
    .map_err(|e| e.to_string())?;
    let sub_task = spawn_subscriber(sub, sub_events, Arc::clone(&shared));

    let pb = ProgressBar::with_draw_target(
        Some(u64::from(args.outages)),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template("{bar:20} {pos}/{len} outages {elapsed} {msg}")
    {
        pb.set_style(style);
    }
    let say = |line: String| {
        if pb.is_hidden() {
            if !args.json {
                eprintln!("{line}");
            }
        } else {
            pb.println(line);
        }
    };
    tasks.push(spawn_sampler(
        pub_client.clone(),
        sub_client.clone(),
        Arc::clone(&shared),
        pb.clone(),
    ));
    let pub_task = spawn_publisher(
        pub_client.clone(),
        args.subject.clone(),
        rate,
        Arc::clone(&shared),
    );

    // Outage i's messages start halfway through the quiet run before its fault, so the
    // messages in flight when the fault hits count for it.
    let open_window = || {
        lock(&shared.windows).push(Window {
            first_seq: shared.next_seq.load(Ordering::SeqCst),
            ..Window::default()
        });
    };
    tokio::time::sleep(WARMUP / 2).await;
    open_window();
    tokio::time::sleep(WARMUP / 2).await;
    let mut not_reconnected = 0;
    let mut failure = None;
    for i in 1..=args.outages as usize {
        shared.window.store(i, Ordering::SeqCst);
        let fault_at = Instant::now();
        shared.with_window(|w| w.fault_at = Some(fault_at));
        let fault = args.fault;
        let connected = pub_client.connected_server();
        let node = match blocking(target, move |t| inject(t, fault, connected.as_deref())).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) | Err(e) => {
                failure = Some(e);
                break;
            }
        };
        tokio::time::sleep(outage).await;
        match blocking(target, move |t| restore(t, fault, node)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => {
                failure = Some(e);
                break;
            }
        }
        let up_at = if args.cluster {
            fault_at
        } else {
            Instant::now()
        };
        shared.with_window(|w| w.up_at = Some(up_at));
        let deadline = Instant::now() + RECONNECT_TIMEOUT;
        let clients = [&pub_client, &sub_client];
        loop {
            let recovered = lock(&shared.windows)[i].recovered();
            // With two clients, until a probe has reached the subscriber again.
            let receiving = !shared.subscriber_outage_open();
            if recovered && all_connected(&clients) && receiving {
                break;
            }
            if Instant::now() > deadline {
                not_reconnected += 1;
                say(format!(
                    "outage {i}: neither reconnected nor moved within {RECONNECT_TIMEOUT:?} \
                     of the server being back (publisher {:?}, subscriber {:?}{})",
                    pub_client.status(),
                    sub_client.status(),
                    if receiving { "" } else { ", no probe received" }
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(SETTLE / 2).await;
        if i < args.outages as usize {
            open_window();
        }
        tokio::time::sleep(SETTLE / 2).await;
        let w = lock(&shared.windows)[i].clone();
        say(outage_line(i, args.outages, &w, up_at, fault_at));
        pb.inc(1);
    }

    shared.stop.store(true, Ordering::SeqCst);
    let _ = pub_task.await;
    if let Err(e) = pub_client.flush().await {
        say(format!("final flush: {e}"));
    }
    tokio::time::sleep(QUIET).await;
    pb.finish_and_clear();
    for t in &tasks {
        t.abort();
    }
    if not_reconnected == 0 && shared.subscriber_outage_open() {
        not_reconnected += 1;
        say(
            "the subscriber lost its link after the last outage and no probe reached it again"
                .into(),
        );
    }
    sub_task.abort();
    if let Some(e) = failure {
        return Err(e);
    }

    let pub_stats = pub_client.statistics();
    let sub_stats = sub_client.statistics();
    Ok(build_report(
        args,
        outage,
        &shared,
        pub_stats,
        sub_stats,
        not_reconnected,
    ))
}

/// What the invariant is checked on: one outage's messages, or the whole run's.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    lost: u64,
    /// Lost during the subscriber's own outages (two clients).
    undetectable: u64,
    unconfirmed: u64,
    client_dropped: u64,
    removed: u64,
    /// `Disconnected` events of both clients.
    disconnects: u64,
}

/// The rule a run is checked against.
#[derive(Debug, Clone, Copy)]
struct Invariant {
    /// `--fault ldm`: a planned switch loses nothing and never disconnects.
    ldm: bool,
    two_clients: bool,
    resend_unconfirmed: bool,
}

impl Invariant {
    fn of(args: &ChaosArgs) -> Self {
        Self {
            ldm: args.fault == Fault::Ldm,
            two_clients: args.two_clients,
            resend_unconfirmed: args.resend_unconfirmed,
        }
    }

    /// Are the `lost` ones accounted for? Under lame duck mode nothing may be lost and no
    /// link may drop: the client moves before the server closes it (DESIGN semantics 9).
    /// Otherwise those lost during the subscriber's own outages (`undetectable`, two
    /// clients) are set apart; every other loss must have been reported as unconfirmed,
    /// dropped by the client or removed (none at all with `--resend-unconfirmed`, which
    /// resends unconfirmed messages).
    fn holds(self, t: &Tally) -> bool {
        if self.ldm {
            return t.lost == 0 && t.disconnects == 0;
        }
        let reportable = t.lost.saturating_sub(t.undetectable);
        if self.resend_unconfirmed {
            reportable == 0
        } else {
            reportable <= t.unconfirmed + t.client_dropped + t.removed
        }
    }

    /// The rule [`Invariant::holds`] checks, in words.
    fn rule(self) -> &'static str {
        match (self.ldm, self.two_clients, self.resend_unconfirmed) {
            (true, false, _) => "lost == 0 and disconnects == 0",
            (true, true, _) => "lost == 0 and disconnects + subscriber_disconnects == 0",
            (false, false, false) => "lost <= unconfirmed + client_dropped + removed",
            (false, false, true) => "lost == 0",
            (false, true, false) => {
                "lost - lost_undetectable <= unconfirmed + client_dropped + removed"
            }
            (false, true, true) => "lost - lost_undetectable == 0",
        }
    }
}

/// A sequence number's fate, for [`window_report`].
#[derive(Debug, Clone, Copy)]
struct Fate {
    /// `publish` returned Ok.
    accepted: bool,
    /// Times delivered.
    delivered: u32,
    /// Published during one of the subscriber's own outages.
    away: bool,
}

/// One window's report, from the fates of its messages and what the events said;
/// `delivered_refused` counts refused publishes that arrived all the same.
fn window_report(
    w: &Window,
    fates: impl Iterator<Item = Fate>,
    delivered_refused: &mut u64,
) -> OutageReport {
    let mut o = OutageReport::default();
    for f in fates {
        if f.accepted {
            o.published += 1;
            o.subscriber_outage_msgs += u64::from(f.away);
            if f.delivered == 0 {
                o.lost += 1;
                o.lost_undetectable += u64::from(f.away);
            }
        } else {
            o.refused += 1;
            if f.delivered > 0 {
                *delivered_refused += 1;
            }
        }
        if f.delivered > 0 {
            o.delivered += 1;
            o.duplicates += u64::from(f.delivered - 1);
        }
    }
    o.downtime_ms = ms(w.downtime);
    o.observed_downtime_ms = match (w.disconnected_at, w.reconnected_at) {
        (Some(d), Some(r)) => since_ms(r, d),
        _ => 0.0,
    };
    o.reconnect_ms = match (w.up_at, w.reconnected_at) {
        (Some(u), Some(r)) => since_ms(r, u),
        _ => f64::NAN,
    };
    o.migrated_ms = w.fault_at.zip(w.migrated_at).map(|(f, m)| since_ms(m, f));
    o.disconnects = w.disconnects;
    o.migrations = w.migrations;
    o.subscriber_disconnects = w.sub_disconnects;
    o.subscriber_migrations = w.sub_migrations;
    o.unconfirmed = w.unconfirmed;
    o.removed = w.removed;
    o.max_buffer_bytes = w.max_buffer;
    o
}

impl OutageReport {
    /// What the invariant is checked on; client drops cannot be tied to a window, so
    /// each outage may use all of them.
    fn tally(&self, client_dropped: u64) -> Tally {
        Tally {
            lost: self.lost,
            undetectable: self.lost_undetectable,
            unconfirmed: self.unconfirmed,
            client_dropped,
            removed: self.removed,
            disconnects: self.disconnects + self.subscriber_disconnects,
        }
    }
}

fn build_report(
    args: &ChaosArgs,
    outage: Duration,
    shared: &Shared,
    pub_stats: tether::Statistics,
    sub_stats: tether::Statistics,
    not_reconnected: u64,
) -> Report {
    let accepted = lock(&shared.accepted).clone();
    let delivered = lock(&shared.delivered).clone();
    let windows = lock(&shared.windows).clone();
    // An outage still open counts to the end of the run (and the run has failed).
    let gaps: Vec<(u64, u64)> = lock(&shared.gaps)
        .iter()
        .map(|g| (g.start, g.end.unwrap_or(u64::MAX)))
        .collect();
    let fate = |s: usize| Fate {
        accepted: accepted[s],
        delivered: delivered.get(s).copied().unwrap_or(0),
        away: gaps.iter().any(|&(a, b)| a <= s as u64 && (s as u64) < b),
    };
    let client_dropped = sub_stats.slow_consumer_dropped;
    let invariant = Invariant::of(args);

    let mut delivered_refused = 0;
    let mut per: Vec<OutageReport> = (windows.iter().enumerate())
        .map(|(wi, w)| {
            let end = windows
                .get(wi + 1)
                .map_or(accepted.len() as u64, |n| n.first_seq) as usize;
            let mut o = window_report(
                w,
                (w.first_seq as usize..end.min(accepted.len())).map(fate),
                &mut delivered_refused,
            );
            o.invariant_ok = invariant.holds(&o.tally(client_dropped));
            o
        })
        .collect();
    // Window 0 (before the first fault) is folded into the totals only.
    let pre = per.remove(0);
    let sum = |f: fn(&OutageReport) -> u64| f(&pre) + per.iter().map(f).sum::<u64>();
    let total = |f: fn(&OutageReport) -> &Migrations| {
        let mut m = *f(&pre);
        for o in &per {
            m.add(f(o));
        }
        m
    };
    let all = Tally {
        lost: sum(|o| o.lost),
        undetectable: sum(|o| o.lost_undetectable),
        unconfirmed: sum(|o| o.unconfirmed),
        client_dropped,
        removed: sum(|o| o.removed),
        disconnects: sum(|o| o.disconnects + o.subscriber_disconnects),
    };
    let invariant_ok =
        invariant.holds(&all) && per.iter().all(|o| o.invariant_ok) && not_reconnected == 0;
    let max_buffer_bytes = windows
        .iter()
        .map(|w| w.max_buffer)
        .max()
        .unwrap_or(0)
        .max(pub_stats.buffer_high_water_bytes);

    Report {
        fault: args.fault,
        cluster: args.cluster,
        two_clients: args.two_clients,
        resend_unconfirmed: args.resend_unconfirmed,
        rate: args.rate,
        outage_ms: outage.as_millis() as u64,
        outages: args.outages,
        published: sum(|o| o.published),
        delivered: sum(|o| o.delivered),
        lost: all.lost,
        unconfirmed: all.unconfirmed,
        client_dropped,
        removed: all.removed,
        duplicates: sum(|o| o.duplicates),
        errors: sum(|o| o.refused),
        downtime_ms: per.iter().map(|o| o.downtime_ms).collect(),
        reconnect_ms: per.iter().map(|o| o.reconnect_ms).collect(),
        max_buffer_bytes,
        disconnects: sum(|o| o.disconnects),
        migrations: total(|o| &o.migrations),
        subscriber_disconnects: sum(|o| o.subscriber_disconnects),
        subscriber_migrations: total(|o| &o.subscriber_migrations),
        subscriber_outage_msgs: sum(|o| o.subscriber_outage_msgs),
        lost_undetectable: all.undetectable,
        invariant: invariant.rule(),
        invariant_ok,
        delivered_refused,
        stats_unconfirmed: pub_stats.unconfirmed_reported_msgs,
        stats_removed: pub_stats.frames_removed,
        stats_migrations: pub_stats.migrations,
        subscriber_stats_migrations: if args.two_clients {
            sub_stats.migrations
        } else {
            0
        },
        events_lagged: shared.lagged.load(Ordering::Relaxed),
        first_error: lock(&shared.first_error).clone(),
        not_reconnected,
        per_outage: per,
    }
}

#[allow(clippy::too_many_lines)] // issue 12 step 6 splits it; remove then
fn print_report(r: &Report) {
    println!(
        "chaos: {} outages of {} ms ({:?}{}{}{}) at {} msgs/s",
        r.outages,
        r.outage_ms,
        r.fault,
        if r.cluster { ", cluster" } else { "" },
        if r.two_clients {
            ", two clients"
        } else {
            ", one client"
        },
        if r.resend_unconfirmed {
            ", resend unconfirmed"
        } else {
            ""
        },
        r.rate
    );
    println!(
        "{:>3} {:>10} {:>10} {:>9} {:>9} {:>7} {:>7} {:>7} {:>11} {:>8} {:>12} {:>9}",
        "#",
        "downtime",
        "reconnect",
        "published",
        "delivered",
        "lost",
        "dups",
        "refused",
        "unconfirmed",
        "removed",
        "peak buffer",
        "invariant"
    );
    for (i, o) in r.per_outage.iter().enumerate() {
        println!(
            "{:>3} {:>7.0} ms {:>10} {:>9} {:>9} {:>7} {:>7} {:>7} {:>11} {:>8} {:>10} B {:>9}",
            i + 1,
            o.downtime_ms,
            // NaN: no Reconnected (a planned switch moved the client instead).
            if o.reconnect_ms.is_nan() {
                "-".to_owned()
            } else {
                format!("{:.0} ms", o.reconnect_ms)
            },
            o.published,
            o.delivered,
            o.lost,
            o.duplicates,
            o.refused,
            o.unconfirmed,
            o.removed,
            o.max_buffer_bytes,
            if o.invariant_ok { "ok" } else { "FAILED" }
        );
    }
    let migrated = r.migrations.any() || r.subscriber_migrations.any();
    if r.fault == Fault::Ldm || migrated {
        print_migrations(r);
    }
    println!(
        "total: published {}, delivered {}, lost {}, refused {}, duplicates {}, unconfirmed {}, \
         client dropped {}, removed {}, peak buffer {} B, disconnects {}",
        r.published,
        r.delivered,
        r.lost,
        r.errors,
        r.duplicates,
        r.unconfirmed,
        r.client_dropped,
        r.removed,
        r.max_buffer_bytes,
        r.disconnects
    );
    if r.fault == Fault::Ldm || migrated {
        println!(
            "planned switches: publisher {}{}",
            migrations_text(&r.migrations),
            if r.two_clients {
                format!(", subscriber {}", migrations_text(&r.subscriber_migrations))
            } else {
                String::new()
            }
        );
    }
    if r.two_clients {
        println!(
            "subscriber outages: {} disconnects, {} messages published meanwhile, {} of them \
             lost (undetectable)",
            r.subscriber_disconnects, r.subscriber_outage_msgs, r.lost_undetectable
        );
    }
    if let Some(e) = &r.first_error {
        println!("first publish error: {e}");
    }
    if r.delivered_refused > 0 {
        println!(
            "delivered although publish returned an error: {}",
            r.delivered_refused
        );
    }
    if r.stats_unconfirmed != r.unconfirmed || r.stats_removed != r.removed {
        println!(
            "note: statistics() says unconfirmed {} and removed {}; events say {} and {}",
            r.stats_unconfirmed, r.stats_removed, r.unconfirmed, r.removed
        );
    }
    if r.stats_migrations != r.migrations.migrated
        || (r.two_clients && r.subscriber_stats_migrations != r.subscriber_migrations.migrated)
    {
        println!(
            "note: statistics() says {} and {} migrations; Migrated events say {} and {} \
             (publisher, subscriber)",
            r.stats_migrations,
            r.subscriber_stats_migrations,
            r.migrations.migrated,
            r.subscriber_migrations.migrated
        );
    }
    println!(
        "invariant ({}, per outage and in total): {}",
        r.invariant,
        if r.invariant_ok { "ok" } else { "FAILED" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(two_clients: bool, resend_unconfirmed: bool) -> ChaosArgs {
        ChaosArgs {
            cluster: false,
            fault: Fault::Kill,
            outages: 2,
            outage_ms: 300,
            rate: 500,
            json: true,
            resend_unconfirmed,
            two_clients,
            no_echo: false,
            subject: "chaos.test".into(),
            server: None,
        }
    }

    /// 30 messages in three windows of 10 (before the first fault, outage 1, outage 2),
    /// all accepted; the ones in `lost` never delivered; `unconfirmed[i]` reported in
    /// window i; subscriber outages `gaps` (start..end).
    fn run(
        args: &ChaosArgs,
        lost: &[usize],
        unconfirmed: [u64; 3],
        gaps: &[(u64, u64)],
        client_dropped: u64,
        not_reconnected: u64,
    ) -> Report {
        let shared = fixture(lost, unconfirmed, gaps);
        report(args, &shared, client_dropped, not_reconnected)
    }

    /// The state [`run`] reports on.
    fn fixture(lost: &[usize], unconfirmed: [u64; 3], gaps: &[(u64, u64)]) -> Shared {
        let shared = Shared::default();
        *lock(&shared.windows) = (0..3)
            .map(|i| Window {
                first_seq: 10 * i as u64,
                unconfirmed: unconfirmed[i],
                ..Window::default()
            })
            .collect();
        *lock(&shared.accepted) = vec![true; 30];
        *lock(&shared.delivered) = (0..30).map(|s| u32::from(!lost.contains(&s))).collect();
        *lock(&shared.gaps) = gaps
            .iter()
            .map(|&(start, end)| Gap {
                start,
                end: Some(end),
                first_probe: 0,
            })
            .collect();
        shared
    }

    fn report(
        args: &ChaosArgs,
        shared: &Shared,
        client_dropped: u64,
        not_reconnected: u64,
    ) -> Report {
        let mut sub_stats = tether::Statistics::default();
        sub_stats.slow_consumer_dropped = client_dropped;
        build_report(
            args,
            Duration::from_millis(300),
            shared,
            tether::Statistics::default(),
            sub_stats,
            not_reconnected,
        )
    }

    fn ldm_args() -> ChaosArgs {
        ChaosArgs {
            cluster: true,
            fault: Fault::Ldm,
            ..args(true, false)
        }
    }

    fn migrating() -> tether::Event {
        tether::Event::now(EventKind::Migrating {
            from: "nats://127.0.0.1:4222".into(),
            to: "nats://127.0.0.1:4223".into(),
            reason: tether::MigrateReason::LameDuck,
        })
    }

    fn migrated(unconfirmed_msgs: u64) -> tether::Event {
        tether::Event::now(EventKind::Migrated {
            from: "nats://127.0.0.1:4222".into(),
            to: "nats://127.0.0.1:4223".into(),
            unconfirmed_msgs,
            unconfirmed_bytes: 10 * unconfirmed_msgs,
        })
    }

    #[test]
    fn migrations_and_duplicates_are_reported_per_outage() {
        let shared = fixture(&[], [0, 0, 0], &[]);
        // Outage 1: both clients move; sequence numbers 12 and 13 arrive twice.
        shared.window.store(1, Ordering::SeqCst);
        {
            let mut w = lock(&shared.windows);
            w[1].migrations.count(&migrating().kind);
            w[1].migrations.count(&migrated(2).kind);
            w[2].migrations.count(&migrating().kind);
        }
        subscriber_event(&shared, migrating());
        subscriber_event(&shared, migrated(0));
        lock(&shared.delivered)[12] = 2;
        lock(&shared.delivered)[13] = 3;
        let r = report(&ldm_args(), &shared, 0, 0);
        let o = &r.per_outage;
        assert_eq!((o[0].duplicates, o[1].duplicates, r.duplicates), (3, 0, 3));
        let one = Migrations {
            migrating: 1,
            migrated: 1,
            unconfirmed_msgs: 2,
            unconfirmed_bytes: 20,
        };
        assert_eq!(o[0].migrations, one);
        assert_eq!(
            o[1].migrations,
            Migrations {
                migrating: 1,
                ..Migrations::default()
            }
        );
        assert_eq!(r.migrations.migrating, 2);
        assert_eq!(r.migrations.migrated, 1);
        assert_eq!(
            o[0].subscriber_migrations,
            Migrations {
                migrating: 1,
                migrated: 1,
                ..Migrations::default()
            }
        );
        assert_eq!(r.subscriber_migrations.migrated, 1);
        // Nothing lost, no disconnect: lame duck mode's rule holds.
        assert_eq!((r.lost, r.disconnects, r.subscriber_disconnects), (0, 0, 0));
        assert!(r.invariant_ok, "{r:?}");
        assert_eq!(
            r.invariant,
            "lost == 0 and disconnects + subscriber_disconnects == 0"
        );
    }

    #[test]
    fn a_planned_switch_is_no_outage() {
        let shared = fixture(&[14], [0, 1, 0], &[]);
        shared.window.store(1, Ordering::SeqCst);
        shared.delivered_upto.store(14, Ordering::SeqCst);
        // The subscriber moves: no subscriber outage opens, so a message it missed is
        // lost, not undetectable.
        subscriber_event(&shared, migrating());
        subscriber_event(&shared, migrated(0));
        assert!(!shared.subscriber_outage_open());
        assert!(lock(&shared.gaps).is_empty());
        let r = report(&ldm_args(), &shared, 0, 0);
        assert_eq!((r.lost, r.lost_undetectable), (1, 0));
        assert_eq!(r.subscriber_disconnects, 0);
        // Lame duck mode: a loss fails the run, even one reported unconfirmed...
        assert!(!r.invariant_ok);
        assert!(!r.per_outage[0].invariant_ok);
        // ... which the other faults accept.
        let r = report(&args(true, false), &shared, 0, 0);
        assert!(r.invariant_ok, "{r:?}");
        // A Disconnected is an outage, and fails lame duck mode even without a loss.
        let shared = fixture(&[], [0, 0, 0], &[]);
        shared.window.store(2, Ordering::SeqCst);
        subscriber_event(
            &shared,
            tether::Event::now(EventKind::Disconnected {
                server: "nats://127.0.0.1:4222".into(),
                reason: "the server closed the connection".into(),
                unconfirmed_msgs: 0,
                unconfirmed_bytes: 0,
            }),
        );
        assert!(shared.subscriber_outage_open());
        let r = report(&ldm_args(), &shared, 0, 0);
        assert_eq!(r.per_outage[1].subscriber_disconnects, 1);
        assert!(!r.per_outage[1].invariant_ok);
        assert!(r.per_outage[0].invariant_ok);
    }

    fn per_outage_ok(r: &Report) -> Vec<bool> {
        r.per_outage.iter().map(|o| o.invariant_ok).collect()
    }

    fn holds(inv: Invariant, lost: u64, undetectable: u64, unconfirmed: u64) -> bool {
        let t = Tally {
            lost,
            undetectable,
            unconfirmed,
            client_dropped: 1,
            removed: 0,
            disconnects: 0,
        };
        inv.holds(&t)
    }

    #[test]
    fn the_invariant_needs_a_report_for_every_loss() {
        let inv = |ldm, resend_unconfirmed| Invariant {
            ldm,
            two_clients: true,
            resend_unconfirmed,
        };
        assert!(holds(inv(false, false), 3, 0, 2));
        assert!(!holds(inv(false, false), 4, 0, 2));
        let removed = Tally {
            lost: 4,
            unconfirmed: 2,
            client_dropped: 1,
            removed: 1,
            ..Tally::default()
        };
        assert!(inv(false, false).holds(&removed));
        // With resending, nothing may be lost, whatever was unconfirmed.
        assert!(holds(inv(false, true), 0, 0, 5));
        assert!(!holds(inv(false, true), 1, 0, 5));
        // Losses during the subscriber's own outages are set apart, not the others.
        assert!(holds(inv(false, false), 5, 4, 0));
        assert!(!holds(inv(false, false), 5, 3, 0));
        assert!(holds(inv(false, false), 5, 3, 1));
        assert!(holds(inv(false, true), 4, 4, 0));
        assert!(!holds(inv(false, true), 4, 3, 1));
    }

    #[test]
    fn lame_duck_mode_may_neither_lose_nor_disconnect() {
        for (two_clients, resend_unconfirmed) in [(false, false), (true, false), (true, true)] {
            let inv = Invariant {
                ldm: true,
                two_clients,
                resend_unconfirmed,
            };
            assert!(holds(inv, 0, 0, 5));
            // A loss fails it, reported or not, even during a subscriber outage.
            assert!(!holds(inv, 1, 0, 5));
            assert!(!holds(inv, 1, 1, 0));
            // So does a link the server closed before the client moved.
            let dropped = Tally {
                disconnects: 1,
                ..Tally::default()
            };
            assert!(!inv.holds(&dropped));
            assert!(inv.rule().starts_with("lost == 0 and disconnects"));
        }
    }

    #[test]
    fn one_client_losses_beyond_the_reports_fail() {
        let a = args(false, false);
        // Outage 1 loses 2 and reports 2 unconfirmed: fine.
        let r = run(&a, &[14, 15], [0, 2, 0], &[], 0, 0);
        assert_eq!((r.published, r.delivered, r.lost), (30, 28, 2));
        assert!(r.invariant_ok, "{r:?}");
        // One more lost than reported.
        let r = run(&a, &[14, 15, 16], [0, 2, 0], &[], 0, 0);
        assert!(!r.invariant_ok);
        assert_eq!(per_outage_ok(&r), [false, true]);
        // Client drops count for every outage.
        let r = run(&a, &[14, 15, 16], [0, 2, 0], &[], 1, 0);
        assert!(r.invariant_ok, "{r:?}");
        // Enough in total, but reported in the other outage: fails per outage.
        let r = run(&a, &[14, 15], [0, 0, 2], &[], 0, 0);
        assert!(!r.invariant_ok);
        assert_eq!(per_outage_ok(&r), [false, true]);
        // A client that did not come back fails the run.
        let r = run(&a, &[], [0, 0, 0], &[], 0, 1);
        assert!(!r.invariant_ok);
        // --resend-unconfirmed: nothing may be lost.
        let r = run(&args(false, true), &[14], [0, 5, 0], &[], 0, 0);
        assert!(!r.invariant_ok);
        let r = run(&args(false, true), &[], [0, 5, 0], &[], 0, 0);
        assert!(r.invariant_ok, "{r:?}");
    }

    #[test]
    fn two_clients_excuse_only_the_subscriber_outages() {
        let a = args(true, false);
        // Lost while the subscriber was away (12..18): undetectable, not a failure.
        let r = run(&a, &[14, 15, 16], [0, 0, 0], &[(12, 18)], 0, 0);
        assert_eq!(r.lost_undetectable, 3);
        assert_eq!(r.subscriber_outage_msgs, 6);
        assert_eq!(r.per_outage[0].lost_undetectable, 3);
        assert!(r.invariant_ok, "{r:?}");
        // One lost after the subscriber was back and nothing reported: fails.
        let r = run(&a, &[14, 15, 16, 19], [0, 0, 0], &[(12, 18)], 0, 0);
        assert_eq!(r.lost_undetectable, 3);
        assert!(!r.invariant_ok);
        assert_eq!(per_outage_ok(&r), [false, true]);
        // ... unless the publisher reported it unconfirmed.
        let r = run(&a, &[14, 15, 16, 19], [0, 1, 0], &[(12, 18)], 0, 0);
        assert!(r.invariant_ok, "{r:?}");
        // With resending, only the subscriber's outages may lose anything.
        let r = run(&args(true, true), &[14, 19], [0, 1, 0], &[(12, 18)], 0, 0);
        assert!(!r.invariant_ok);
        let r = run(&args(true, true), &[14], [0, 1, 0], &[(12, 18)], 0, 0);
        assert!(r.invariant_ok, "{r:?}");
    }

    #[test]
    fn a_subscriber_outage_ends_at_its_first_probe_received() {
        let shared = Shared::default();
        shared.delivered_upto.store(7, Ordering::SeqCst);
        shared.subscriber_down();
        assert!(shared.subscriber_outage_open());
        // Probe 0 is sent, then the subscriber drops again: only later probes count.
        lock(&shared.probes).after.push(Some(9));
        shared.subscriber_down();
        lock(&shared.probes).seen.push(0);
        assert!(shared.subscriber_outage_open());
        lock(&shared.probes).after.extend([Some(12), Some(15)]);
        lock(&shared.probes).seen.extend([2, 1]);
        assert!(!shared.subscriber_outage_open());
        assert_eq!(
            *lock(&shared.gaps),
            [Gap {
                start: 7,
                end: Some(12),
                first_probe: 1
            }]
        );
        // The next outage starts where the subscriber's messages stopped.
        shared.delivered_upto.store(20, Ordering::SeqCst);
        shared.subscriber_down();
        assert_eq!(lock(&shared.gaps)[1].start, 20);
        assert!(shared.subscriber_outage_open());
    }
}
