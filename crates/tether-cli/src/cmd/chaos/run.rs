//! The run: connect the clients, start the tasks, then per outage inject the fault, end
//! it, wait for the clients to recover and say how it went; then count.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tether::{Client, ConnectOptions, State};
use tokio::task::JoinHandle;

use super::fault::{self, Guarded};
use super::plot::Record;
use super::report::{build_report, Report};
use super::state::{lock, Shared, Window};
use super::{
    ms, since_ms, tasks, ChaosArgs, Fault, BLACKHOLE_PING, LDM_GRACE, PAYLOAD_LEN, PENDING_MARGIN,
    QUIET, RECONNECT_TIMEOUT, SETTLE, WARMUP,
};
use crate::error::Context as _;
use crate::{util, CliError};

/// Runs the outages against `target`, whose clients connect to `url`; returns the report
/// and, with `--plot`, what the plot draws (an error if a fault could not be injected or
/// ended).
pub(super) async fn drive(
    args: &ChaosArgs,
    outage: Duration,
    target: &Guarded,
    url: &str,
    local_ca: Option<&Path>,
) -> Result<(Report, Option<Record>), CliError> {
    if args.fault == Fault::Ldm {
        ldm_notes(args.json);
    }
    let clients = connect_clients(args, outage, url, local_ca).await?;
    let shared = Arc::new(Shared::default());
    lock(&shared.windows).push(Window::default());
    let (tasks, progress) = Tasks::start(args, &clients, &shared).await?;
    let run = Run {
        args,
        outage,
        target,
        clients: &clients,
        shared: &shared,
        progress: &progress,
    };
    tokio::time::sleep(WARMUP / 2).await;
    run.open_window();
    tokio::time::sleep(WARMUP / 2).await;
    let mut not_reconnected = 0;
    let mut failure = None;
    for i in 1..=args.outages as usize {
        match run.outage(i).await {
            Ok(recovered) => not_reconnected += u64::from(!recovered),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let report = run.finish(tasks, not_reconnected, failure).await?;
    let record = args.plot.is_some().then(|| Record::of(&shared, &report));
    Ok((report, record))
}

/// The publisher's client and the subscriber's (the same client without `--two-clients`).
struct Clients {
    publisher: Client,
    subscriber: Client,
}

/// Connects the clients, with pending limits that hold the whole outage and, for
/// `blackhole`, pings fast enough to find the stale link during it; with the global
/// credentials and TLS options, trusting `local_ca` (the CA of chaos's own TLS servers)
/// when given.
async fn connect_clients(
    args: &ChaosArgs,
    outage: Duration,
    url: &str,
    local_ca: Option<&Path>,
) -> Result<Clients, CliError> {
    let pending_msgs =
        (f64::from(args.rate) * (outage + PENDING_MARGIN).as_secs_f64()).ceil() as usize;
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
    if let Some(global) = &args.global {
        opts = global.apply(opts)?;
    }
    if let Some(ca) = local_ca {
        opts = opts.tls_ca_file(ca);
    }
    let publisher = util::connect(url, opts.clone())
        .await
        .context(format_args!("connecting to {url}"))?;
    let subscriber = if args.two_clients {
        util::connect(url, opts)
            .await
            .context(format_args!("connecting the subscriber to {url}"))?
    } else {
        publisher.clone()
    };
    Ok(Clients {
        publisher,
        subscriber,
    })
}

/// A bar of the outages done on stderr when it is a terminal (hidden otherwise).
fn progress_bar(outages: u32) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(u64::from(outages)),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template("{bar:20} {pos}/{len} outages {elapsed} {msg}")
    {
        bar.set_style(style);
    }
    bar
}

/// The progress bar, and where the lines said during the run go.
struct Progress {
    bar: ProgressBar,
    /// `--json`: without a terminal, say nothing.
    json: bool,
}

impl Progress {
    /// A line above the bar; without a terminal, on stderr (unless `--json`).
    fn say(&self, line: String) {
        if self.bar.is_hidden() {
            if !self.json {
                eprintln!("{line}");
            }
        } else {
            self.bar.println(line);
        }
    }
}

/// The tasks of a run.
struct Tasks {
    /// Stopped with `Shared::stop`, and awaited.
    publisher: JoinHandle<()>,
    /// Aborted once the counting is done.
    subscriber: JoinHandle<()>,
    /// The event counter, the prober and the sampler: aborted after the quiet period.
    others: Vec<JoinHandle<()>>,
}

impl Tasks {
    /// Starts the tasks; the subscription is confirmed before the publisher starts. The
    /// progress bar, which the sampler updates, is made once it is (an error before leaves
    /// no bar on the terminal).
    async fn start(
        args: &ChaosArgs,
        clients: &Clients,
        shared: &Arc<Shared>,
    ) -> Result<(Self, Progress), CliError> {
        let Clients {
            publisher,
            subscriber,
        } = clients;
        let mut others = vec![tasks::spawn_events(publisher, Arc::clone(shared))];
        if args.plot.is_some() {
            others.push(tasks::spawn_timeline(Arc::clone(shared)));
        }
        let sub_events = args.two_clients.then(|| subscriber.events());
        if args.two_clients {
            others.push(tasks::spawn_prober(
                publisher.clone(),
                subscriber.clone(),
                args.subject.clone(),
                Arc::clone(shared),
            ));
        }
        let sub = util::subscribe_confirmed(
            subscriber,
            &args.subject,
            None,
            &format!("subscribing to {}", args.subject),
        )
        .await?;
        let sub_task = tasks::spawn_subscriber(sub, sub_events, Arc::clone(shared));
        let progress = Progress {
            bar: progress_bar(args.outages),
            json: args.json,
        };
        others.push(tasks::spawn_sampler(
            publisher.clone(),
            subscriber.clone(),
            Arc::clone(shared),
            progress.bar.clone(),
        ));
        let pub_task = tasks::spawn_publisher(
            publisher.clone(),
            args.subject.clone(),
            args.rate,
            Arc::clone(shared),
        );
        let tasks = Self {
            publisher: pub_task,
            subscriber: sub_task,
            others,
        };
        Ok((tasks, progress))
    }
}

/// What the steps of a run share.
struct Run<'a> {
    args: &'a ChaosArgs,
    outage: Duration,
    target: &'a Guarded,
    clients: &'a Clients,
    shared: &'a Shared,
    progress: &'a Progress,
}

impl Run<'_> {
    /// Opens the next window at the next sequence number. Outage i's messages start
    /// halfway through the quiet run before its fault, so the messages in flight when the
    /// fault hits count for it.
    fn open_window(&self) {
        lock(&self.shared.windows).push(Window {
            first_seq: self.shared.next_seq.load(Ordering::SeqCst),
            ..Window::default()
        });
    }

    /// Outage `i`: injects the fault, ends it after the outage, waits for the clients to
    /// recover, settles and says how it went. Returns whether they recovered in time; an
    /// error if the fault could not be injected or ended.
    async fn outage(&self, i: usize) -> Result<bool, CliError> {
        let shared = self.shared;
        shared.window.store(i, Ordering::SeqCst);
        let fault_at = Instant::now();
        shared.with_window(|w| w.fault_at = Some(fault_at));
        let fault = self.args.fault;
        let connected = self.clients.publisher.connected_server();
        let node = fault::blocking(self.target, move |t| {
            fault::inject(t, fault, connected.as_deref())
        })
        .await??;
        tokio::time::sleep(self.outage).await;
        fault::blocking(self.target, move |t| fault::restore(t, fault, node)).await??;
        let up_at = if self.args.cluster {
            fault_at
        } else {
            Instant::now()
        };
        shared.with_window(|w| w.up_at = Some(up_at));
        let recovered = self.wait_recovered(i).await;
        tokio::time::sleep(SETTLE / 2).await;
        if i < self.args.outages as usize {
            self.open_window();
        }
        tokio::time::sleep(SETTLE / 2).await;
        let w = lock(&shared.windows)[i].clone();
        self.progress
            .say(outage_line(i, self.args.outages, &w, up_at, fault_at));
        self.progress.bar.inc(1);
        Ok(recovered)
    }

    /// Waits until the publisher has reconnected or moved, both clients are connected
    /// and (with two clients) a probe has reached the subscriber again; false (and a line
    /// saying so) if that takes longer than [`RECONNECT_TIMEOUT`].
    async fn wait_recovered(&self, i: usize) -> bool {
        let deadline = Instant::now() + RECONNECT_TIMEOUT;
        let Clients {
            publisher,
            subscriber,
        } = self.clients;
        loop {
            let recovered = lock(&self.shared.windows)[i].recovered();
            // With two clients, until a probe has reached the subscriber again.
            let receiving = !self.shared.subscriber_outage_open();
            if recovered && all_connected(&[publisher, subscriber]) && receiving {
                lock(&self.shared.windows)[i].recovered_at = Some(Instant::now());
                return true;
            }
            if Instant::now() > deadline {
                self.progress.say(format!(
                    "outage {i}: neither reconnected nor moved within {RECONNECT_TIMEOUT:?} \
                     of the server being back (publisher {:?}, subscriber {:?}{})",
                    publisher.status(),
                    subscriber.status(),
                    if receiving { "" } else { ", no probe received" }
                ));
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the publisher, flushes, waits [`QUIET`] and stops the tasks; then the report
    /// (or the `failure` that ended the outages early).
    async fn finish(
        &self,
        tasks: Tasks,
        mut not_reconnected: u64,
        failure: Option<CliError>,
    ) -> Result<Report, CliError> {
        let shared = self.shared;
        let Clients {
            publisher,
            subscriber,
        } = self.clients;
        shared.stop.store(true, Ordering::SeqCst);
        let _ = tasks.publisher.await;
        if let Err(e) = publisher.flush().await {
            self.progress.say(format!("final flush: {e}"));
        }
        tokio::time::sleep(QUIET).await;
        self.progress.bar.finish_and_clear();
        for t in &tasks.others {
            t.abort();
        }
        if not_reconnected == 0 && shared.subscriber_outage_open() {
            not_reconnected += 1;
            self.progress.say(
                "the subscriber lost its link after the last outage and no probe reached it \
                 again"
                    .into(),
            );
        }
        tasks.subscriber.abort();
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(build_report(
            self.args,
            self.outage,
            shared,
            publisher.statistics(),
            subscriber.statistics(),
            not_reconnected,
        ))
    }
}

fn all_connected(clients: &[&Client]) -> bool {
    clients.iter().all(|c| c.status() == State::Connected)
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
