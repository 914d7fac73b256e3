//! Connection states and events, and the lossless bounded event queue.
//!
//! Queueing rules (DESIGN "Connection states and events"):
//! - with no stream taken and no callback set, nothing is queued (events are still logged);
//! - the queue is bounded (`event_queue`);
//! - events that carry a loss are never dropped: when the queue is full their counts merge
//!   into the queued event of the same kind (or, if none is queued, they go in anyway);
//! - when full, a new state change replaces the newest queued state change and bumps its
//!   `collapsed` count;
//! - other events are dropped when full, and one [`EventKind::EventsLagged`] says how many.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tether_proto::conn::{DisconnectReason, RemovedReason};
use tether_proto::server_err::ServerErr;

use crate::error::{AttemptCause, AttemptError};

/// The state of a client (DESIGN "Connection states and events").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Lazy policy, not used yet.
    Idle,
    /// The first connect is in progress.
    Connecting,
    /// A link is up.
    Connected,
    /// The link dropped; trying servers.
    Reconnecting,
    /// Draining: subscriptions are being unsubscribed and emptied.
    DrainingSubs,
    /// Draining: publishes are being flushed.
    DrainingPubs,
    /// Closed for good.
    Closed,
}

impl std::fmt::Display for State {
    /// Lower case, as in logs: `connected`, `draining subscriptions`, ...
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Idle => "idle",
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Reconnecting => "reconnecting",
            Self::DrainingSubs => "draining subscriptions",
            Self::DrainingPubs => "draining publishes",
            Self::Closed => "closed",
        })
    }
}

/// Why a client closed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClosedReason {
    /// `close()` or `drain()` was called, or the last handle dropped.
    Requested,
    /// The link dropped and reconnecting is off.
    Disconnected(DisconnectReason),
    /// Every server left the pool (max_reconnects reached or auth failures).
    PoolExhausted {
        /// The last attempt that failed before it, when there was one: its
        /// [`AttemptCause::is_auth`](crate::AttemptCause::is_auth) says whether the
        /// credentials were refused.
        last_attempt: Option<Box<AttemptError>>,
    },
    /// `drain()` reached drain_timeout before it completed, and closed the client.
    DrainTimeout,
    /// The connection's driver task failed (a panic, for example in a user callback such
    /// as `reconnect_delay`); every waiter was failed at once.
    DriverFailed(String),
}

impl std::fmt::Display for ClosedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Requested => f.write_str("closed on request"),
            Self::Disconnected(r) => write!(f, "disconnected and reconnecting is off: {r}"),
            Self::PoolExhausted { .. } => f.write_str(
                "no server left to try: every server failed max_reconnects times or refused the \
                 credentials",
            ),
            Self::DrainTimeout => f.write_str("drain timed out"),
            Self::DriverFailed(e) => write!(f, "the connection driver failed: {e}"),
        }
    }
}

/// Why a planned (make-before-break) switch moves the client ([`EventKind::Migrating`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MigrateReason {
    /// The server entered lame duck mode.
    LameDuck,
    /// `Client::force_reconnect()`.
    Requested,
    /// `Client::set_server_pool()` dropped the connected server.
    ServerPool,
    /// The user JWT nears its expiry and fresher credentials were found.
    Credentials,
}

impl std::fmt::Display for MigrateReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::LameDuck => "lame duck mode",
            Self::Requested => "force_reconnect",
            Self::ServerPool => "the server left the pool",
            Self::Credentials => "credentials refresh",
        })
    }
}

/// One thing a client reports, with the wall-clock time at which it happened. Every event
/// is also logged with `tracing`; its [`Display`](std::fmt::Display) is one line for logs.
///
/// The reasons are types, so code can tell a stale link from a server that closed it, or
/// refused credentials from an unreachable server, without reading the text:
///
/// ```no_run
/// # async fn doc(client: tether::Client) {
/// use futures_util::StreamExt;
/// use tether::{AuthErrorClass, DisconnectReason, EventKind, ServerErr};
///
/// let mut events = client.events();
/// while let Some(e) = events.next().await {
///     match &e.kind {
///         // The client's own liveness checks found the link dead (no PONG, a write
///         // stall): the network, not the server.
///         EventKind::Disconnected { reason, .. } if reason.is_stale() => {
///             eprintln!("stale link: {e}");
///         }
///         EventKind::Disconnected {
///             reason: DisconnectReason::ServerError(ServerErr::StaleConnection),
///             ..
///         } => eprintln!("the server found our link stale: {e}"),
///         // The server refused the credentials: retrying will not help until they change.
///         EventKind::ReconnectFailed { error, .. } if error.is_auth() => {
///             eprintln!("credentials refused: {e}");
///         }
///         EventKind::ReconnectFailed { error, .. }
///             if error.auth_class() == Some(AuthErrorClass::Transient) =>
///         {
///             eprintln!("server busy (connection limit, throttling): {e}");
///         }
///         EventKind::Disconnected { unconfirmed_msgs, .. } => {
///             eprintln!("{e} ({unconfirmed_msgs} possibly lost)");
///         }
///         _ => eprintln!("{e}"),
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When it happened (wall clock).
    pub time: SystemTime,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// An event of `kind` happening now.
    pub fn now(kind: EventKind) -> Self {
        Self {
            time: SystemTime::now(),
            kind,
        }
    }
}

/// What a client reports (see [`Event`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The client's state when this stream (or the callback) began: always the first item
    /// of a stream from [`Client::events`](crate::Client::events) and the first event the
    /// [`event_callback`](crate::ConnectOptions::event_callback) sees, so a late
    /// subscriber still learns where the client stands. Events after it are the changes
    /// from then on (one of them may repeat what it already said). It is a state change for
    /// the queue: if the queue fills up before it is read, a newer state change takes its
    /// place and counts it in its `collapsed`. On a closed client the stream yields
    /// `CurrentState { state: State::Closed, .. }` and then ends.
    CurrentState {
        /// What [`Client::status`](crate::Client::status) returned at that moment.
        state: State,
        /// The server of the live link, if there is one (none while connecting,
        /// reconnecting or closed).
        server: Option<String>,
    },
    /// The first handshake completed.
    Connected {
        /// The server.
        server: String,
        /// State changes merged into this one while the queue was full.
        collapsed: u32,
    },
    /// The link dropped.
    Disconnected {
        /// The server.
        server: String,
        /// Why: [`DisconnectReason::is_stale`] for a link found dead by the client's own
        /// checks, [`DisconnectReason::ServerError`] for an -ERR that closed it, ...
        reason: DisconnectReason,
        /// Messages written and not confirmed: possibly lost.
        unconfirmed_msgs: u64,
        /// Their encoded bytes.
        unconfirmed_bytes: u64,
    },
    /// The next reconnect attempt is scheduled.
    Reconnecting {
        /// Attempt number within this outage, from 1.
        attempt: u32,
        /// The server to be tried.
        server: String,
        /// Delay before the attempt.
        delay: Duration,
        /// State changes merged into this one while the queue was full.
        collapsed: u32,
    },
    /// A reconnect attempt failed.
    ReconnectFailed {
        /// The server.
        server: String,
        /// The address tried, if resolution got that far.
        address: Option<String>,
        /// Attempt number within this outage.
        attempt: u32,
        /// Why: see [`AttemptCause::is_auth`](crate::AttemptCause::is_auth).
        error: AttemptCause,
    },
    /// A handshake completed after an outage, and the link caught up: the subscription
    /// replay and the frames buffered during the outage are written (a subscription is
    /// live on the server from here on). A link lost before that has no `Reconnected`
    /// and does not end the outage: its `Disconnected` follows the previous one, and the
    /// next `Reconnected` covers the whole outage.
    Reconnected {
        /// The server.
        server: String,
        /// Attempts since the last link was lost.
        attempts: u32,
        /// How long the client was without a caught-up link: from the loss of the last
        /// one to this link's replay written.
        downtime: Duration,
        /// State changes merged into this one while the queue was full.
        collapsed: u32,
    },
    /// The server pool changed through INFO `connect_urls`.
    ServersChanged {
        /// Servers added.
        added: Vec<String>,
        /// Servers removed.
        removed: Vec<String>,
    },
    /// The server entered lame duck mode.
    LameDuck {
        /// The server.
        server: String,
    },
    /// A planned switch starts: a new link to `to` completed its handshake, its
    /// subscriptions are replayed on it, and publishing moves to it now. The old link keeps delivering until
    /// the cluster knows the new interest; `Migrated` follows when it is closed.
    Migrating {
        /// The old server.
        from: String,
        /// The new server.
        to: String,
        /// Why the client moves.
        reason: MigrateReason,
    },
    /// A planned switch ended: the old link was retired and closed.
    Migrated {
        /// The old server.
        from: String,
        /// The new server.
        to: String,
        /// The old link's unconfirmed messages.
        unconfirmed_msgs: u64,
        /// The old link's unconfirmed bytes.
        unconfirmed_bytes: u64,
    },
    /// The user JWT is within its refresh lead and the credentials read again are no
    /// fresher (or could not be read): the server will end the link at expiry, and the
    /// client then reconnects at once, reading the credentials again.
    CredentialsExpiring {
        /// The server.
        server: String,
        /// Time left before the JWT in use expires.
        expires_in: Duration,
        /// Why no fresher credentials were used.
        reason: String,
    },
    /// The server refuses the credentials and the user JWT they hold has expired (it
    /// answers a plain `Authorization Violation` at CONNECT). Such refusals are never auth
    /// strikes: the client keeps retrying at its backoff, reading the credentials (the
    /// creds file) again at every attempt, so a fresh file is picked up on the next one.
    /// Emitted at the first such refusal in a row.
    CredentialsExpired {
        /// The server.
        server: String,
        /// How long ago the JWT expired.
        expired_for: Duration,
    },
    /// A subscription started dropping messages.
    SlowConsumer {
        /// The subject.
        subject: String,
        /// The sid.
        sid: u64,
        /// Messages dropped so far in this episode.
        dropped: u64,
    },
    /// A subscription's queue fell below half its limit.
    SlowConsumerEnded {
        /// The subject.
        subject: String,
        /// The sid.
        sid: u64,
        /// Messages dropped in the episode.
        dropped: u64,
    },
    /// The server sent an -ERR that matched nothing more specific: one no request or
    /// subscription accounts for (a publish's permission violation, say), or any -ERR on
    /// the link a planned switch is retiring. An -ERR that closes the live link is a
    /// `Disconnected` with [`DisconnectReason::ServerError`] instead.
    ServerError {
        /// The -ERR; its Display is the server's text.
        error: ServerErr,
    },
    /// A client-side error not tied to an operation.
    ClientError {
        /// What went wrong.
        error: String,
    },
    /// Frames removed from the buffer, never to be sent.
    FramesRemoved {
        /// Why.
        reason: RemovedReason,
        /// Messages removed.
        msgs: u64,
        /// Their encoded bytes.
        bytes: u64,
    },
    /// The outbound buffer passed 50, 75 or 90 % of a bound.
    BufferHighWater {
        /// The threshold passed.
        percent: u8,
        /// Bytes buffered.
        bytes: u64,
        /// Messages buffered.
        msgs: u64,
    },
    /// Publishes refused because the buffer was full.
    BufferOverflow {
        /// Messages refused.
        refused_msgs: u64,
        /// Their bytes.
        refused_bytes: u64,
    },
    /// Events dropped because the queue was full.
    EventsLagged {
        /// How many.
        dropped: u64,
    },
    /// The client closed for good.
    Closed {
        /// Why.
        reason: ClosedReason,
        /// Messages never written.
        unsent_msgs: u64,
        /// Their bytes.
        unsent_bytes: u64,
        /// Messages written but not confirmed.
        unconfirmed_msgs: u64,
        /// Their bytes.
        unconfirmed_bytes: u64,
    },
}

impl std::fmt::Display for Event {
    /// `2026-11-30T21:34:21.123Z disconnected from nats://a:4222: ...` on one line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}",
            humantime::format_rfc3339_millis(self.time),
            self.kind
        )
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // By group, each group's text in its own function.
        match self {
            Self::CurrentState { .. }
            | Self::Connected { .. }
            | Self::Disconnected { .. }
            | Self::Reconnecting { .. }
            | Self::ReconnectFailed { .. }
            | Self::Reconnected { .. } => self.fmt_link(f),
            Self::ServersChanged { .. }
            | Self::LameDuck { .. }
            | Self::Migrating { .. }
            | Self::Migrated { .. }
            | Self::CredentialsExpiring { .. }
            | Self::CredentialsExpired { .. } => self.fmt_moves(f),
            Self::SlowConsumer { .. }
            | Self::SlowConsumerEnded { .. }
            | Self::ServerError { .. }
            | Self::ClientError { .. }
            | Self::FramesRemoved { .. }
            | Self::BufferHighWater { .. }
            | Self::BufferOverflow { .. }
            | Self::EventsLagged { .. }
            | Self::Closed { .. } => self.fmt_flow(f),
        }
    }
}

impl EventKind {
    /// Display of the link and the reconnect loop: state changes and attempts.
    fn fmt_link(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CurrentState {
                state,
                server: Some(server),
            } => write!(f, "current state: {state}, server {server}"),
            Self::CurrentState {
                state,
                server: None,
            } => write!(f, "current state: {state}"),
            Self::Connected { server, .. } => write!(f, "connected to {server}"),
            Self::Disconnected {
                server,
                reason,
                unconfirmed_msgs,
                unconfirmed_bytes,
            } => write!(
                f,
                "disconnected from {server}: {reason} ({unconfirmed_msgs} messages, \
                 {unconfirmed_bytes} bytes unconfirmed, possibly lost)"
            ),
            Self::Reconnecting {
                attempt,
                server,
                delay,
                ..
            } => write!(
                f,
                "reconnecting: attempt {attempt} to {server} in {delay:?}"
            ),
            Self::ReconnectFailed {
                server,
                address,
                attempt,
                error,
            } => match address {
                Some(a) => write!(
                    f,
                    "reconnect attempt {attempt} to {server} ({a}) failed: {error}"
                ),
                None => write!(f, "reconnect attempt {attempt} to {server} failed: {error}"),
            },
            Self::Reconnected {
                server,
                attempts,
                downtime,
                ..
            } => write!(
                f,
                "reconnected to {server} after {downtime:?} ({attempts} attempts)"
            ),
            _ => unreachable!("Display routes only this group here"),
        }
    }

    /// Display of the server pool, planned switches and credentials.
    fn fmt_moves(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ServersChanged { added, removed } => write!(
                f,
                "server pool changed: added [{}], removed [{}]",
                added.join(", "),
                removed.join(", ")
            ),
            Self::LameDuck { server } => write!(f, "{server} entered lame duck mode"),
            Self::Migrating { from, to, reason } => {
                write!(f, "migrating from {from} to {to} ({reason})")
            }
            Self::Migrated {
                from,
                to,
                unconfirmed_msgs,
                unconfirmed_bytes,
            } => write!(
                f,
                "migrated from {from} to {to} ({unconfirmed_msgs} messages, \
                 {unconfirmed_bytes} bytes unconfirmed on the old link)"
            ),
            Self::CredentialsExpiring {
                server,
                expires_in,
                reason,
            } => write!(
                f,
                "user JWT for {server} expires in {}s: {reason}",
                expires_in.as_secs()
            ),
            Self::CredentialsExpired {
                server,
                expired_for,
            } => write!(
                f,
                "{server} refuses the user JWT, which expired {}s ago: retrying at the backoff \
                 with the credentials read again at every attempt; provide fresh credentials",
                expired_for.as_secs()
            ),
            _ => unreachable!("Display routes only this group here"),
        }
    }

    /// Display of messages and the client: slow consumers, errors, the buffer, the queue, close.
    fn fmt_flow(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SlowConsumer {
                subject,
                sid,
                dropped,
            } => write!(
                f,
                "slow consumer on {subject} (sid {sid}): dropping messages, {dropped} so far"
            ),
            Self::SlowConsumerEnded {
                subject,
                sid,
                dropped,
            } => write!(
                f,
                "slow consumer on {subject} (sid {sid}) caught up: {dropped} dropped"
            ),
            Self::ServerError { error } => write!(f, "server error: {error}"),
            Self::ClientError { error } => write!(f, "client error: {error}"),
            Self::FramesRemoved {
                reason,
                msgs,
                bytes,
            } => write!(
                f,
                "{msgs} messages ({bytes} bytes) removed, never sent: {reason}"
            ),
            Self::BufferHighWater {
                percent,
                bytes,
                msgs,
            } => write!(
                f,
                "outbound buffer at {percent}% ({msgs} messages, {bytes} bytes)"
            ),
            Self::BufferOverflow {
                refused_msgs,
                refused_bytes,
            } => write!(
                f,
                "outbound buffer full: {refused_msgs} publishes ({refused_bytes} bytes) refused"
            ),
            Self::EventsLagged { dropped } => {
                write!(f, "event queue full: {dropped} events dropped")
            }
            Self::Closed {
                reason,
                unsent_msgs,
                unsent_bytes,
                unconfirmed_msgs,
                unconfirmed_bytes,
            } => write!(
                f,
                "closed: {reason} ({unsent_msgs} messages, {unsent_bytes} bytes unsent; \
                 {unconfirmed_msgs} messages, {unconfirmed_bytes} bytes unconfirmed)"
            ),
            _ => unreachable!("Display routes only this group here"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    State,
    Loss,
    Other,
}

impl EventKind {
    fn class(&self) -> Class {
        match self {
            EventKind::CurrentState { .. }
            | EventKind::Connected { .. }
            | EventKind::Reconnecting { .. }
            | EventKind::Reconnected { .. } => Class::State,
            // Never dropped either: an operator must learn that a server is going away, or
            // that the credentials are refused, even from a full queue (a later one of the
            // same kind replaces it).
            EventKind::LameDuck { .. }
            | EventKind::CredentialsExpired { .. }
            | EventKind::Disconnected { .. }
            | EventKind::Migrated { .. }
            | EventKind::SlowConsumer { .. }
            | EventKind::SlowConsumerEnded { .. }
            | EventKind::FramesRemoved { .. }
            | EventKind::BufferOverflow { .. }
            | EventKind::Closed { .. } => Class::Loss,
            _ => Class::Other,
        }
    }

    /// Loss events of one kind merge; slow-consumer counts only within one subscription.
    fn same_kind(&self, other: &EventKind) -> bool {
        match (self, other) {
            (
                EventKind::SlowConsumer { sid: a, .. }
                | EventKind::SlowConsumerEnded { sid: a, .. },
                EventKind::SlowConsumer { sid: b, .. }
                | EventKind::SlowConsumerEnded { sid: b, .. },
            ) => a == b && std::mem::discriminant(self) == std::mem::discriminant(other),
            (EventKind::LameDuck { server: a }, EventKind::LameDuck { server: b })
            | (
                EventKind::CredentialsExpired { server: a, .. },
                EventKind::CredentialsExpired { server: b, .. },
            ) => a == b,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }

    /// Merge `newer`'s counts into self (same kind, loss events).
    fn merge(&mut self, newer: EventKind) {
        match (self, newer) {
            (
                EventKind::Disconnected {
                    unconfirmed_msgs: m,
                    unconfirmed_bytes: b,
                    reason,
                    server,
                },
                EventKind::Disconnected {
                    unconfirmed_msgs,
                    unconfirmed_bytes,
                    reason: r2,
                    server: s2,
                },
            ) => {
                *m += unconfirmed_msgs;
                *b += unconfirmed_bytes;
                *reason = r2;
                *server = s2;
            }
            (
                EventKind::Migrated {
                    unconfirmed_msgs: m,
                    unconfirmed_bytes: b,
                    to,
                    ..
                },
                EventKind::Migrated {
                    unconfirmed_msgs,
                    unconfirmed_bytes,
                    to: t2,
                    ..
                },
            ) => {
                *m += unconfirmed_msgs;
                *b += unconfirmed_bytes;
                *to = t2;
            }
            (
                EventKind::SlowConsumer { dropped, .. }
                | EventKind::SlowConsumerEnded { dropped, .. },
                EventKind::SlowConsumer { dropped: d2, .. }
                | EventKind::SlowConsumerEnded { dropped: d2, .. },
            ) => *dropped += d2,
            (
                EventKind::FramesRemoved { msgs, bytes, .. },
                EventKind::FramesRemoved {
                    msgs: m2,
                    bytes: b2,
                    ..
                },
            ) => {
                *msgs += m2;
                *bytes += b2;
            }
            (
                EventKind::BufferOverflow {
                    refused_msgs,
                    refused_bytes,
                },
                EventKind::BufferOverflow {
                    refused_msgs: m2,
                    refused_bytes: b2,
                },
            ) => {
                *refused_msgs += m2;
                *refused_bytes += b2;
            }
            (this, newer) => *this = newer,
        }
    }

    fn bump_collapsed(&mut self, by: u32) {
        match self {
            EventKind::Connected { collapsed, .. }
            | EventKind::Reconnecting { collapsed, .. }
            | EventKind::Reconnected { collapsed, .. } => *collapsed += by,
            _ => {}
        }
    }

    fn collapsed(&self) -> u32 {
        match self {
            EventKind::Connected { collapsed, .. }
            | EventKind::Reconnecting { collapsed, .. }
            | EventKind::Reconnected { collapsed, .. } => *collapsed,
            _ => 0,
        }
    }
}

/// One bounded queue with the merge rules.
#[derive(Debug)]
pub(crate) struct EventQueue {
    capacity: usize,
    items: VecDeque<Event>,
    lagged: u64,
    closed: bool,
}

impl EventQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            items: VecDeque::new(),
            lagged: 0,
            closed: false,
        }
    }

    pub(crate) fn push(&mut self, event: Event) {
        if self.items.len() < self.capacity {
            self.items.push_back(event);
            return;
        }
        match event.kind.class() {
            Class::Loss => {
                if let Some(q) = self
                    .items
                    .iter_mut()
                    .rev()
                    .find(|e| e.kind.same_kind(&event.kind))
                {
                    // The merged event keeps the newer time.
                    q.time = event.time;
                    q.kind.merge(event.kind);
                } else {
                    // Never dropped: exceed the bound rather than lose a loss report.
                    self.items.push_back(event);
                }
            }
            Class::State => {
                if let Some(q) = self
                    .items
                    .iter_mut()
                    .rev()
                    .find(|e| e.kind.class() == Class::State)
                {
                    let collapsed = q.kind.collapsed() + 1;
                    *q = event;
                    q.kind.bump_collapsed(collapsed);
                } else {
                    self.items.push_back(event);
                }
            }
            Class::Other => self.lagged += 1,
        }
    }

    pub(crate) fn pop(&mut self) -> Option<Event> {
        if let Some(e) = self.items.pop_front() {
            return Some(e);
        }
        if self.lagged > 0 {
            let dropped = std::mem::take(&mut self.lagged);
            return Some(Event::now(EventKind::EventsLagged { dropped }));
        }
        None
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }
}

#[derive(Debug)]
struct Sink {
    queue: Mutex<EventQueue>,
    waker: AtomicWaker,
}

/// Fans events out to the streams and the callback task, logging every one.
#[derive(Debug, Default)]
pub(crate) struct EventHub {
    sinks: Mutex<Vec<Arc<Sink>>>,
    /// Set (under the `sinks` lock) by [`EventHub::close`]: later streams end at once.
    closed: std::sync::atomic::AtomicBool,
    capacity: usize,
    pub(crate) lagged_total: std::sync::atomic::AtomicU64,
}

impl EventHub {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            sinks: Mutex::new(Vec::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            capacity,
            lagged_total: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn emit(&self, kind: EventKind) {
        let event = Event::now(kind);
        log(&event.kind);
        let mut sinks = self.sinks.lock();
        sinks.retain(|s| Arc::strong_count(s) > 1);
        for sink in sinks.iter() {
            let mut q = sink.queue.lock();
            if q.closed {
                continue;
            }
            let before = q.lagged;
            q.push(event.clone());
            if q.lagged > before {
                self.lagged_total
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            drop(q);
            sink.waker.wake();
        }
    }

    /// A new consumer whose first item is `first` (the current state). Every event emitted
    /// after this call is queued behind it. When the hub is closed, or `first` already
    /// says Closed, the stream yields `first` and ends (so it ends the same way whether or
    /// not the `Closed` event, which follows the state change, went out yet).
    pub(crate) fn subscribe(&self, first: EventKind) -> Events {
        log(&first);
        let already_closed = matches!(
            first,
            EventKind::CurrentState {
                state: State::Closed,
                ..
            }
        );
        let mut queue = EventQueue::new(self.capacity);
        queue.push(Event::now(first));
        let mut sinks = self.sinks.lock();
        // Read under the lock that `close` sets it under: a stream is either registered
        // before the close (and closed by it) or born closed.
        queue.closed = already_closed || self.closed.load(std::sync::atomic::Ordering::Relaxed);
        let closed = queue.closed;
        let sink = Arc::new(Sink {
            queue: Mutex::new(queue),
            waker: AtomicWaker::new(),
        });
        if !closed {
            sinks.push(sink.clone());
        }
        Events { sink }
    }

    /// No more events: streams end once drained, and so do streams taken later.
    pub(crate) fn close(&self) {
        let sinks = self.sinks.lock();
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for sink in sinks.iter() {
            sink.queue.lock().closed = true;
            sink.waker.wake();
        }
    }
}

impl Drop for EventHub {
    fn drop(&mut self) {
        // The client is gone (closed, or its runtime shut down): streams end.
        self.close();
    }
}

/// A stream of [`Event`]s from [`crate::Client::events`]. It starts with
/// [`EventKind::CurrentState`] and ends after `Closed` (at once, after that first item,
/// when taken from a client that has already closed).
#[derive(Debug)]
pub struct Events {
    sink: Arc<Sink>,
}

impl Events {
    /// Events queued and not yet taken.
    pub fn queued(&self) -> usize {
        self.sink.queue.lock().len()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        // Nothing is queued for a stream nobody holds.
        let mut q = self.sink.queue.lock();
        q.closed = true;
        q.items.clear();
    }
}

impl futures_core::Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let mut q = self.sink.queue.lock();
        if let Some(e) = q.pop() {
            return Poll::Ready(Some(e));
        }
        if q.closed {
            return Poll::Ready(None);
        }
        self.sink.waker.register(cx.waker());
        drop(q);
        // Re-check after registering so a push in between is not missed.
        let mut q = self.sink.queue.lock();
        match q.pop() {
            Some(e) => Poll::Ready(Some(e)),
            None if q.closed => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

#[allow(clippy::too_many_lines)] // a flat match, one arm per event kind: kept as one list on purpose
fn log(event: &EventKind) {
    match event {
        EventKind::CurrentState { state, server } => {
            tracing::debug!(state = %state, server = ?server, "event stream started");
        }
        EventKind::Connected { server, .. } => tracing::info!(server = %server, "connected"),
        EventKind::Disconnected {
            server,
            reason,
            unconfirmed_msgs,
            unconfirmed_bytes,
        } => tracing::warn!(
            server = %server,
            reason = %reason,
            unconfirmed_msgs,
            unconfirmed_bytes,
            "disconnected"
        ),
        EventKind::Reconnecting {
            attempt,
            server,
            delay,
            ..
        } => {
            tracing::debug!(attempt, server = %server, delay_ms = delay.as_millis() as u64, "reconnecting")
        }
        EventKind::ReconnectFailed {
            server,
            address,
            attempt,
            error,
        } => {
            tracing::info!(server = %server, address = ?address, attempt, error = %error, "reconnect attempt failed")
        }
        EventKind::Reconnected {
            server,
            attempts,
            downtime,
            ..
        } => {
            tracing::info!(server = %server, attempts, downtime_ms = downtime.as_millis() as u64, "reconnected")
        }
        EventKind::ServersChanged { added, removed } => {
            tracing::info!(added = ?added, removed = ?removed, "server pool changed");
        }
        EventKind::LameDuck { server } => {
            tracing::warn!(server = %server, "server entered lame duck mode")
        }
        EventKind::Migrating { from, to, reason } => {
            tracing::info!(from = %from, to = %to, reason = %reason, "migrating")
        }
        EventKind::Migrated {
            from,
            to,
            unconfirmed_msgs,
            unconfirmed_bytes,
        } => {
            tracing::info!(from = %from, to = %to, unconfirmed_msgs, unconfirmed_bytes, "migrated")
        }
        EventKind::CredentialsExpiring {
            server,
            expires_in,
            reason,
        } => tracing::warn!(
            server = %server,
            expires_in_s = expires_in.as_secs(),
            reason = %reason,
            "user JWT about to expire"
        ),
        EventKind::CredentialsExpired {
            server,
            expired_for,
        } => tracing::error!(
            server = %server,
            expired_for_s = expired_for.as_secs(),
            "the server refuses the expired user JWT; retrying with credentials read again"
        ),
        EventKind::SlowConsumer {
            subject,
            sid,
            dropped,
        } => tracing::warn!(subject = %subject, sid, dropped, "slow consumer: dropping messages"),
        EventKind::SlowConsumerEnded {
            subject,
            sid,
            dropped,
        } => tracing::info!(subject = %subject, sid, dropped, "slow consumer episode ended"),
        EventKind::ServerError { error } => tracing::warn!(message = %error, "server error"),
        EventKind::ClientError { error } => tracing::warn!(error = %error, "client error"),
        EventKind::FramesRemoved {
            reason,
            msgs,
            bytes,
        } => {
            tracing::warn!(reason = %reason, msgs, bytes, "frames removed from the outbound buffer")
        }
        EventKind::BufferHighWater {
            percent,
            bytes,
            msgs,
        } => tracing::info!(percent, bytes, msgs, "outbound buffer high water"),
        EventKind::BufferOverflow {
            refused_msgs,
            refused_bytes,
        } => tracing::warn!(
            refused_msgs,
            refused_bytes,
            "outbound buffer full: publishes refused"
        ),
        EventKind::EventsLagged { dropped } => {
            tracing::warn!(dropped, "event queue full: events dropped")
        }
        EventKind::Closed {
            reason,
            unsent_msgs,
            unsent_bytes,
            unconfirmed_msgs,
            unconfirmed_bytes,
        } if *unsent_msgs > 0 || *unconfirmed_msgs > 0 => tracing::warn!(
            reason = %reason,
            unsent_msgs,
            unsent_bytes,
            unconfirmed_msgs,
            unconfirmed_bytes,
            "closed with messages unsent or unconfirmed"
        ),
        EventKind::Closed { reason, .. } => tracing::info!(reason = %reason, "closed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow(sid: u64, d: u64) -> EventKind {
        EventKind::SlowConsumer {
            subject: format!("s{sid}"),
            sid,
            dropped: d,
        }
    }

    fn err(m: &str) -> EventKind {
        EventKind::ServerError {
            error: ServerErr::parse(m),
        }
    }

    fn push(q: &mut EventQueue, kind: EventKind) {
        q.push(Event::now(kind));
    }

    fn pop(q: &mut EventQueue) -> Option<EventKind> {
        q.pop().map(|e| e.kind)
    }

    /// The typed reasons print the text the events printed as strings.
    #[test]
    fn typed_reasons_print_the_same_text() {
        let cases: Vec<(EventKind, &str)> = vec![
            (
                EventKind::Disconnected {
                    server: "nats://a:4222".into(),
                    reason: DisconnectReason::Eof,
                    unconfirmed_msgs: 1,
                    unconfirmed_bytes: 2,
                },
                "disconnected from nats://a:4222: the server closed the connection \
                 (1 messages, 2 bytes unconfirmed, possibly lost)",
            ),
            (
                EventKind::FramesRemoved {
                    reason: RemovedReason::PoisonFrame,
                    msgs: 1,
                    bytes: 9,
                },
                "1 messages (9 bytes) removed, never sent: the server closed the connection \
                 over frames we sent (poison frame); they are not resent",
            ),
            (
                EventKind::FramesRemoved {
                    reason: RemovedReason::MaxPayloadLowered { max_payload: 64 },
                    msgs: 1,
                    bytes: 9,
                },
                "1 messages (9 bytes) removed, never sent: the server lowered max_payload to 64",
            ),
            (
                EventKind::ReconnectFailed {
                    server: "nats://a:4222".into(),
                    address: Some("127.0.0.1:4222".into()),
                    attempt: 2,
                    error: AttemptCause::LameDuckNode,
                },
                "reconnect attempt 2 to nats://a:4222 (127.0.0.1:4222) failed: this address \
                 reaches a server in lame duck mode",
            ),
            (
                err("Permissions Violation for Publish to \"x\""),
                "server error: Permissions Violation for Publish to \"x\"",
            ),
            (
                EventKind::Closed {
                    reason: ClosedReason::PoolExhausted { last_attempt: None },
                    unsent_msgs: 0,
                    unsent_bytes: 0,
                    unconfirmed_msgs: 0,
                    unconfirmed_bytes: 0,
                },
                "closed: no server left to try: every server failed max_reconnects times or \
                 refused the credentials (0 messages, 0 bytes unsent; 0 messages, 0 bytes \
                 unconfirmed)",
            ),
            (
                EventKind::Closed {
                    reason: ClosedReason::Disconnected(DisconnectReason::Requested),
                    unsent_msgs: 0,
                    unsent_bytes: 0,
                    unconfirmed_msgs: 0,
                    unconfirmed_bytes: 0,
                },
                "closed: disconnected and reconnecting is off: closed on request (0 messages, \
                 0 bytes unsent; 0 messages, 0 bytes unconfirmed)",
            ),
        ];
        for (kind, text) in cases {
            assert_eq!(kind.to_string(), text);
        }
        // Display goes to one function per group of events: one of each other group.
        let lame = EventKind::LameDuck { server: "a".into() };
        assert_eq!(lame.to_string(), "a entered lame duck mode");
        assert_eq!(state(State::Idle).to_string(), "current state: idle");
    }

    #[test]
    fn loss_events_merge_when_full() {
        let mut q = EventQueue::new(2);
        push(&mut q, slow(1, 1));
        push(&mut q, err("x"));
        push(&mut q, slow(1, 5));
        push(&mut q, err("y"));
        assert_eq!(pop(&mut q), Some(slow(1, 6)));
        assert_eq!(pop(&mut q), Some(err("x")));
        assert_eq!(pop(&mut q), Some(EventKind::EventsLagged { dropped: 1 }));
        assert_eq!(pop(&mut q), None);
    }

    #[test]
    fn slow_consumer_counts_of_different_subscriptions_never_merge() {
        let mut q = EventQueue::new(1);
        push(&mut q, slow(1, 1));
        push(&mut q, slow(2, 3));
        push(&mut q, slow(1, 2));
        push(&mut q, slow(2, 4));
        assert_eq!(pop(&mut q), Some(slow(1, 3)));
        assert_eq!(pop(&mut q), Some(slow(2, 7)));
        assert_eq!(pop(&mut q), None);
    }

    #[test]
    fn lame_duck_is_never_dropped_or_replaced_by_a_state_change() {
        let mut q = EventQueue::new(1);
        let ldm = |s: &str| EventKind::LameDuck { server: s.into() };
        push(&mut q, ldm("a"));
        push(
            &mut q,
            EventKind::Reconnecting {
                attempt: 1,
                server: "b".into(),
                delay: Duration::ZERO,
                collapsed: 0,
            },
        );
        push(&mut q, ldm("b"));
        push(&mut q, err("x"));
        assert_eq!(pop(&mut q), Some(ldm("a")));
        assert!(matches!(pop(&mut q), Some(EventKind::Reconnecting { .. })));
        assert_eq!(pop(&mut q), Some(ldm("b")));
        assert_eq!(pop(&mut q), Some(EventKind::EventsLagged { dropped: 1 }));
    }

    #[test]
    fn state_changes_collapse_when_full() {
        let mut q = EventQueue::new(1);
        let rc = |attempt| EventKind::Reconnecting {
            attempt,
            server: "a".into(),
            delay: Duration::ZERO,
            collapsed: 0,
        };
        push(&mut q, rc(1));
        push(&mut q, rc(2));
        push(&mut q, rc(3));
        match pop(&mut q) {
            Some(EventKind::Reconnecting {
                attempt, collapsed, ..
            }) => {
                assert_eq!((attempt, collapsed), (3, 2));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn loss_event_without_match_is_kept_beyond_bound() {
        let mut q = EventQueue::new(1);
        push(&mut q, err("x"));
        push(
            &mut q,
            EventKind::BufferOverflow {
                refused_msgs: 1,
                refused_bytes: 2,
            },
        );
        assert_eq!(q.len(), 2);
    }

    fn state(state: State) -> EventKind {
        EventKind::CurrentState {
            state,
            server: None,
        }
    }

    /// Polls once: `Ready(None)` when the stream ended, `Pending` when it would wait.
    fn ready(events: &mut Events) -> Poll<Option<EventKind>> {
        use futures_core::Stream;
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        Pin::new(events)
            .poll_next(&mut cx)
            .map(|e| e.map(|e| e.kind))
    }

    #[test]
    fn a_stream_starts_with_its_first_item_then_gets_later_events() {
        let hub = EventHub::new(8);
        hub.emit(err("before"));
        let mut events = hub.subscribe(state(State::Connected));
        hub.emit(err("after"));
        assert_eq!(
            ready(&mut events),
            Poll::Ready(Some(state(State::Connected)))
        );
        assert_eq!(ready(&mut events), Poll::Ready(Some(err("after"))));
        assert_eq!(ready(&mut events), Poll::Pending, "waits for more");
        hub.close();
        assert_eq!(ready(&mut events), Poll::Ready(None), "ends once closed");
    }

    #[test]
    fn a_stream_taken_after_close_yields_its_first_item_then_ends() {
        let hub = EventHub::new(8);
        hub.close();
        let mut events = hub.subscribe(state(State::Closed));
        assert_eq!(ready(&mut events), Poll::Ready(Some(state(State::Closed))));
        assert_eq!(ready(&mut events), Poll::Ready(None));
        hub.emit(err("late"));
        assert_eq!(ready(&mut events), Poll::Ready(None));
    }

    #[test]
    fn a_stream_whose_first_item_says_closed_ends_before_the_hub_closes() {
        let hub = EventHub::new(8);
        let mut events = hub.subscribe(state(State::Closed));
        hub.emit(err("the Closed event, in flight"));
        assert_eq!(ready(&mut events), Poll::Ready(Some(state(State::Closed))));
        assert_eq!(ready(&mut events), Poll::Ready(None));
    }

    #[test]
    fn the_first_item_is_a_state_change_for_the_queue() {
        let mut q = EventQueue::new(1);
        push(&mut q, state(State::Connected));
        push(
            &mut q,
            EventKind::Reconnecting {
                attempt: 1,
                server: "a".into(),
                delay: Duration::ZERO,
                collapsed: 0,
            },
        );
        assert!(matches!(
            pop(&mut q),
            Some(EventKind::Reconnecting { collapsed: 1, .. })
        ));
        assert_eq!(pop(&mut q), None);
    }
}
