//! The reconnect loop (DESIGN semantics 4 and 5): run the link; when it ends, pick the
//! server due earliest, wait until it is due, dial and handshake, and either adopt the
//! new link or record the failure with the pool.
//!
//! The policy itself is pure and lives in the pool: [`ServerPool::record_attempt`] turns
//! a failed attempt (its [`AuthRefusal`], when the server refused the credentials) into
//! the server's next due time, its auth strikes and its removal. This file only carries
//! the outcome into events and state; a failure is reported with its [`AttemptCause`].
//!
//! [`ServerPool::record_attempt`]: crate::server_pool::ServerPool::record_attempt

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tether_proto::conn::HandshakeError;

use super::driver::{adopt, establish, finish, tokio_instant, Established, LinkEnd};
use super::link::run_link;
use super::{Inner, Repick, Shared};
use crate::credentials::{JwtTimes, Loaded};
use crate::error::{AttemptCause, AttemptError};
use crate::events::{ClosedReason, EventKind, State};
use crate::server_pool::{AuthRefusal, ReconnectPolicy, ServerAddr};

/// A user JWT this close to its `exp` is treated as expired when the server refuses it:
/// the server's clock may run ahead of ours.
pub(crate) const JWT_CLOCK_SKEW: Duration = Duration::from_secs(5);

/// The credentials an attempt used, as the auth rules need them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UsedCredentials {
    /// See [`Loaded::fingerprint`].
    pub(crate) fingerprint: u64,
    /// The user JWT's validity, if it had one that expires.
    pub(crate) jwt: Option<JwtTimes>,
}

impl UsedCredentials {
    pub(crate) fn of(loaded: &Loaded) -> Self {
        Self {
            fingerprint: loaded.fingerprint,
            jwt: loaded.jwt,
        }
    }

    /// The user JWT counts as expired at `now` (within [`JWT_CLOCK_SKEW`] of its `exp`):
    /// how long ago it expired.
    pub(crate) fn jwt_expired(&self, now: SystemTime) -> Option<Duration> {
        self.jwt
            .and_then(|t| (t.expires_in(now) <= JWT_CLOCK_SKEW).then(|| t.expired_for(now)))
    }
}

/// The auth rules' view of an attempt, recorded at `now`: an auth -ERR during a handshake
/// that used `credentials` (a failure without them, after the handshake, is no refusal).
pub(crate) fn auth_refusal(
    cause: &AttemptCause,
    credentials: Option<UsedCredentials>,
    now: SystemTime,
) -> Option<AuthRefusal> {
    let credentials = credentials?;
    cause.auth_class().map(|class| AuthRefusal {
        class,
        credentials: credentials.fingerprint,
        jwt_expired: credentials.jwt_expired(now),
    })
}

/// A failed attempt: as reported (events, `ConnectError::AllFailed`), and the credentials
/// its handshake used (for the auth rules).
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) attempt: AttemptError,
    pub(crate) credentials: Option<UsedCredentials>,
}

impl Failure {
    pub(crate) fn new(addr: &ServerAddr, address: Option<String>, cause: AttemptCause) -> Self {
        Self {
            attempt: AttemptError {
                server: addr.to_string(),
                address,
                error: cause,
            },
            credentials: None,
        }
    }

    /// The handshake, run with `credentials`, failed.
    pub(crate) fn handshake(
        addr: &ServerAddr,
        address: Option<String>,
        error: HandshakeError,
        credentials: UsedCredentials,
    ) -> Self {
        Self {
            credentials: Some(credentials),
            ..Self::new(addr, address, AttemptCause::Handshake(error))
        }
    }

    /// The server refused the credentials (an auth -ERR during the handshake).
    pub(crate) fn auth_refusal(&self) -> Option<AuthRefusal> {
        auth_refusal(&self.attempt.error, self.credentials, SystemTime::now())
    }

    /// The `ReconnectFailed` event for the `attempt`-th attempt.
    pub(crate) fn event(&self, attempt: u32) -> EventKind {
        EventKind::ReconnectFailed {
            server: self.attempt.server.clone(),
            address: self.attempt.address.clone(),
            attempt,
            error: self.attempt.error.clone(),
        }
    }
}

/// Start the driver task on the client's runtime. A panic inside it (a user callback
/// such as `reconnect_delay`, or a bug) is never silent: the client closes with
/// [`ClosedReason::DriverFailed`], every waiter fails at once, and the event stream ends
/// with `Closed`.
pub(crate) fn spawn(shared: Arc<Shared>, first: Option<Established>) {
    use futures_util::FutureExt;
    let runtime = shared.runtime.clone();
    runtime.spawn(async move {
        let run = std::panic::AssertUnwindSafe(run(shared.clone(), first));
        if let Err(panic) = run.catch_unwind().await {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            tracing::error!(panic = %what, "the connection driver panicked; closing the client");
            shared.emit(EventKind::ClientError {
                error: format!("the connection driver panicked: {what}"),
            });
            finish(&shared, ClosedReason::DriverFailed(what));
        }
    });
}

/// Run the client: the given link first (if any), then the reconnect loop.
async fn run(shared: Arc<Shared>, first: Option<Established>) {
    let mut guard = CancelGuard {
        shared: shared.clone(),
        done: false,
    };
    let mut rng = SmallRng::from_entropy();
    let mut ever_connected = first.is_some();
    if first.is_none() {
        // Without a first link (Retry policy) the client is down from the start.
        shared.lock("driver start").outage_since = Some(Instant::now());
    }
    let mut link = first;
    // Attempts in this outage, for the events.
    let mut attempts: u32 = 0;
    // A planned switch's new link, ready when the old one died: adopted as it is.
    let mut prepared: Option<(ServerAddr, Established)> = None;
    // The last failed attempt, for `ClosedReason::PoolExhausted`.
    let mut last_failure: Option<Box<AttemptError>> = None;
    let closed = loop {
        if let Some(est) = link.take() {
            match run_link(&shared, est).await {
                LinkEnd::Closed => break ClosedReason::Requested,
                LinkEnd::Down { reason, ready } => {
                    prepared = ready.map(|b| *b);
                    if !shared.opts.allow_reconnect {
                        break ClosedReason::Disconnected(reason);
                    }
                    attempts = 0;
                    on_link_down(&shared);
                }
            }
        }
        attempts += 1;
        let (addr, est) = if let Some((addr, est)) = prepared.take() {
            (addr, Ok(est))
        } else {
            let (addr, due) = match pick(&shared, &mut last_failure) {
                Ok(next) => next,
                Err(reason) => break reason,
            };
            if !wait_until_due(&shared, &addr, due, attempts).await {
                // Close, force_reconnect or a new pool: pick again (not an attempt).
                attempts -= 1;
                continue;
            }
            let est = establish(&shared, &addr).await;
            (addr, est)
        };
        let adopted = match est {
            Ok(est) => adopt_attempt(&shared, &addr, est),
            Err(f) => Adopted::Failed(f),
        };
        match adopted {
            Adopted::Up(est) => {
                let after = ever_connected.then_some(attempts);
                on_connected(&shared, &mut shared.lock("reconnect"), &addr, after);
                ever_connected = true;
                link = Some(est);
            }
            Adopted::Failed(f) => {
                on_failed(&shared, &addr, &f, attempts, &mut rng);
                last_failure = Some(Box::new(f.attempt));
            }
            // set_server_pool removed it while the handshake ran: pick again.
            Adopted::Gone => attempts -= 1,
            Adopted::Closed => break ClosedReason::Requested,
        }
    };
    finish(&shared, closed);
    guard.done = true;
}

/// The current link went down and the client reconnects: the outage starts, and the
/// server whose link dropped goes after others due at once.
fn on_link_down(shared: &Shared) {
    let now = Instant::now();
    let mut inner = shared.lock("reconnect");
    // A link lost before its replay was written did not end the outage: it goes on from
    // where it started.
    inner.outage_since.get_or_insert(now);
    if let Some(i) = inner.server_index() {
        inner.pool.record_dropped(i, now);
    }
    if matches!(inner.state, State::Connected) {
        shared.set_state(&mut inner, State::Reconnecting);
    }
}

/// The server to try next and when it is due, or why the client closes instead (close()
/// was called, or the pool is empty after `last_failure`).
fn pick(
    shared: &Shared,
    last_failure: &mut Option<Box<AttemptError>>,
) -> Result<(ServerAddr, Instant), ClosedReason> {
    let mut inner = shared.lock("reconnect");
    if inner.close.is_some() {
        return Err(ClosedReason::Requested);
    }
    if inner.repick == Repick::AllDueNow {
        inner.repick = Repick::No;
        inner.pool.make_all_due(Instant::now());
    }
    inner
        .pool
        .next(Instant::now())
        .and_then(|i| inner.pool.get(i).map(|e| (e.addr.clone(), e.due)))
        .ok_or_else(|| ClosedReason::PoolExhausted {
            last_attempt: last_failure.take(),
        })
}

/// Emit `Reconnecting` for the `attempt`-th attempt and sleep until `due`. Returns false
/// early when close(), force_reconnect() or a new server pool asks to pick again; other
/// wake-ups (publishers, waiters) leave the schedule as it is, so the attempt keeps its
/// number and its `Reconnecting` event is not repeated.
async fn wait_until_due(shared: &Shared, addr: &ServerAddr, due: Instant, attempt: u32) -> bool {
    let delay = due.saturating_duration_since(Instant::now());
    shared.emit(EventKind::Reconnecting {
        attempt,
        server: addr.to_string(),
        delay,
        collapsed: 0,
    });
    if delay.is_zero() {
        return true;
    }
    let sleep = tokio::time::sleep_until(tokio_instant(due));
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            () = shared.wake.notified() => {
                let mut inner = shared.lock("reconnect wait");
                // A new pool is picked from once; force_reconnect's "all due now"
                // is applied by the pick.
                let repick = inner.repick;
                if inner.repick == Repick::PoolChanged {
                    inner.repick = Repick::No;
                }
                if inner.close.is_some() || repick != Repick::No {
                    return false;
                }
            }
        }
    }
}

/// What became of a link whose handshake completed.
enum Adopted {
    Up(Established),
    /// The bytes after its handshake ended it.
    Failed(Failure),
    /// Its server left the pool meanwhile.
    Gone,
    /// The client is closing.
    Closed,
}

fn adopt_attempt(shared: &Shared, addr: &ServerAddr, mut est: Established) -> Adopted {
    let mut inner = shared.lock("reconnect");
    if inner.close.is_some() {
        return Adopted::Closed;
    }
    if inner.pool.position(addr).is_none() {
        return Adopted::Gone;
    }
    match adopt(shared, &mut inner, addr, &mut est) {
        None => Adopted::Up(est),
        Some(reason) => Adopted::Failed(Failure::new(addr, None, AttemptCause::LinkLost(reason))),
    }
}

/// A link to `addr` was adopted: the outage ends, `Connected` (the client's first link;
/// `attempts` is None) or `Reconnected` says so. Used by the reconnect loop and by the
/// first connect of the FailFast and Lazy policies.
///
/// A reconnect is complete only once the link's subscription replay and the frames
/// buffered before it are written (the core's `Replayed`, see [`on_replayed`]), so that a
/// subscription is live on the server when `Reconnected` is seen: until then the outage
/// goes on (its downtime, `disconnected_time`), and a link lost before that point counts
/// as no reconnect at all (the outage continues into the next attempt).
pub(crate) fn on_connected(
    shared: &Shared,
    inner: &mut Inner,
    addr: &ServerAddr,
    attempts: Option<u32>,
) {
    if let Some(attempts) = attempts {
        inner.reconnected = Some(PendingReconnect {
            server: addr.to_string(),
            attempts,
        });
    } else {
        shared.end_outage(inner);
        shared.emit(EventKind::Connected {
            server: addr.to_string(),
            collapsed: 0,
        });
    }
    shared.connected.notify_waiters();
}

/// A reconnect whose `Reconnected` waits for the link's replay to be written.
#[derive(Debug)]
pub(crate) struct PendingReconnect {
    server: String,
    attempts: u32,
}

/// The link's replay and the frames buffered before it are written: a pending reconnect
/// is complete. The outage ends, the reconnect counts, and `Reconnected` goes out.
pub(crate) fn on_replayed(shared: &Shared, inner: &mut Inner) {
    let Some(p) = inner.reconnected.take() else {
        return;
    };
    let downtime = shared.end_outage(inner);
    shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("tether_reconnects_total").increment(1);
    shared.emit(EventKind::Reconnected {
        server: p.server,
        attempts: p.attempts,
        downtime,
        collapsed: 0,
    });
}

/// The `attempt`-th attempt to `addr` failed: report it, and let the pool schedule the
/// server's next attempt (or remove it).
fn on_failed(shared: &Shared, addr: &ServerAddr, f: &Failure, attempt: u32, rng: &mut SmallRng) {
    shared.emit(f.event(attempt));
    let mut inner = shared.lock("reconnect");
    if inner.state == State::Connecting {
        // The Retry policy's first attempt failed: the client is down and trying, as
        // after a lost link (DESIGN: Connecting → Reconnecting).
        shared.set_state(&mut inner, State::Reconnecting);
    }
    let elapsed = inner.outage_since.map_or(Duration::ZERO, |o| o.elapsed());
    record_attempt_failure(shared, &mut inner, addr, f, elapsed, rng);
}

/// An attempt to `addr` failed (a reconnect's, or a planned switch's target): apply the
/// pool's policy (`elapsed` is how long the outage, or the switch, has lasted) and emit
/// what it decided.
pub(crate) fn record_attempt_failure(
    shared: &Shared,
    inner: &mut Inner,
    addr: &ServerAddr,
    f: &Failure,
    elapsed: Duration,
    rng: &mut SmallRng,
) {
    let policy = ReconnectPolicy::of(&shared.opts);
    let now = Instant::now();
    let Some(verdict) =
        inner
            .pool
            .record_attempt(addr, now, elapsed, f.auth_refusal(), &policy, rng)
    else {
        return;
    };
    if let Some(expired_for) = verdict.credentials_expired {
        shared.emit(EventKind::CredentialsExpired {
            server: addr.to_string(),
            expired_for,
        });
    }
    if let Some(r) = verdict.removed {
        shared.emit(EventKind::ServersChanged {
            added: Vec::new(),
            removed: vec![r.to_string()],
        });
    }
}

/// Logs buffered counts at WARN when the runtime cancels the driver mid-flight.
struct CancelGuard {
    shared: Arc<Shared>,
    done: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.done || std::thread::panicking() {
            // A panic is reported by the task that spawned the driver.
            return;
        }
        if let Some(inner) = self.shared.inner.try_lock() {
            let unsent = inner.conn.unsent();
            let unconfirmed = inner.conn.unconfirmed();
            if unsent.msgs == 0 && unconfirmed.msgs == 0 {
                tracing::debug!("connection driver cancelled with nothing buffered");
                return;
            }
            tracing::warn!(
                unsent_msgs = unsent.msgs,
                unsent_bytes = unsent.bytes,
                unconfirmed_msgs = unconfirmed.msgs,
                unconfirmed_bytes = unconfirmed.bytes,
                "connection driver cancelled (runtime shut down?) before close() or drain(); buffered data is lost"
            );
        }
    }
}
