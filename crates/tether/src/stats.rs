//! Statistics: a snapshot of the client's counters.

use std::time::Duration;

pub use tether_proto::conn::ReplayStats;

/// Counters of one client since it was created (DESIGN semantics 15).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Statistics {
    /// Messages delivered by the server.
    pub in_msgs: u64,
    /// Their header and payload bytes.
    pub in_bytes: u64,
    /// Messages written to the socket.
    pub out_msgs: u64,
    /// Their header and payload bytes.
    pub out_bytes: u64,
    /// Handshakes completed.
    pub connects: u64,
    /// Reconnects: one per `Reconnected` event (a link caught up after an outage).
    pub reconnects: u64,
    /// Time spent without a caught-up link: every outage, until the new link's replay
    /// is written, the current one included (and, under the Retry policy, the time
    /// before the first connect).
    pub disconnected_time: Duration,
    /// Round-trip time of the last flush on an idle link.
    pub rtt: Option<Duration>,
    /// Messages in the outbound buffer.
    pub buffered_msgs: u64,
    /// Their encoded bytes.
    pub buffered_bytes: u64,
    /// Highest byte fill of the outbound buffer seen.
    pub buffer_high_water_bytes: u64,
    /// `Permissions Violation for Publish` errors that matched no request.
    pub publish_denied: u64,
    /// Frames removed from the buffer and never sent.
    pub frames_removed: u64,
    /// Messages dropped by slow subscriptions.
    pub slow_consumer_dropped: u64,
    /// Publishes refused because the buffer was full.
    pub refused_msgs: u64,
    /// Their encoded bytes.
    pub refused_bytes: u64,
    /// Messages reported as unconfirmed (possibly lost): by `Disconnected` and, for a
    /// link retired by a planned switch, by `Migrated`.
    pub unconfirmed_reported_msgs: u64,
    /// Their encoded bytes.
    pub unconfirmed_reported_bytes: u64,
    /// Planned switches ended (`Migrated` events: the old link was retired or died).
    pub migrations: u64,
    /// Requests waiting for their reply.
    pub pending_requests: usize,
    /// Events dropped because an event queue was full.
    pub events_lagged: u64,
    /// Messages delivered without their header block because it could not be parsed.
    pub malformed_headers: u64,
    /// Live subscriptions.
    pub subscriptions: usize,
    /// The last subscription replay (after a reconnect or a planned switch, and on the
    /// first link) once all its chunks are written: subscriptions replayed, their bytes,
    /// and the time from the link's adoption to its last chunk written. None before the
    /// first one completes.
    pub last_replay: Option<ReplayStats>,
}
