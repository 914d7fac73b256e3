//! Reporting the outbound buffer's level (DESIGN events): `BufferHighWater` when a
//! publish fills it past 50, 75 or 90 % (each level once, re-armed when it drains below
//! 25 %), the highest byte fill for the statistics, and `BufferOverflow` for refused
//! publishes, at most one per [`OVERFLOW_REPORT_INTERVAL`] (the counts in between add
//! up into the next one, and into `Closed`, so none is lost).
//!
//! [`BufferWatch`] decides, with time passed in; the functions below it read the core's
//! counts and emit what it decided.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tether_proto::outbound::{BufferLimits, Counts};

use crate::connection::{Inner, Shared};
use crate::events::EventKind;

/// At most one BufferOverflow event per this interval.
pub(crate) const OVERFLOW_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The levels `BufferHighWater` reports, highest first.
const LEVELS: [u8; 3] = [90, 75, 50];

/// Below this fill the levels are reported again.
const REARM_BELOW: u8 = 25;

/// What was reported of the buffer's level, and refusals not reported yet.
#[derive(Debug, Default)]
pub(crate) struct BufferWatch {
    /// The highest level reported since the buffer last drained (0, 50, 75 or 90).
    level: u8,
    /// The highest byte fill seen.
    pub(crate) high_water_bytes: u64,
    /// Publishes refused since the last `BufferOverflow`.
    refused: Counts,
    /// When the last `BufferOverflow` went out.
    overflow_reported_at: Option<Instant>,
}

/// Which way the buffer's fill moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// A publish was buffered.
    Filled,
    /// The driver wrote some out (the core's `BufferSpace`).
    Drained,
}

impl BufferWatch {
    /// The buffer holds `c` of `limits` after `change`: the `BufferHighWater` event a
    /// publish's rising edge calls for, if any. Draining below 25 % re-arms the levels.
    pub(crate) fn on_level(
        &mut self,
        change: Change,
        c: Counts,
        limits: BufferLimits,
    ) -> Option<EventKind> {
        // Comparisons instead of a percentage's divisions: this runs on every publish.
        match change {
            Change::Drained => {
                if !reached(c, limits, REARM_BELOW) {
                    self.level = 0;
                }
                None
            }
            Change::Filled => {
                self.high_water_bytes = self.high_water_bytes.max(c.bytes);
                let t = LEVELS.into_iter().find(|t| reached(c, limits, *t))?;
                (self.level < t).then(|| {
                    self.level = t;
                    EventKind::BufferHighWater {
                        percent: t,
                        bytes: c.bytes,
                        msgs: c.msgs,
                    }
                })
            }
        }
    }

    /// A publish of `len` encoded bytes was refused (the buffer was full).
    pub(crate) fn refused(&mut self, len: u64) {
        self.refused.msgs += 1;
        self.refused.bytes += len;
    }

    /// The `BufferOverflow` event due at `now`: the refusals since the last one, if the
    /// last went out at least [`OVERFLOW_REPORT_INTERVAL`] ago (or at once with `force`).
    pub(crate) fn overflow(&mut self, now: Instant, force: bool) -> Option<EventKind> {
        let due = force
            || self
                .overflow_reported_at
                .is_none_or(|t| now.saturating_duration_since(t) >= OVERFLOW_REPORT_INTERVAL);
        if !due {
            return None;
        }
        let c = std::mem::take(&mut self.refused);
        if c.msgs == 0 {
            return None;
        }
        self.overflow_reported_at = Some(now);
        Some(EventKind::BufferOverflow {
            refused_msgs: c.msgs,
            refused_bytes: c.bytes,
        })
    }
}

/// The buffer's fill in percent of its limits: the fuller of bytes and messages (the
/// definition [`reached`] answers for without dividing).
#[cfg(test)]
fn percent(c: Counts, limits: BufferLimits) -> u8 {
    let b = c.bytes.saturating_mul(100) / (limits.max_bytes as u64).max(1);
    let m = c.msgs.saturating_mul(100) / (limits.max_msgs as u64).max(1);
    b.max(m).min(100) as u8
}

/// Whether `percent(c, limits) >= t`, without dividing (t at most 100).
fn reached(c: Counts, limits: BufferLimits, t: u8) -> bool {
    let t = u64::from(t);
    c.bytes.saturating_mul(100) >= t * (limits.max_bytes as u64).max(1)
        || c.msgs.saturating_mul(100) >= t * (limits.max_msgs as u64).max(1)
}

/// The buffer's level moved: emit a high-water event if one is due.
pub(crate) fn on_level(shared: &Shared, inner: &mut Inner, change: Change) {
    let c = inner.conn.buffered();
    let limits = inner.conn.config().buffer;
    if let Some(ev) = inner.buffer_watch.on_level(change, c, limits) {
        shared.emit(ev);
    }
}

/// A publish of `len` encoded bytes was refused: count it, and report it (the first
/// refusal at once; after that at most one event per interval carries the counts, so a
/// storm of refusals is not a storm of events).
pub(crate) fn note_refused(shared: &Shared, inner: &mut Inner, len: u64) {
    let c = &shared.counters;
    c.refused_msgs.fetch_add(1, Ordering::Relaxed);
    c.refused_bytes.fetch_add(len, Ordering::Relaxed);
    metrics::counter!("tether_publish_refused_total").increment(1);
    inner.buffer_watch.refused(len);
    report_overflow(shared, inner, false);
}

/// Emit `BufferOverflow` for the refusals not reported yet: when due, or now with `force`
/// (the client closes).
pub(crate) fn report_overflow(shared: &Shared, inner: &mut Inner, force: bool) {
    if let Some(ev) = inner.buffer_watch.overflow(Instant::now(), force) {
        shared.emit(ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BufferLimits = BufferLimits {
        max_bytes: 1000,
        max_msgs: 100,
    };

    fn fill(bytes: u64, msgs: u64) -> Counts {
        Counts { msgs, bytes }
    }

    fn level(ev: Option<EventKind>) -> Option<u8> {
        match ev {
            Some(EventKind::BufferHighWater { percent, .. }) => Some(percent),
            None => None,
            Some(other) => panic!("not a high-water event: {other:?}"),
        }
    }

    #[test]
    fn each_level_is_reported_once_on_the_way_up_until_the_buffer_drains() {
        use Change::{Drained, Filled};
        let mut w = BufferWatch::default();
        // (change, bytes, msgs, the level reported)
        let table = [
            (Filled, 100, 1, None),
            (Filled, 500, 1, Some(50)),
            (Filled, 600, 1, None),
            // Messages count as well as bytes.
            (Filled, 600, 80, Some(75)),
            (Filled, 950, 1, Some(90)),
            (Filled, 1000, 1, None),
            // Draining to 30 % does not re-arm; a rise back to 50 % stays quiet.
            (Drained, 300, 1, None),
            (Filled, 500, 1, None),
            // Below 25 % re-arms every level.
            (Drained, 240, 1, None),
            (Filled, 760, 1, Some(75)),
            (Filled, 800, 1, None),
        ];
        for (k, (change, bytes, msgs, expect)) in table.into_iter().enumerate() {
            let got = level(w.on_level(change, fill(bytes, msgs), LIMITS));
            assert_eq!(got, expect, "row {k}");
        }
        assert_eq!(w.high_water_bytes, 1000);
    }

    #[test]
    fn overflow_reports_at_once_then_at_most_once_per_interval_losing_nothing() {
        let t0 = Instant::now();
        let mut w = BufferWatch::default();
        assert_eq!(w.overflow(t0, false), None, "nothing refused");
        w.refused(10);
        let first = w.overflow(t0, false);
        assert!(
            matches!(
                first,
                Some(EventKind::BufferOverflow {
                    refused_msgs: 1,
                    refused_bytes: 10
                })
            ),
            "{first:?}"
        );
        w.refused(20);
        w.refused(30);
        assert_eq!(w.overflow(t0 + Duration::from_millis(500), false), None);
        let next = w.overflow(t0 + OVERFLOW_REPORT_INTERVAL, false);
        assert!(
            matches!(
                next,
                Some(EventKind::BufferOverflow {
                    refused_msgs: 2,
                    refused_bytes: 50
                })
            ),
            "{next:?}"
        );
        // Closing reports what is left at once.
        w.refused(5);
        let t1 = t0 + OVERFLOW_REPORT_INTERVAL + Duration::from_millis(1);
        assert!(w.overflow(t1, true).is_some());
    }

    #[test]
    fn reached_agrees_with_percent() {
        for bytes in (0..=1200).step_by(7) {
            for msgs in 0..=120 {
                let c = fill(bytes, msgs);
                for t in [REARM_BELOW, 50, 75, 90, 100] {
                    assert_eq!(reached(c, LIMITS, t), percent(c, LIMITS) >= t, "{c:?} {t}");
                }
            }
        }
    }

    #[test]
    fn percent_is_the_fuller_of_bytes_and_messages() {
        assert_eq!(percent(fill(500, 10), LIMITS), 50);
        assert_eq!(percent(fill(0, 99), LIMITS), 99);
        assert_eq!(percent(fill(5000, 0), LIMITS), 100);
    }
}
