//! The report: what a run counted, per outage and in total, and the invariant it is
//! checked against.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tether::EventKind;

use super::state::{lock, Shared, Window};
use super::{ms, since_ms, ChaosArgs, Fault};

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
    pub(super) fn count(&mut self, kind: &EventKind) {
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

    pub(super) fn any(&self) -> bool {
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

/// What was run: the arguments the report depends on.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Setup {
    pub fault: Fault,
    pub cluster: bool,
    pub two_clients: bool,
    pub resend_unconfirmed: bool,
    pub rate: u32,
    /// Each outage's length (for `blackhole`, at least 3 s).
    pub outage_ms: u64,
    pub outages: u32,
}

impl Setup {
    fn of(args: &ChaosArgs, outage: Duration) -> Self {
        Self {
            fault: args.fault,
            cluster: args.cluster,
            two_clients: args.two_clients,
            resend_unconfirmed: args.resend_unconfirmed,
            rate: args.rate,
            outage_ms: outage.as_millis() as u64,
            outages: args.outages,
        }
    }
}

/// The result of a run.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// What was run (flattened: its fields are the report's first keys).
    #[serde(flatten)]
    pub setup: Setup,
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

/// What the invariant is checked on: one outage's messages, or the whole run's.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Tally {
    pub(super) lost: u64,
    /// Lost during the subscriber's own outages (two clients).
    pub(super) undetectable: u64,
    pub(super) unconfirmed: u64,
    pub(super) client_dropped: u64,
    pub(super) removed: u64,
    /// `Disconnected` events of both clients.
    pub(super) disconnects: u64,
}

/// The rule a run is checked against.
#[derive(Debug, Clone, Copy)]
pub(super) struct Invariant {
    /// `--fault ldm`: a planned switch loses nothing and never disconnects.
    pub(super) ldm: bool,
    pub(super) two_clients: bool,
    pub(super) resend_unconfirmed: bool,
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
    pub(super) fn holds(self, t: &Tally) -> bool {
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
    pub(super) fn rule(self) -> &'static str {
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

/// The report of a run, from what the tasks counted and the clients' statistics.
pub(super) fn build_report(
    args: &ChaosArgs,
    outage: Duration,
    shared: &Shared,
    pub_stats: tether::Statistics,
    sub_stats: tether::Statistics,
    not_reconnected: u64,
) -> Report {
    let client_dropped = sub_stats.slow_consumer_dropped;
    let invariant = Invariant::of(args);
    let (mut per, delivered_refused) = outage_reports(shared, invariant, client_dropped);
    let total = totals(&per);
    // Window 0 (before the first fault) is folded into the totals only.
    per.remove(0);
    let invariant_ok = verdict(invariant, &total, &per, client_dropped, not_reconnected);
    Report {
        setup: Setup::of(args, outage),
        published: total.published,
        delivered: total.delivered,
        lost: total.lost,
        unconfirmed: total.unconfirmed,
        client_dropped,
        removed: total.removed,
        duplicates: total.duplicates,
        errors: total.refused,
        downtime_ms: per.iter().map(|o| o.downtime_ms).collect(),
        reconnect_ms: per.iter().map(|o| o.reconnect_ms).collect(),
        max_buffer_bytes: total
            .max_buffer_bytes
            .max(pub_stats.buffer_high_water_bytes),
        disconnects: total.disconnects,
        migrations: total.migrations,
        subscriber_disconnects: total.subscriber_disconnects,
        subscriber_migrations: total.subscriber_migrations,
        subscriber_outage_msgs: total.subscriber_outage_msgs,
        lost_undetectable: total.lost_undetectable,
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

/// One report per window (window 0, before the first fault, included), each checked
/// against the invariant; and how many refused publishes were delivered all the same.
fn outage_reports(
    shared: &Shared,
    invariant: Invariant,
    client_dropped: u64,
) -> (Vec<OutageReport>, u64) {
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
    let mut delivered_refused = 0;
    let per = (windows.iter().enumerate())
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
    (per, delivered_refused)
}

/// The counts of every window added up, and the highest buffer peak; the times are left
/// at their defaults (the report lists them per outage).
fn totals(windows: &[OutageReport]) -> OutageReport {
    let mut t = OutageReport::default();
    for o in windows {
        t.published += o.published;
        t.delivered += o.delivered;
        t.lost += o.lost;
        t.duplicates += o.duplicates;
        t.refused += o.refused;
        t.unconfirmed += o.unconfirmed;
        t.removed += o.removed;
        t.disconnects += o.disconnects;
        t.migrations.add(&o.migrations);
        t.subscriber_disconnects += o.subscriber_disconnects;
        t.subscriber_migrations.add(&o.subscriber_migrations);
        t.subscriber_outage_msgs += o.subscriber_outage_msgs;
        t.lost_undetectable += o.lost_undetectable;
        t.max_buffer_bytes = t.max_buffer_bytes.max(o.max_buffer_bytes);
    }
    t
}

/// Whether the run passes: the invariant holds in total and for every outage, and every
/// outage was recovered from in time.
fn verdict(
    invariant: Invariant,
    total: &OutageReport,
    per_outage: &[OutageReport],
    client_dropped: u64,
    not_reconnected: u64,
) -> bool {
    invariant.holds(&total.tally(client_dropped))
        && per_outage.iter().all(|o| o.invariant_ok)
        && not_reconnected == 0
}
