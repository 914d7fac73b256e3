//! Deadlines: arithmetic that never panics, and a table of named timers.
//!
//! Options and caller-supplied timeouts can be huge (`Duration::MAX` for "never"); an
//! `Instant + Duration` that overflows panics. Every deadline in tether is computed with
//! [`saturating_add`] instead, which caps it at [`FAR_FUTURE`] from `t`.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

/// How far a capped deadline lies: about 30 years, which no timer ever reaches.
pub const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `t + d`, or `t + FAR_FUTURE` when that would overflow (or `t` itself if even that does).
pub fn saturating_add(t: Instant, d: Duration) -> Instant {
    t.checked_add(d.min(FAR_FUTURE))
        .or_else(|| t.checked_add(FAR_FUTURE))
        .unwrap_or(t)
}

/// One deadline per timer, as quinn-proto keeps them: `K` names the timers (an enum whose
/// `usize` value is below `N`); handlers set and stop them, the earliest is the next
/// wake-up, and a wake-up asks which expired. Used by the session core and by tether's
/// driver, each with its own timer enum.
#[derive(Debug, Clone, Copy)]
pub struct TimerTable<K, const N: usize> {
    at: [Option<Instant>; N],
    kind: PhantomData<K>,
}

impl<K, const N: usize> Default for TimerTable<K, N> {
    fn default() -> Self {
        Self {
            at: [None; N],
            kind: PhantomData,
        }
    }
}

impl<K: Copy + Into<usize>, const N: usize> TimerTable<K, N> {
    /// Set `timer` to fire at `at`.
    pub fn set(&mut self, timer: K, at: Instant) {
        self.set_or_stop(timer, Some(at));
    }

    /// Set `timer` to `at`, or stop it with `None`.
    pub fn set_or_stop(&mut self, timer: K, at: Option<Instant>) {
        if let Some(slot) = self.at.get_mut(timer.into()) {
            *slot = at;
        }
    }

    /// Stop `timer`.
    pub fn stop(&mut self, timer: K) {
        self.set_or_stop(timer, None);
    }

    /// Stop every timer.
    pub fn stop_all(&mut self) {
        self.at = [None; N];
    }

    /// When `timer` fires, if it is set.
    pub fn get(&self, timer: K) -> Option<Instant> {
        self.at.get(timer.into()).copied().flatten()
    }

    /// True when `timer` is set and its deadline is not after `now`.
    pub fn is_expired(&self, timer: K, now: Instant) -> bool {
        self.get(timer).is_some_and(|at| at <= now)
    }

    /// The earliest deadline set.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }

    /// The earliest deadline set, leaving `timer` out.
    pub fn next_timeout_except(&self, timer: K) -> Option<Instant> {
        let skip = timer.into();
        self.at
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .filter_map(|(_, at)| *at)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy)]
    enum T {
        A,
        B,
        C,
    }

    impl From<T> for usize {
        fn from(t: T) -> usize {
            t as usize
        }
    }

    #[test]
    fn the_timer_table_gives_the_earliest_deadline_and_what_expired() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let mut t = TimerTable::<T, 3>::default();
        assert_eq!(t.next_timeout(), None);
        t.set(T::A, now + s(2));
        t.set(T::B, now + s(1));
        assert_eq!(t.next_timeout(), Some(now + s(1)));
        assert_eq!(t.next_timeout_except(T::B), Some(now + s(2)));
        assert!(!t.is_expired(T::B, now));
        assert!(t.is_expired(T::B, now + s(1)));
        assert!(!t.is_expired(T::C, now + s(9)));
        t.stop(T::B);
        assert_eq!(t.next_timeout(), Some(now + s(2)));
        t.set_or_stop(T::A, None);
        assert_eq!(t.get(T::A), None);
        t.set(T::C, now);
        t.stop_all();
        assert_eq!(t.next_timeout(), None);
    }

    #[test]
    fn huge_durations_saturate() {
        let now = Instant::now();
        assert_eq!(saturating_add(now, Duration::MAX), now + FAR_FUTURE);
        assert_eq!(
            saturating_add(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}
