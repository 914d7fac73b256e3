//! The link's timers, one table (as quinn-proto keeps them): handlers set and stop them,
//! [`Connection::poll_timeout`](super::Connection::poll_timeout) gives the earliest, and
//! [`Connection::handle_timeout`](super::Connection::handle_timeout) asks which expired.

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

impl From<Timer> for usize {
    fn from(t: Timer) -> usize {
        t as usize
    }
}

/// A deadline per [`Timer`], each set or not.
pub(super) type TimerTable = crate::time::TimerTable<Timer, { Timer::ALL.len() }>;
