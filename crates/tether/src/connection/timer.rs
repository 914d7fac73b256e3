//! The driver's own deadlines, kept as quinn-proto keeps its timers: one enum, one table.
//! The sans-IO core's deadlines are behind `Connection::poll_timeout`.

use std::time::Instant;

/// The driver's deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DriverTimer {
    /// Lame duck mode: move off the current server (its jitter has passed).
    LdmSwitch,
    /// Read the credentials again ahead of the JWT's expiry (looked at between switches).
    JwtRefresh,
    /// The next target of a pending planned switch is due.
    SwitchDue,
    /// close(): stop waiting for its flush.
    CloseFlush,
    /// The bound on the retiring link's overlap (ldm_overlap).
    Retire,
    /// The retiring link's last PONG is overdue: close it anyway.
    RetireGiveUp,
    /// The next probe on the retiring link.
    Probe,
    /// The next cut marker on the new link.
    Marker,
}

impl DriverTimer {
    const COUNT: usize = 8;

    /// The timers of one link, stopped when a link starts.
    pub(crate) const LINK: [Self; 6] = [
        Self::SwitchDue,
        Self::CloseFlush,
        Self::Retire,
        Self::RetireGiveUp,
        Self::Probe,
        Self::Marker,
    ];
}

/// One deadline per [`DriverTimer`], as quinn-proto keeps its timers.
#[derive(Debug, Default)]
pub(crate) struct TimerTable {
    data: [Option<Instant>; DriverTimer::COUNT],
}

impl TimerTable {
    pub(crate) fn set(&mut self, timer: DriverTimer, at: Instant) {
        self.data[timer as usize] = Some(at);
    }

    pub(crate) fn set_or_stop(&mut self, timer: DriverTimer, at: Option<Instant>) {
        self.data[timer as usize] = at;
    }

    pub(crate) fn stop(&mut self, timer: DriverTimer) {
        self.data[timer as usize] = None;
    }

    pub(crate) fn get(&self, timer: DriverTimer) -> Option<Instant> {
        self.data[timer as usize]
    }

    pub(crate) fn is_expired(&self, timer: DriverTimer, now: Instant) -> bool {
        self.get(timer).is_some_and(|at| now >= at)
    }

    /// The earliest deadline, leaving out `except`.
    pub(crate) fn next_timeout(&self, except: Option<DriverTimer>) -> Option<Instant> {
        self.data
            .iter()
            .enumerate()
            .filter(|(i, _)| except.is_none_or(|t| t as usize != *i))
            .filter_map(|(_, at)| *at)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_timer_table_reports_the_earliest_deadline_and_what_expired() {
        let t0 = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.next_timeout(None), None);
        t.set(DriverTimer::Retire, t0 + Duration::from_secs(2));
        t.set(DriverTimer::Probe, t0 + Duration::from_millis(1));
        assert_eq!(t.next_timeout(None), Some(t0 + Duration::from_millis(1)));
        assert!(t.is_expired(DriverTimer::Probe, t0 + Duration::from_millis(1)));
        assert!(!t.is_expired(DriverTimer::Retire, t0 + Duration::from_millis(1)));
        assert!(!t.is_expired(DriverTimer::Marker, t0 + Duration::from_secs(9)));
        assert_eq!(
            t.next_timeout(Some(DriverTimer::Probe)),
            Some(t0 + Duration::from_secs(2))
        );
        t.stop(DriverTimer::Probe);
        assert_eq!(t.next_timeout(None), Some(t0 + Duration::from_secs(2)));
        t.set_or_stop(DriverTimer::Retire, None);
        assert_eq!(t.next_timeout(None), None);
    }
}
