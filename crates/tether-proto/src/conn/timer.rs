//! The link's timers, one table (as quinn-proto keeps them): handlers set and stop them,
//! [`Connection::poll_timeout`](super::Connection::poll_timeout) gives the earliest, and
//! [`Connection::handle_timeout`](super::Connection::handle_timeout) asks which expired.

use std::time::Instant;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// The read grace after a closing -ERR ([`super::CLOSING_READ_GRACE`]) ends.
    Closing,
    /// A chunk is in flight and the socket accepted no byte for write_stall_timeout.
    WriteStall,
    /// The oldest PING written got no PONG within pong_timeout.
    Pong,
    /// No inbound bytes (and no keepalive PING) for ping_interval.
    Keepalive,
    /// Publish frames written and not covered by a PING for confirm_interval.
    Confirm,
}

impl Timer {
    const ALL: [Self; 5] = [
        Self::Closing,
        Self::WriteStall,
        Self::Pong,
        Self::Keepalive,
        Self::Confirm,
    ];
}

/// A deadline per [`Timer`], each set or not.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TimerTable {
    at: [Option<Instant>; Timer::ALL.len()],
}

impl TimerTable {
    pub(super) fn set(&mut self, timer: Timer, at: Instant) {
        self.at[timer as usize] = Some(at);
    }

    pub(super) fn stop(&mut self, timer: Timer) {
        self.at[timer as usize] = None;
    }

    pub(super) fn stop_all(&mut self) {
        self.at = [None; Timer::ALL.len()];
    }

    pub(super) fn get(&self, timer: Timer) -> Option<Instant> {
        self.at[timer as usize]
    }

    /// The earliest deadline set.
    pub(super) fn next_timeout(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }

    /// True when `timer` is set and its deadline is not after `now`.
    pub(super) fn is_expired(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|at| at <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_table_gives_the_earliest_deadline_and_what_expired() {
        let now = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.next_timeout(), None);
        t.set(Timer::Keepalive, now + Duration::from_secs(2));
        t.set(Timer::Pong, now + Duration::from_secs(1));
        assert_eq!(t.next_timeout(), Some(now + Duration::from_secs(1)));
        assert!(!t.is_expired(Timer::Pong, now));
        assert!(t.is_expired(Timer::Pong, now + Duration::from_secs(1)));
        assert!(!t.is_expired(Timer::Confirm, now + Duration::from_secs(9)));
        t.stop(Timer::Pong);
        assert_eq!(t.next_timeout(), Some(now + Duration::from_secs(2)));
        t.stop_all();
        assert_eq!(t.next_timeout(), None);
        assert_eq!(Timer::ALL.len(), 5);
    }
}
