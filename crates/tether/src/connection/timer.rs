//! The driver's own deadlines, kept as quinn-proto keeps its timers: one enum, one table.
//! The sans-IO core's deadlines are behind `Connection::poll_timeout`.

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

impl From<DriverTimer> for usize {
    fn from(t: DriverTimer) -> usize {
        t as usize
    }
}

/// One deadline per [`DriverTimer`].
pub(crate) type TimerTable = tether_proto::time::TimerTable<DriverTimer, { DriverTimer::COUNT }>;
