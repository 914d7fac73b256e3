//! The connection: state shared by handles and the driver, and the driver itself.
//!
//! Handles lock [`Shared::inner`] briefly, act on the sans-IO [`Connection`], and wake the
//! driver; there is no per-message channel hop. The driver task owns the socket
//! ([`driver`]) and runs the reconnect loop ([`reconnect`]).

pub(crate) mod driver;
pub(crate) mod link;
pub(crate) mod reconnect;
mod switch;
pub(crate) mod timer;
pub(crate) mod transport;

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use tether_proto::conn::{ConnStats, Connection};
use tokio::sync::{oneshot, watch, Notify};

use crate::error::{ConnectError, FlushError, PublishError, RequestError};
use crate::events::{ClosedReason, EventHub, EventKind, State};
use crate::options::ConnectOptions;
use crate::request::Mux;
use crate::server_pool::ServerPool;
use crate::subscription::SubQueue;

/// The probe of a planned switch (DESIGN semantics 9): a subject subscribed on the new
/// link after the replayed subscriptions and published on the old link until it arrives on
/// the new one. Its arrival shows that the old node knows the new link's interest (a route
/// carries one account's interest in order), so the old link's subscriptions can end.
#[derive(Debug)]
pub(crate) struct Probe {
    /// Its sid on the new link.
    pub(crate) sid: u64,
    pub(crate) subject: String,
    /// Payloads carry the nanoseconds since this instant at which they were sent.
    pub(crate) started: Instant,
    /// When the first probe arrived (the old node knows the new interest).
    pub(crate) arrived: Option<Instant>,
    /// A probe sent after the first arrived came back too: the margin for publishers on a
    /// third node has passed.
    pub(crate) confirmed: bool,
    /// Send a probe at once (the first one arrived: the margin's probe).
    pub(crate) send_now: bool,
    /// The server refused the probe (permissions): the overlap runs to ldm_overlap.
    pub(crate) refused: bool,
    /// The cut marker (sid on both links, subject), once the switch's cut started.
    pub(crate) marker: Option<(u64, String)>,
    /// The last cut marker published on the new link.
    pub(crate) marker_seq: u64,
    /// The PONG after the probe's SUB: the new server registered every subscription.
    pub(crate) registered: Option<oneshot::Receiver<Result<(), FlushError>>>,
}

/// How the client is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseMode {
    /// Flush (bounded by flush_timeout), then close.
    Graceful,
    /// Close without a last flush (a drain already out of time).
    Now,
}

/// Whether the client's driver task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Startup {
    /// Not yet: the FailFast policy's first connect, or the Lazy policy before its
    /// first use (or after a failed attempt).
    NotStarted,
    /// The Lazy policy's first attempt is under way.
    LazyAttempt,
    /// The driver task runs (it closes the client when asked).
    Running,
}

/// A request to the reconnect loop, while it waits for the next attempt, to pick the
/// server again. The stronger request wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Repick {
    No,
    /// The pool changed (set_server_pool): the server waited for may have left it.
    PoolChanged,
    /// force_reconnect(): every server is due now.
    AllDueNow,
}

/// Who waits on the client is failed: why.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WaitersFail<'a> {
    /// The client closed.
    Closed,
    /// The Lazy policy's attempt failed.
    Connect(&'a ConnectError),
}

/// State under the connection lock.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) conn: Connection,
    pub(crate) state: State,
    /// Keyed by our own sids and tokens, looked up per message: FxHash, not SipHash.
    pub(crate) subs: FxHashMap<u64, Arc<SubQueue>>,
    pub(crate) mux: Option<Mux>,
    /// Why the last inbox subscription was refused, for requests that meant to use it.
    pub(crate) inbox_refused: Option<String>,
    pub(crate) requests: crate::request::Requests,
    /// Replies routed under the lock; the driver hands them over after it (see
    /// [`crate::request::Replies`]). Empty whenever the lock is free.
    pub(crate) replies: crate::request::Replies,
    /// The reply subject of the request being buffered, kept to reuse its memory.
    pub(crate) reply_scratch: String,
    pub(crate) flushes: HashMap<u64, oneshot::Sender<Result<(), FlushError>>>,
    pub(crate) next_token: u64,
    /// The driver found nothing to write and waits for a wake-up.
    pub(crate) driver_waiting: bool,
    /// The deadline the waiting driver sleeps until: a caller's direct write that sets
    /// no earlier timer needs no wake-up.
    pub(crate) driver_deadline: Option<Instant>,
    /// The waiting driver wakes within [`link::HOLD`] or on the next read anyway: it went
    /// to wait with JetStream window requests unanswered or a pull stream live. A window
    /// request's frame or a JetStream ack buffered meanwhile need not wake it (see
    /// `link::try_direct_write` and [`Shared::held`]).
    pub(crate) driver_holds: bool,
    /// Live [`Messages`](crate::jetstream::Messages) streams: while one is, messages are
    /// on their way and the driver holds for their read as for a window's acks.
    pub(crate) pull_streams: usize,
    pub(crate) pool: ServerPool,
    /// The server of the current (or last) link. Kept as an address, not a pool index:
    /// pool changes (discovery, pruning, removal) shift indices.
    pub(crate) current: Option<crate::server_pool::ServerAddr>,
    pub(crate) server_name: String,
    pub(crate) close: Option<CloseMode>,
    /// The reason the close reports, when it is not `Requested` (a drain that timed out).
    pub(crate) close_as: Option<ClosedReason>,
    pub(crate) closed_reason: Option<ClosedReason>,
    pub(crate) closed_report: crate::client::CloseReport,
    /// The outbound buffer's level as reported (high water, refused publishes).
    pub(crate) buffer_watch: crate::buffer_watch::BufferWatch,
    /// When the current outage started (no link), if the client is in one.
    pub(crate) outage_since: Option<Instant>,
    /// While reconnecting: pick the next server again (and how).
    pub(crate) repick: Repick,
    /// Whether the driver runs (or the Lazy policy's first attempt).
    pub(crate) startup: Startup,
    /// The driver's deadlines: lame duck mode's switch, the JWT refresh, and the current
    /// link's own (a switch's next target, close's flush, the retiring link's).
    pub(crate) timers: timer::TimerTable,
    /// The current link's socket, for direct writes of requests while the driver is idle.
    pub(crate) direct: Option<Arc<transport::Transport>>,
    /// A planned (make-before-break) switch was asked for.
    pub(crate) switch_request: Option<crate::events::MigrateReason>,
    /// The probe of the planned switch under way, while its old link still delivers.
    pub(crate) probe: Option<Probe>,
    /// The current link's user JWT validity, when it expires.
    pub(crate) jwt: Option<crate::credentials::JwtTimes>,
    /// CredentialsExpiring was emitted for the current link.
    pub(crate) expiring_reported: bool,
    /// The reconnect of the current link, complete (outage ended, counted, `Reconnected`
    /// emitted) once its replay and the frames buffered before it are written (the
    /// core's `Replayed`).
    pub(crate) reconnected: Option<reconnect::PendingReconnect>,
}

impl Inner {
    /// The state of a new client: no link yet, nothing buffered.
    pub(crate) fn new(conn: Connection, state: State, pool: ServerPool) -> Self {
        Self {
            conn,
            state,
            subs: FxHashMap::default(),
            mux: None,
            inbox_refused: None,
            requests: crate::request::Requests::default(),
            replies: crate::request::Replies::default(),
            reply_scratch: String::new(),
            flushes: HashMap::new(),
            next_token: 0,
            driver_waiting: false,
            driver_deadline: None,
            driver_holds: false,
            pull_streams: 0,
            pool,
            current: None,
            server_name: String::new(),
            close: None,
            close_as: None,
            closed_reason: None,
            closed_report: crate::client::CloseReport::default(),
            buffer_watch: crate::buffer_watch::BufferWatch::default(),
            outage_since: None,
            repick: Repick::No,
            startup: Startup::NotStarted,
            timers: timer::TimerTable::default(),
            direct: None,
            switch_request: None,
            probe: None,
            jwt: None,
            expiring_reported: false,
            reconnected: None,
        }
    }

    /// Fail every flush and request that waits: their frames are removed too, so that
    /// one told "not published" never goes out later (B6).
    pub(crate) fn fail_waiters(&mut self, why: WaitersFail<'_>) {
        for (token, tx) in std::mem::take(&mut self.flushes) {
            self.conn.cancel_flush(token);
            let _ = tx.send(Err(match why {
                WaitersFail::Closed => FlushError::Closed,
                WaitersFail::Connect(e) => FlushError::Connect(Box::new(e.clone())),
            }));
        }
        crate::request::fail_all(self, || match why {
            WaitersFail::Closed => RequestError::Closed,
            WaitersFail::Connect(e) => {
                RequestError::Publish(PublishError::Connect(Box::new(e.clone())))
            }
        });
    }

    /// The pool index of the current server, resolved now.
    pub(crate) fn server_index(&self) -> Option<usize> {
        self.current.as_ref().and_then(|a| self.pool.position(a))
    }

    pub(crate) fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }
}

/// Counters kept outside the lock.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) reconnects: AtomicU64,
    pub(crate) disconnected_nanos: AtomicU64,
    pub(crate) rtt_nanos: AtomicU64,
    pub(crate) slow_consumer_dropped: Arc<AtomicU64>,
    pub(crate) refused_msgs: AtomicU64,
    pub(crate) refused_bytes: AtomicU64,
    pub(crate) unconfirmed_reported_msgs: AtomicU64,
    pub(crate) unconfirmed_reported_bytes: AtomicU64,
    pub(crate) migrations: AtomicU64,
}

/// Everything handles and the driver share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) inner: Mutex<Inner>,
    /// Wakes the driver.
    pub(crate) wake: Notify,
    /// Room freed in the outbound buffer.
    pub(crate) space: Notify,
    /// The Lazy policy's first attempt finished.
    pub(crate) connected: Notify,
    pub(crate) state_tx: watch::Sender<State>,
    pub(crate) events: Arc<EventHub>,
    pub(crate) opts: ConnectOptions,
    pub(crate) counters: Counters,
    /// Window requests' frames or JetStream acks were left in the buffer for a holding
    /// driver ([`Inner::driver_holds`]): the publisher writes them when it waits, the
    /// consumer's stream when it runs dry (`Shared::write_held`).
    pub(crate) held: AtomicBool,
    /// The runtime the client was created on: its tasks are spawned there, so a handle
    /// used from a thread outside any runtime still works.
    pub(crate) runtime: tokio::runtime::Handle,
    /// The TLS client configuration, built at the first TLS link.
    pub(crate) tls: crate::tls::TlsContext,
}

impl Shared {
    /// Close the client (`close()`, or the last handle dropped): the driver closes it,
    /// after a last flush when `mode` is Graceful; a client whose driver never started
    /// closes at once.
    pub(crate) fn request_close(&self, mode: CloseMode) {
        let mut inner = self.lock("close");
        if inner.state == State::Closed {
            return;
        }
        if inner.startup == Startup::Running {
            inner.close = Some(mode);
            drop(inner);
            self.wake.notify_one();
        } else {
            drop(inner);
            driver::finish(self, ClosedReason::Requested);
        }
    }

    /// Lock the connection state. The purpose names the caller for tracing lock waits.
    pub(crate) fn lock(&self, purpose: &'static str) -> MutexGuard<'_, Inner> {
        if let Some(g) = self.inner.try_lock() {
            return g;
        }
        let start = Instant::now();
        let g = self.inner.lock();
        let waited = start.elapsed();
        if waited > Duration::from_millis(1) {
            tracing::trace!(
                purpose,
                waited_us = waited.as_micros() as u64,
                "connection lock contended"
            );
        }
        g
    }

    /// Write what window requests and acks left for a holding driver, from the caller's
    /// thread: a JetStream publisher calls this when it is about to wait (for an ack, or
    /// for a slot of its window), a pull stream when it runs dry, so the frames buffered
    /// since the last read go out in one write.
    pub(crate) fn write_held(&self) {
        if !self.held.load(Ordering::Relaxed) {
            return;
        }
        let mut inner = self.lock("write held");
        self.held.store(false, Ordering::Relaxed);
        if link::try_direct_write(self, &mut inner) {
            self.wake_driver(&mut inner);
        }
    }

    /// Wake the driver if it is waiting for work. Call with the lock held, then drop it.
    pub(crate) fn wake_driver(&self, inner: &mut Inner) {
        if inner.driver_waiting {
            inner.driver_waiting = false;
            self.wake.notify_one();
        }
    }

    pub(crate) fn set_state(&self, inner: &mut Inner, state: State) {
        if inner.state != state {
            inner.state = state;
            self.state_tx.send_replace(state);
            metrics::gauge!("tether_state").set(state_code(state));
        }
    }

    pub(crate) fn emit(&self, event: EventKind) {
        self.events.emit(event);
    }

    /// Count what a link left unconfirmed (Disconnected, Migrated) into the statistics.
    pub(crate) fn count_unconfirmed(&self, c: tether_proto::outbound::Counts) {
        self.counters
            .unconfirmed_reported_msgs
            .fetch_add(c.msgs, Ordering::Relaxed);
        self.counters
            .unconfirmed_reported_bytes
            .fetch_add(c.bytes, Ordering::Relaxed);
    }

    /// An outage ended (or the client closed during one): add it to disconnected_time.
    /// Returns how long it lasted.
    pub(crate) fn end_outage(&self, inner: &mut Inner) -> Duration {
        let Some(t) = inner.outage_since.take() else {
            return Duration::ZERO;
        };
        let downtime = t.elapsed();
        self.counters
            .disconnected_nanos
            .fetch_add(downtime.as_nanos() as u64, Ordering::Relaxed);
        downtime
    }

    pub(crate) fn stats_snapshot(
        &self,
        core: ConnStats,
        inner: &Inner,
    ) -> crate::stats::Statistics {
        let c = &self.counters;
        let buffered = inner.conn.buffered();
        crate::stats::Statistics {
            in_msgs: core.in_msgs,
            in_bytes: core.in_bytes,
            out_msgs: core.out_msgs,
            out_bytes: core.out_bytes,
            connects: core.connects,
            reconnects: c.reconnects.load(Ordering::Relaxed),
            disconnected_time: Duration::from_nanos(c.disconnected_nanos.load(Ordering::Relaxed))
                + inner.outage_since.map_or(Duration::ZERO, |t| t.elapsed()),
            rtt: match c.rtt_nanos.load(Ordering::Relaxed) {
                0 => None,
                n => Some(Duration::from_nanos(n)),
            },
            buffered_msgs: buffered.msgs,
            buffered_bytes: buffered.bytes,
            buffer_high_water_bytes: inner.buffer_watch.high_water_bytes,
            publish_denied: core.publish_denied,
            frames_removed: core.frames_removed,
            slow_consumer_dropped: c.slow_consumer_dropped.load(Ordering::Relaxed),
            refused_msgs: c.refused_msgs.load(Ordering::Relaxed),
            refused_bytes: c.refused_bytes.load(Ordering::Relaxed),
            unconfirmed_reported_msgs: c.unconfirmed_reported_msgs.load(Ordering::Relaxed),
            migrations: c.migrations.load(Ordering::Relaxed),
            unconfirmed_reported_bytes: c.unconfirmed_reported_bytes.load(Ordering::Relaxed),
            pending_requests: inner.requests.len(),
            events_lagged: self.events.lagged_total.load(Ordering::Relaxed),
            subscriptions: inner.subs.len(),
            malformed_headers: core.malformed_headers,
            last_replay: core.last_replay,
        }
    }
}

fn state_code(state: State) -> f64 {
    match state {
        State::Idle => 0.0,
        State::Connecting => 1.0,
        State::Connected => 2.0,
        State::Reconnecting => 3.0,
        State::DrainingSubs => 4.0,
        State::DrainingPubs => 5.0,
        State::Closed => 6.0,
    }
}
