//! The reconnect workload: how soon each library is back after its server restarts.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::client::{AsyncNatsClient, BenchClient, Setup, TetherClient};
use crate::stats::percentile;
use crate::{within, BoxError, ByLib, Lib, Res, SETTLE};

/// Server restarts per library and reconnect wait.
pub(crate) const RESTARTS: usize = 10;
/// How long the server stays down each time: the injected fault.
pub(crate) const DOWNTIME: Duration = Duration::from_secs(1);
/// The varied series adds this to [`DOWNTIME`] at each restart (1.0 s, 1.1 s, ... 1.9 s).
pub(crate) const DOWNTIME_STEP: Duration = Duration::from_millis(100);
/// The reconnect wait of the second reconnect series, on both sides.
const FIXED_WAIT: Duration = Duration::from_millis(100);

/// The reconnect wait a reconnect series runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReconnectWait {
    /// Each library's default backoff.
    Default,
    /// [`FIXED_WAIT`] before every attempt.
    Fixed,
    /// Each library's default backoff, with the server down [`DOWNTIME`] plus
    /// [`DOWNTIME_STEP`] per restart: no fixed retry schedule lines up with every outage.
    DefaultVaried,
}

impl ReconnectWait {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ReconnectWait::Default => "default wait",
            ReconnectWait::Fixed => "100 ms wait",
            ReconnectWait::DefaultVaried => "default, 1-1.9 s",
        }
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            ReconnectWait::Default => "default_wait",
            ReconnectWait::Fixed => "fixed_100ms_wait",
            ReconnectWait::DefaultVaried => "default_wait_varied_downtime",
        }
    }

    /// The connect options that differ from the library's defaults.
    fn setup(self) -> Setup {
        match self {
            ReconnectWait::Default | ReconnectWait::DefaultVaried => Setup::default(),
            ReconnectWait::Fixed => Setup {
                reconnect_wait: Some(FIXED_WAIT),
                ..Setup::default()
            },
        }
    }

    /// How long the server stays down before restart `i` (from 0).
    pub(crate) fn downtime(self, i: usize) -> Duration {
        match self {
            ReconnectWait::Default | ReconnectWait::Fixed => DOWNTIME,
            ReconnectWait::DefaultVaried => DOWNTIME + DOWNTIME_STEP * i as u32,
        }
    }
}

/// Milliseconds from "the server accepts again" to the client's reconnected event, per
/// restart, per library.
#[derive(Debug)]
pub(crate) struct ReconnectSeries {
    pub(crate) wait: ReconnectWait,
    ms: ByLib<Vec<f64>>,
    /// Per restart, ms from the client's disconnected event to its reconnected event (the
    /// outage as the client saw it; about `DOWNTIME` plus the restart plus the figure above).
    outage: ByLib<Vec<f64>>,
}

impl ReconnectSeries {
    pub(crate) fn of(&self, lib: Lib) -> &[f64] {
        self.ms.of(lib)
    }

    pub(crate) fn outage_of(&self, lib: Lib) -> &[f64] {
        self.outage.of(lib)
    }

    /// (p50, p90, max) in ms.
    pub(crate) fn stats(&self, lib: Lib) -> (f64, f64, f64) {
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
pub(crate) enum Link {
    Down,
    Up,
}

pub(crate) type LinkRx = mpsc::UnboundedReceiver<(Instant, Link)>;

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

/// One library's [`RESTARTS`] restarts on one connection: (ms from the server
/// accepting again to the reconnected event, outage seen by the client) per restart.
fn reconnect_one(
    rt: &tokio::runtime::Runtime,
    server: &mut tether_testkit::NatsServer,
    lib: Lib,
    wait: ReconnectWait,
    quiet: bool,
) -> Res<(Vec<f64>, Vec<f64>)> {
    match lib {
        Lib::Tether => restarts::<TetherClient>(rt, server, wait, quiet),
        Lib::AsyncNats => restarts::<AsyncNatsClient>(rt, server, wait, quiet),
    }
}

fn restarts<C: BenchClient>(
    rt: &tokio::runtime::Runtime,
    server: &mut tether_testkit::NatsServer,
    wait: ReconnectWait,
    quiet: bool,
) -> Res<(Vec<f64>, Vec<f64>)> {
    let url = server.url();
    let (client, mut rx) = rt.block_on(C::connect_watched(&url, wait.setup()))?;
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
                C::LIB.name()
            );
        }
        ms.push(d);
        outage.push(o);
        std::thread::sleep(SETTLE);
    }
    rt.block_on(client.close())?;
    Ok((ms, outage))
}

pub(crate) fn run_reconnect(
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
            ms: ByLib::default(),
            outage: ByLib::default(),
        };
        for lib in order {
            let (ms, outage) = reconnect_one(rt, server, lib, wait, quiet)?;
            *series.ms.of_mut(lib) = ms;
            *series.outage.of_mut(lib) = outage;
        }
        out.push(series);
    }
    Ok(out)
}
