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
//! - Every payload is a u64 big-endian sequence number. `lost` = published and accepted
//!   by `publish` − distinct delivered, counted after a final `flush` and 1 s of quiet.
//! - One client by default (echo on), with pending limits large enough for the whole
//!   outage: then `lost ≤ unconfirmed + client_dropped + removed` must hold exactly, and
//!   with `--resend-unconfirmed`, `lost == 0`. With `--two-clients` the subscriber's own
//!   losses (messages the server had no subscription for) cannot be detected by any
//!   client: what the publisher's counters do not explain is `lost_undetectable`.
//! - Outage windows: outage i covers every message published from halfway through the
//!   quiet run before its fault to halfway through the one after it (the last to the end
//!   of the run), so the messages in flight when the fault hits count for it.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
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
/// ldm_jitter for `--fault ldm`: under the server's lame_duck_grace_period (2 s in tests).
const LDM_JITTER: Duration = Duration::from_millis(500);
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

/// The fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// SIGKILL the server, restart it on the same port after the outage
    Kill,
    /// SIGTERM the server, restart it on the same port after the outage
    Restart,
    /// Stop forwarding through a proxy for the outage (at least 3 s)
    Blackhole,
    /// Lame duck mode on the connected node (needs --cluster)
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

Without --server (or NATS_URL) chaos starts its own nats-server (NATS_SERVER_BIN or
PATH); with --server only --fault blackhole is possible (through a local proxy).
Exits with status 1 if the invariant fails: lost <= unconfirmed + client_dropped +
removed (one client), lost == 0 with --resend-unconfirmed.")]
pub struct ChaosArgs {
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
    /// Publisher and subscriber on two clients (the subscriber's own losses are then
    /// undetectable)
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
pub type Args = ChaosArgs;

/// Entry point for the `commands!` list: `--server` comes from the global options.
pub async fn run(mut args: Args, global: &Global) -> Result<(), CliError> {
    if args.server.is_none() {
        args.server.clone_from(&global.server);
    }
    run_chaos(args).await.map_err(CliError::new)
}

// ===== report =====

/// One outage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutageReport {
    /// Disconnected → Reconnected, as the library reports it (sum over the window).
    pub downtime_ms: f64,
    /// Disconnected → Reconnected, as observed on the event stream.
    pub observed_downtime_ms: f64,
    /// Server accepting again (restarted, proxy passing; the fault for a cluster, where
    /// another node accepts all along) → Reconnected.
    pub reconnect_ms: f64,
    pub disconnects: u64,
    pub published: u64,
    pub delivered: u64,
    pub lost: u64,
    pub refused: u64,
    pub unconfirmed: u64,
    pub removed: u64,
    pub max_buffer_bytes: u64,
}

/// The result of a run.
#[derive(Debug, Serialize)]
pub struct Report {
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
    pub duplicates: u64,
    /// Publishes refused with an error.
    pub errors: u64,
    pub downtime_ms: Vec<f64>,
    pub reconnect_ms: Vec<f64>,
    pub max_buffer_bytes: u64,
    pub lost_undetectable: u64,
    pub invariant_ok: bool,
    /// Publishes that returned an error and were delivered all the same.
    pub delivered_refused: u64,
    /// `statistics()` counters, to cross-check the event sums.
    pub stats_unconfirmed: u64,
    pub stats_removed: u64,
    pub events_lagged: u64,
    /// The first publish error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Outages after which the client did not reconnect in time.
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
    up_at: Option<Instant>,
    max_buffer: u64,
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
    let addr = ServerAddr::parse(first)?;
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

fn spawn_events(client: &Client, shared: Arc<Shared>, record: bool) -> tokio::task::JoinHandle<()> {
    let mut events = client.events();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            let now = Instant::now();
            match e.kind {
                EventKind::Disconnected {
                    unconfirmed_msgs, ..
                } => shared.with_window(|w| {
                    w.unconfirmed += unconfirmed_msgs;
                    if record {
                        w.disconnects += 1;
                        w.disconnected_at.get_or_insert(now);
                    }
                }),
                // Lame duck mode: a planned switch, no downtime; it ends the outage.
                EventKind::Migrated {
                    unconfirmed_msgs, ..
                } => shared.with_window(|w| {
                    w.unconfirmed += unconfirmed_msgs;
                    if record {
                        w.reconnected_at.get_or_insert(now);
                    }
                }),
                EventKind::Reconnected { downtime, .. } if record => shared.with_window(|w| {
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

fn spawn_subscriber(
    mut sub: tether::Subscriber,
    shared: Arc<Shared>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
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
pub async fn run_chaos(args: ChaosArgs) -> Result<(), String> {
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
    } else if args.resend_unconfirmed && !args.two_clients {
        Err(format!(
            "invariant failed: {} messages lost with --resend-unconfirmed (must be 0)",
            report.lost
        ))
    } else {
        Err(format!(
            "invariant failed: lost {} > unconfirmed {} + client_dropped {} + removed {}",
            report.lost, report.unconfirmed, report.client_dropped, report.removed
        ))
    }
}

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
        // Move within the server's grace period, before it starts closing clients.
        opts = opts.ldm_jitter(LDM_JITTER);
        if !args.json {
            eprintln!(
                "chaos: each lame-duck outage lasts until the node exits (lame_duck_duration, 30 s) \
                 and is restarted; the client moves to another node within {LDM_JITTER:?}"
            );
        }
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
    let mut tasks = vec![spawn_events(&pub_client, Arc::clone(&shared), true)];
    if args.two_clients {
        tasks.push(spawn_events(&sub_client, Arc::clone(&shared), false));
    }
    let sub = util::subscribe_confirmed(
        &sub_client,
        &args.subject,
        None,
        &format!("subscribing to {}", args.subject),
    )
    .await
    .map_err(|e| e.to_string())?;
    let sub_task = spawn_subscriber(sub, Arc::clone(&shared));

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
            let reconnected = lock(&shared.windows)[i].reconnected_at.is_some();
            if reconnected && all_connected(&clients) {
                break;
            }
            if Instant::now() > deadline {
                not_reconnected += 1;
                say(format!(
                    "outage {i}: not reconnected within {RECONNECT_TIMEOUT:?} of the server \
                     being back (state {:?})",
                    pub_client.status()
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
        say(format!(
            "outage {i}/{}: downtime {:.0} ms, reconnect {:.0} ms after the server was back, \
             unconfirmed {}, peak buffer {} B",
            args.outages,
            ms(w.downtime),
            w.reconnected_at.map_or(f64::NAN, |r| since_ms(r, up_at)),
            w.unconfirmed,
            w.max_buffer,
        ));
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
    let got = |s: usize| delivered.get(s).copied().unwrap_or(0);

    let mut per = Vec::new();
    let (mut published, mut deliv, mut lost, mut refused, mut dups, mut delivered_refused) =
        (0, 0, 0, 0, 0, 0);
    for (wi, w) in windows.iter().enumerate() {
        let end = windows
            .get(wi + 1)
            .map_or(accepted.len() as u64, |n| n.first_seq) as usize;
        let mut o = OutageReport::default();
        for (s, &ok) in accepted
            .iter()
            .enumerate()
            .take(end)
            .skip(w.first_seq as usize)
        {
            let n = got(s);
            if ok {
                o.published += 1;
                if n == 0 {
                    o.lost += 1;
                }
            } else {
                o.refused += 1;
                if n > 0 {
                    delivered_refused += 1;
                }
            }
            if n > 0 {
                o.delivered += 1;
                dups += u64::from(n - 1);
            }
        }
        published += o.published;
        deliv += o.delivered;
        lost += o.lost;
        refused += o.refused;
        o.downtime_ms = ms(w.downtime);
        o.observed_downtime_ms = match (w.disconnected_at, w.reconnected_at) {
            (Some(d), Some(r)) => since_ms(r, d),
            _ => 0.0,
        };
        o.reconnect_ms = match (w.up_at, w.reconnected_at) {
            (Some(u), Some(r)) => since_ms(r, u),
            _ => f64::NAN,
        };
        o.disconnects = w.disconnects;
        o.unconfirmed = w.unconfirmed;
        o.removed = w.removed;
        o.max_buffer_bytes = w.max_buffer;
        per.push(o);
    }
    // Window 0 (before the first fault) is folded into the totals only.
    let pre = per.remove(0);
    let unconfirmed: u64 = pre.unconfirmed + per.iter().map(|o| o.unconfirmed).sum::<u64>();
    let removed: u64 = pre.removed + per.iter().map(|o| o.removed).sum::<u64>();
    let client_dropped = sub_stats.slow_consumer_dropped;
    let max_buffer_bytes = windows
        .iter()
        .map(|w| w.max_buffer)
        .max()
        .unwrap_or(0)
        .max(pub_stats.buffer_high_water_bytes);

    let (lost_undetectable, invariant_ok) = if args.two_clients {
        let explained = if args.resend_unconfirmed {
            0
        } else {
            unconfirmed
        } + client_dropped
            + removed;
        (lost.saturating_sub(explained), true)
    } else if args.resend_unconfirmed {
        (0, lost == 0)
    } else {
        (0, lost <= unconfirmed + client_dropped + removed)
    };
    let invariant_ok = invariant_ok && not_reconnected == 0;

    Report {
        fault: args.fault,
        cluster: args.cluster,
        two_clients: args.two_clients,
        resend_unconfirmed: args.resend_unconfirmed,
        rate: args.rate,
        outage_ms: outage.as_millis() as u64,
        outages: args.outages,
        published,
        delivered: deliv,
        lost,
        unconfirmed,
        client_dropped,
        removed,
        duplicates: dups,
        errors: refused,
        downtime_ms: per.iter().map(|o| o.downtime_ms).collect(),
        reconnect_ms: per.iter().map(|o| o.reconnect_ms).collect(),
        max_buffer_bytes,
        lost_undetectable,
        invariant_ok,
        delivered_refused,
        stats_unconfirmed: pub_stats.unconfirmed_reported_msgs
            + if args.two_clients {
                sub_stats.unconfirmed_reported_msgs
            } else {
                0
            },
        stats_removed: pub_stats.frames_removed,
        events_lagged: shared.lagged.load(Ordering::Relaxed),
        first_error: lock(&shared.first_error).clone(),
        not_reconnected,
        per_outage: per,
    }
}

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
        "{:>3} {:>10} {:>10} {:>9} {:>9} {:>7} {:>7} {:>11} {:>8} {:>12}",
        "#",
        "downtime",
        "reconnect",
        "published",
        "delivered",
        "lost",
        "refused",
        "unconfirmed",
        "removed",
        "peak buffer"
    );
    for (i, o) in r.per_outage.iter().enumerate() {
        println!(
            "{:>3} {:>7.0} ms {:>7.0} ms {:>9} {:>9} {:>7} {:>7} {:>11} {:>8} {:>10} B",
            i + 1,
            o.downtime_ms,
            o.reconnect_ms,
            o.published,
            o.delivered,
            o.lost,
            o.refused,
            o.unconfirmed,
            o.removed,
            o.max_buffer_bytes
        );
    }
    println!(
        "total: published {}, delivered {}, lost {}, refused {}, duplicates {}, unconfirmed {}, \
         client dropped {}, removed {}, peak buffer {} B",
        r.published,
        r.delivered,
        r.lost,
        r.errors,
        r.duplicates,
        r.unconfirmed,
        r.client_dropped,
        r.removed,
        r.max_buffer_bytes
    );
    if r.two_clients {
        println!(
            "lost undetectable (subscriber side): {}",
            r.lost_undetectable
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
    let rule = if r.two_clients {
        "not checkable with two clients"
    } else if r.resend_unconfirmed {
        "lost == 0"
    } else {
        "lost <= unconfirmed + client_dropped + removed"
    };
    println!(
        "invariant ({rule}): {}",
        if r.invariant_ok { "ok" } else { "FAILED" }
    );
}
