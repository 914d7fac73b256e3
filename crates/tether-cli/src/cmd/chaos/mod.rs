//! `tether chaos --fault kill|restart|blackhole|ldm [--outages K] [--outage-ms T] [--plot FILE.svg]`
//!
//! A publisher and a subscriber run through tether at a steady rate while faults are
//! injected K times; then a report says, per outage and in total, what the client saw
//! and whether what was lost is accounted for. With `--plot` the run is also drawn as an
//! SVG chart.
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
//! - `--plot FILE.svg` draws the run (1000×500, plotters' SVG backend, no fonts or
//!   browser needed): published and delivered messages per 100 ms over time (counts
//!   sampled every 100 ms), each outage as a shaded band from its fault until the fault
//!   has ended and the clients have recovered (what the run waits for before the next
//!   fault: for `ldm` the node's restart, although the clients moved long before),
//!   labelled with its lost, unconfirmed and refused counts, and
//!   the clients' `Disconnected`, `Reconnected`, `Migrating` and `Migrated` events as
//!   markers (hollow for the subscriber's client). The file is opened before anything
//!   starts, so a path that cannot be written is an error before the run, never after
//!   it; the chart is written once the report is printed (also when the invariant
//!   fails), and `plot written to PATH` said on stderr.
//! - Outage windows: outage i covers every message published from halfway through the
//!   quiet run before its fault to halfway through the one after it (the last to the end
//!   of the run), so the messages in flight when the fault hits count for it.
//!
//! Layout: `run` drives a run (the clients, the tasks, the per-outage loop, the end);
//! `fault` starts the servers and injects and ends faults; `tasks` holds the publisher,
//! subscriber, event, probe, sampler and timeline tasks; `state` what they share;
//! `report` turns the counts into the report and checks the invariant; `print` prints it
//! for a reader; `plot` draws it.

mod fault;
mod plot;
mod print;
mod report;
mod run;
mod state;
mod tasks;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Context as _;
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
/// `--plot`: how often the publish and delivery counts are sampled (the plot's bucket).
const TIMELINE_EVERY: Duration = Duration::from_millis(100);
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
  tether chaos --plot chaos.svg               the run drawn as an SVG chart
  tether chaos --tls --fault blackhole        over TLS, through the proxy

Without --server (or NATS_URL) chaos starts its own nats-server (NATS_SERVER_BIN or
PATH); with --server only --fault blackhole is possible (through a local proxy).
With --tls its own server(s) serve TLS with certificates from a throwaway CA made for
the run, which the clients trust (the blackhole proxy forwards the TLS bytes as they
are). Against a server of your own, give a tls:// URL and the global TLS and
credential options (--tls-ca, --tls-cert/--tls-key, --token, --user/--password...).

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
reported unconfirmed on the old link) and the duplicates.

--plot FILE.svg draws the run: published and delivered messages per 100 ms over time,
each outage as a shaded band (fault to recovery) labelled with its lost, unconfirmed
and refused counts, and the Disconnected, Reconnected, Migrating and Migrated events as
markers. FILE is opened before the run starts: a path that cannot be written is an
error at once.")]
// Independent command-line switches, each its own clap flag: grouping them would not say more.
#[allow(clippy::struct_excessive_bools)]
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
    /// Draw the run as an SVG chart in this file (opened before the run starts; see below)
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Start the local nats-server(s) (no --server) with TLS, with certificates from a
    /// throwaway CA that the clients trust (with --tls-first the servers want the TLS
    /// handshake first) [for a server of your own: a tls:// --server URL and --tls-ca]
    #[arg(long)]
    pub tls: bool,
    /// Server URL(s); taken from the global `--server` (a second `--server` here would
    /// collide with it)
    #[arg(skip)]
    pub server: Option<String>,
    /// The global options, whose credentials and TLS options the clients use (none when
    /// unset)
    #[arg(skip)]
    pub global: Option<Box<Global>>,
}

/// The name the `commands!` list in `main.rs` expects.
pub(crate) type Args = ChaosArgs;

/// Entry point for the `commands!` list: `--server` comes from the global options.
pub(crate) async fn run(mut args: Args, global: &Global) -> Result<(), CliError> {
    if args.tls {
        util::check_local_tls(global)?;
    }
    if args.server.is_none() {
        args.server.clone_from(&global.server);
    }
    args.global = Some(Box::new(global.clone()));
    run_chaos(args).await
}

/// Runs chaos as the arguments say; prints the report; fails if the invariant fails.
pub(crate) async fn run_chaos(args: ChaosArgs) -> Result<(), CliError> {
    check_args(&args)?;
    // A path that cannot be written fails now, before any server or client starts.
    let plot_file = args.plot.as_deref().map(plot::PlotFile::open).transpose()?;
    let mut outage = Duration::from_millis(args.outage_ms);
    if args.fault == Fault::Blackhole {
        outage = outage.max(MIN_BLACKHOLE_OUTAGE);
    }
    let (target, url, local_ca) = fault::start_target(&args).await?;
    let result = run::drive(&args, outage, &target, &url, local_ca.as_deref()).await;
    util::close_all(Duration::from_secs(2)).await;
    // The proxy joins its thread and servers are killed on drop: off the runtime.
    let _ = tokio::task::spawn_blocking(move || drop(target)).await;
    let (report, record) = result?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("encoding the report")?
        );
    } else {
        print::print_report(&report);
    }
    if let (Some(file), Some(record)) = (plot_file, record) {
        let path = file.path().display().to_string();
        file.write(&plot::render(&record)?)?;
        eprintln!("chaos: plot written to {path}");
    }
    if report.invariant_ok {
        Ok(())
    } else {
        Err(CliError::new(print::invariant_failure(&report)))
    }
}

/// Refuses combinations chaos cannot run, before anything starts.
fn check_args(args: &ChaosArgs) -> Result<(), CliError> {
    util::check_publish_subject("--subject", &args.subject)?;
    if args.no_echo {
        return Err(CliError::new(
            "chaos refuses --no-echo: the shared-client invariant needs the \
                    client to receive its own messages (echo)",
        ));
    }
    if args.rate == 0 {
        return Err(CliError::new("--rate must be at least 1"));
    }
    if args.fault == Fault::Ldm && !args.cluster {
        return Err(CliError::new(
            "--fault ldm needs --cluster: the client moves to another node of the cluster",
        ));
    }
    if args.cluster && args.fault == Fault::Blackhole {
        return Err(CliError::new(
            "--fault blackhole with --cluster is not supported yet",
        ));
    }
    if args.tls && args.server.is_some() {
        return Err(CliError::new(
            "--tls starts the local nats-server(s) with TLS; with --server (or NATS_URL) \
             give a tls:// URL and --tls-ca instead",
        ));
    }
    if args.cluster && args.server.is_some() {
        return Err(CliError::new(
            "--cluster starts its own servers; drop --server",
        ));
    }
    if args.server.is_some() && args.fault != Fault::Blackhole {
        return Err(CliError::new(format!(
            "--fault {} needs the local nats-server chaos starts: drop --server (or use \
             --fault blackhole)",
            match args.fault {
                Fault::Kill => "kill",
                _ => "restart",
            }
        )));
    }
    Ok(())
}

/// A duration in milliseconds, rounded to the microsecond.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `later - earlier` in milliseconds (0 if `later` is earlier).
fn since_ms(later: Instant, earlier: Instant) -> f64 {
    ms(later.saturating_duration_since(earlier))
}
