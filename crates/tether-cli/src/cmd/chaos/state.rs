//! What the tasks share: the windows (one per outage) the events are counted in, the
//! subscriber's outages and probes (`--two-clients`), every sequence number's fate, and
//! what `--plot` draws (the counts over time and the clients' connection events).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::report::Migrations;

/// What the event task saw in one window (0 = before the first fault).
#[derive(Debug, Default, Clone)]
pub(super) struct Window {
    pub(super) first_seq: u64,
    pub(super) disconnects: u64,
    pub(super) unconfirmed: u64,
    pub(super) removed: u64,
    pub(super) downtime: Duration,
    pub(super) disconnected_at: Option<Instant>,
    pub(super) reconnected_at: Option<Instant>,
    /// When the fault was injected.
    pub(super) fault_at: Option<Instant>,
    pub(super) up_at: Option<Instant>,
    /// When the run saw the clients recovered, after the fault had ended
    /// (`wait_recovered`).
    pub(super) recovered_at: Option<Instant>,
    /// The publisher's first `Migrated`.
    pub(super) migrated_at: Option<Instant>,
    pub(super) migrations: Migrations,
    pub(super) max_buffer: u64,
    pub(super) sub_disconnects: u64,
    pub(super) sub_migrations: Migrations,
}

impl Window {
    /// The publisher is on a working link again after the fault: it reconnected, or a
    /// planned switch ended.
    pub(super) fn recovered(&self) -> bool {
        self.reconnected_at.is_some() || self.migrated_at.is_some()
    }
}

/// `--two-clients`: one outage of the subscriber, as the sequence numbers `start..end`
/// (the end is `None` while no probe has reached the subscriber again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Gap {
    pub(super) start: u64,
    pub(super) end: Option<u64>,
    /// Only probes from this id on may end it (those sent after its last disconnect).
    pub(super) first_probe: u64,
}

/// `--two-clients`: probes sent by the publisher and received by the subscriber.
#[derive(Debug, Default)]
pub(super) struct Probes {
    /// Per probe id: the first sequence number published after it (`None` while being
    /// sent, or if refused).
    pub(super) after: Vec<Option<u64>>,
    /// Ids received.
    pub(super) seen: Vec<u64>,
}

/// `--plot`: the publish and delivery counts at one instant.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tick {
    pub(super) at: Instant,
    /// Publishes accepted so far.
    pub(super) published: u64,
    /// Deliveries so far (duplicates included).
    pub(super) delivered: u64,
}

/// A connection event of a client, for the plot's markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MarkKind {
    Disconnected,
    Reconnected,
    Migrating,
    Migrated,
}

impl MarkKind {
    /// The marker's kind for a client event (`None` for the events the plot leaves out).
    pub(super) fn of(kind: &tether::EventKind) -> Option<Self> {
        use tether::EventKind as K;
        match kind {
            K::Disconnected { .. } => Some(Self::Disconnected),
            K::Reconnected { .. } => Some(Self::Reconnected),
            K::Migrating { .. } => Some(Self::Migrating),
            K::Migrated { .. } => Some(Self::Migrated),
            _ => None,
        }
    }
}

/// One client event as it happened.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mark {
    pub(super) at: Instant,
    pub(super) kind: MarkKind,
    /// `--two-clients`: the subscriber's client (else the publisher's, or the only one).
    pub(super) subscriber: bool,
}

/// Shared by the tasks, the run and the report.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// Index of the current window.
    pub(super) window: AtomicUsize,
    pub(super) windows: Mutex<Vec<Window>>,
    pub(super) next_seq: AtomicU64,
    pub(super) published_ok: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) delivered_msgs: AtomicU64,
    /// Highest sequence number delivered, plus one.
    pub(super) delivered_upto: AtomicU64,
    /// `--two-clients`: the subscriber's outages.
    pub(super) gaps: Mutex<Vec<Gap>>,
    pub(super) probes: Mutex<Probes>,
    /// Per sequence number: accepted by publish.
    pub(super) accepted: Mutex<Vec<bool>>,
    /// Per sequence number: times delivered.
    pub(super) delivered: Mutex<Vec<u32>>,
    pub(super) foreign: AtomicU64,
    pub(super) lagged: AtomicU64,
    pub(super) first_error: Mutex<Option<String>>,
    pub(super) stop: AtomicBool,
    /// `--plot`: the counts every [`super::TIMELINE_EVERY`].
    pub(super) timeline: Mutex<Vec<Tick>>,
    /// The clients' connection events.
    pub(super) marks: Mutex<Vec<Mark>>,
}

/// Locks `m`, poisoned or not (a panicked task leaves counts that are still worth reporting).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Notes a client event the plot marks (others are ignored).
    pub(super) fn mark(&self, kind: &tether::EventKind, subscriber: bool) {
        if let Some(kind) = MarkKind::of(kind) {
            lock(&self.marks).push(Mark {
                at: Instant::now(),
                kind,
                subscriber,
            });
        }
    }

    /// `--plot`: samples the publish and delivery counts.
    pub(super) fn tick(&self) {
        let tick = Tick {
            at: Instant::now(),
            published: self.published_ok.load(Ordering::Relaxed),
            delivered: self.delivered_msgs.load(Ordering::Relaxed),
        };
        lock(&self.timeline).push(tick);
    }

    /// Runs `f` on the current window.
    pub(super) fn with_window(&self, f: impl FnOnce(&mut Window)) {
        let i = self.window.load(Ordering::SeqCst);
        let mut w = lock(&self.windows);
        if let Some(w) = w.get_mut(i) {
            f(w);
        }
    }

    /// The subscriber lost its link: opens an outage at the first message it has not
    /// received, or restarts the probing of the one still open. (A planned switch is no
    /// outage: the old link delivers until the new one does.)
    pub(super) fn subscriber_down(&self) {
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
    pub(super) fn subscriber_outage_open(&self) -> bool {
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
