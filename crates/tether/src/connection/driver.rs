//! The I/O driver: one task per client. It owns the socket, feeds the sans-IO core, writes
//! what the core queues, fires its timers, routes deliveries, and runs the reconnect loop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::future::Future;
use std::pin::Pin;
use tether_proto::conn::{
    Auth, ConnEvent, DisconnectReason, Handshake, HandshakeError, RemovedReason, RetiringLink,
    SubEndReason,
};
use tether_proto::outbound::Counts;
use tether_proto::server_err::ServerErr;
use tether_proto::time::saturating_add as later;
use tether_proto::ServerInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::transport;
use super::{CloseMode, Inner, Probe, Shared};
use crate::credentials::{self, JwtTimes, Loaded};
use crate::error::{AttemptError, FlushError, RequestError, SubscribeError};
use crate::events::MigrateReason as SwitchReason;
use crate::events::{ClosedReason, EventKind, State};
use crate::message::Message;
use crate::options::ConnectPolicy;
use crate::server_pool::{backoff_delay, AuthVerdict, ServerAddr};
use crate::subscription::Ended;

/// Read buffer size; grows for large messages.
const READ_BUF: usize = 64 * 1024;

fn tokio_instant(t: Instant) -> tokio::time::Instant {
    tokio::time::Instant::from_std(t)
}

/// A user JWT this close to its `exp` is treated as expired when the server refuses it:
/// the server's clock may run ahead of ours.
pub(crate) const JWT_CLOCK_SKEW: Duration = Duration::from_secs(5);

/// How often the credentials are read again after `CredentialsExpiring`, until a fresher
/// JWT appears (then the planned switch moves to it) or the link ends.
pub(crate) const CREDENTIALS_RECHECK: Duration = Duration::from_secs(1);

/// Read the credentials (a creds file, or a seed) on the blocking pool: a file read never
/// blocks a runtime worker, and never happens under the connection lock.
async fn load_keys(keys: credentials::KeySource) -> Result<Loaded, String> {
    tokio::task::spawn_blocking(move || credentials::load(&keys))
        .await
        .unwrap_or_else(|e| Err(format!("reading the credentials failed: {e}")))
}

/// Credentials for an attempt, read now (creds files are read again at every attempt):
/// the options first, then the URL's.
async fn auth_for(shared: &Shared, addr: &ServerAddr) -> Result<Loaded, String> {
    if let Some(keys) = &shared.opts.keys {
        return load_keys(keys.clone()).await;
    }
    let mut auth = Auth::default();
    if let Some((u, p)) = &shared.opts.user {
        auth.user = Some(u.clone());
        auth.pass = Some(p.clone());
    } else if let Some(t) = &shared.opts.token {
        auth.token = Some(t.clone());
    } else if let (Some(u), Some(p)) = (addr.user(), addr.pass()) {
        auth.user = Some(u.to_owned());
        auth.pass = Some(p.to_owned());
    } else if let Some(t) = addr.user() {
        auth.token = Some(t.to_owned());
    }
    // Static credentials never change.
    Ok(Loaded {
        auth,
        jwt: None,
        fingerprint: 0,
    })
}

/// Why an attempt failed, for the pool's auth rules.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) attempt: AttemptError,
    pub(crate) server_err: Option<ServerErr>,
    /// The credentials the attempt used (see [`Loaded::fingerprint`]); `None` when they
    /// could not be read.
    pub(crate) credentials: Option<u64>,
    /// The validity of the user JWT the attempt used, if it had one that expires.
    pub(crate) jwt: Option<JwtTimes>,
}

/// A link whose handshake completed, ready to be adopted by the session core.
pub(crate) struct Established {
    pub(crate) stream: TcpStream,
    pub(crate) info: Box<ServerInfo>,
    /// Bytes read after the handshake's last PONG.
    pub(crate) leftover: BytesMut,
    /// The user JWT's validity, when the link authenticated with one that expires.
    pub(crate) jwt: Option<JwtTimes>,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Dial `addr` and run the handshake, bounded by connection_timeout. The handshake runs
/// apart from the session core, so the session (and a live link, during a planned switch)
/// is untouched until the caller adopts the result.
pub(crate) async fn establish(shared: &Shared, addr: &ServerAddr) -> Result<Established, Failure> {
    let start = Instant::now();
    let deadline = later(start, shared.opts.connection_timeout);
    let loaded = auth_for(shared, addr).await.map_err(|error| Failure {
        attempt: AttemptError {
            server: addr.to_string(),
            address: None,
            error,
        },
        server_err: None,
        credentials: None,
        jwt: None,
    })?;
    let credentials = Some(loaded.fingerprint);
    let jwt = loaded.jwt;
    let fail = |address: Option<String>, error: String, server_err: Option<ServerErr>| Failure {
        attempt: AttemptError {
            server: addr.to_string(),
            address,
            error,
        },
        server_err,
        credentials,
        jwt,
    };
    let (mut stream, sock) = transport::dial(addr, tokio_instant(deadline))
        .await
        .map_err(|e| fail(e.address, e.error, None))?;
    let address = Some(sock.to_string());
    let mut hs = Handshake::new(start, deadline, loaded.auth, &shared.opts.core_config());
    let mut rbuf = BytesMut::with_capacity(4096);
    loop {
        while let Some(chunk) = hs.poll_transmit(Instant::now()) {
            match tokio::time::timeout_at(tokio_instant(deadline), stream.write_all(&chunk)).await {
                Ok(Ok(())) => hs.handle_written(Instant::now(), chunk.len()),
                Ok(Err(e)) => hs.handle_link_lost(Instant::now(), Some(e.to_string())),
                Err(_) => hs.handle_timeout(Instant::now()),
            }
        }
        match hs.poll_outcome() {
            Some(Ok(link)) => {
                return Ok(Established {
                    stream,
                    info: link.info,
                    leftover: link.leftover,
                    jwt: loaded.jwt,
                });
            }
            Some(Err(e)) => {
                let server_err = match &e {
                    HandshakeError::Server(t) => Some(t.clone()),
                    _ => None,
                };
                return Err(fail(address, e.to_string(), server_err));
            }
            None => {}
        }
        if rbuf.capacity() - rbuf.len() < 1024 {
            rbuf.reserve(4096);
        }
        tokio::select! {
            r = stream.read_buf(&mut rbuf) => match r {
                Ok(0) => hs.handle_link_lost(Instant::now(), None),
                Ok(_) => hs.handle_read(Instant::now(), &mut rbuf),
                Err(e) => hs.handle_link_lost(Instant::now(), Some(e.to_string())),
            },
            () = tokio::time::sleep_until(tokio_instant(deadline)) => {
                hs.handle_timeout(Instant::now());
            }
        }
    }
}

/// Hand an established link to `addr` to the session core and make it the current
/// server (pool success, name, discovered servers, state Connected unless draining).
/// Returns the reason when the leftover bytes already killed it.
pub(crate) fn adopt(
    shared: &Shared,
    inner: &mut Inner,
    addr: &ServerAddr,
    est: &mut Established,
) -> Option<String> {
    let now = Instant::now();
    inner.conn.adopt_link(
        now,
        tether_proto::conn::Established {
            info: est.info.clone(),
            leftover: std::mem::take(&mut est.leftover),
        },
    );
    inner.jwt = est.jwt;
    inner.expiring_reported = false;
    // A pending switch (a refresh, lame duck mode, a request) has moved, or the reconnect
    // made it moot; an INFO on this link may ask for a new one.
    inner.switch_request = None;
    inner.ldm_switch_at = None;
    inner.jwt_refresh_at = est.jwt.map(|t| {
        later(
            now,
            t.refresh_in(shared.opts.jwt_refresh_lead, std::time::SystemTime::now()),
        )
    });
    // The link's server is current before the events of the bytes that followed its
    // handshake are handled (an INFO with `ldm` among them concerns this server).
    let previous = inner.current.replace(addr.clone());
    let previous_name = std::mem::replace(&mut inner.server_name, addr.to_string());
    // The handshake completed: failures and a lame-duck mark end (before those bytes,
    // which may mark it again).
    if let Some(i) = inner.pool.position(addr) {
        inner.pool.record_success(i);
    }
    let mut down = None;
    let mut events = Vec::new();
    while let Some(ev) = inner.conn.poll_event() {
        events.push(ev);
    }
    for ev in events {
        if let Some(r) = handle_event(shared, inner, ev) {
            down = Some(r);
        }
    }
    if down.is_some() {
        inner.current = previous;
        inner.server_name = previous_name;
    } else {
        merge_pool(shared, inner, &est.info, addr);
        if matches!(
            inner.state,
            State::Idle | State::Connecting | State::Reconnecting
        ) {
            // Draining while reconnecting stays draining; a planned switch stays Connected.
            shared.set_state(inner, State::Connected);
        }
    }
    down
}

/// How a link ended.
enum LinkEnd {
    Closed,
    /// The link went down. `ready` is a planned switch's new link whose handshake had
    /// completed: the reconnect adopts it instead of dialling again (S7).
    Down {
        reason: String,
        ready: Option<Box<(ServerAddr, Established)>>,
    },
}

/// Start the driver task on the client's runtime. A panic inside it (a user callback
/// such as `reconnect_delay`, or a bug) is never silent: the client closes with
/// [`ClosedReason::DriverFailed`], every waiter fails at once, and the event stream ends
/// with `Closed`.
pub(crate) fn spawn(shared: Arc<Shared>, first: Option<TcpStream>) {
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
#[allow(clippy::too_many_lines)] // issue 12 step 4 splits it; remove then
async fn run(shared: Arc<Shared>, first: Option<TcpStream>) {
    let mut guard = CancelGuard {
        shared: shared.clone(),
        done: false,
    };
    let mut rng = SmallRng::from_entropy();
    let mut link = first;
    if link.is_none() {
        // Without a first link (Retry policy) the client is down from the start.
        shared.lock("driver start").outage_since = Some(Instant::now());
    }
    let mut attempts: u32 = 0;
    let mut ever_connected = link.is_some();
    let mut prepared: Option<(ServerAddr, Established)> = None;
    loop {
        if let Some(stream) = link.take() {
            match run_link(&shared, stream).await {
                LinkEnd::Closed => {
                    finish(&shared, ClosedReason::Requested);
                    guard.done = true;
                    return;
                }
                LinkEnd::Down { reason, ready } => {
                    prepared = ready.map(|b| *b);
                    if !shared.opts.allow_reconnect {
                        finish(&shared, ClosedReason::Disconnected(reason));
                        guard.done = true;
                        return;
                    }
                    let now = Instant::now();
                    attempts = 0;
                    let mut inner = shared.lock("reconnect");
                    inner.outage_since = Some(now);
                    if let Some(i) = inner.server_index() {
                        inner.pool.record_dropped(i, now);
                    }
                    if matches!(inner.state, State::Connected) {
                        shared.set_state(&mut inner, State::Reconnecting);
                    }
                }
            }
        }
        // A switch's new link, ready when the old one died, is adopted as it is.
        let picked = if let Some((addr, est)) = prepared.take() {
            attempts += 1;
            Some((addr, Some(est)))
        } else {
            pick_and_wait(&shared, &mut attempts).await
        };
        let Some((addr, est)) = picked else {
            if shared.lock("reconnect").state != State::Closed {
                finish(&shared, ClosedReason::Requested);
            }
            guard.done = true;
            return;
        };
        let established = match est {
            Some(est) => Ok(est),
            None => establish(&shared, &addr).await,
        };
        let result = match established {
            Ok(mut est) => {
                let mut inner = shared.lock("reconnect");
                if inner.close.is_some() {
                    drop(inner);
                    drop(est);
                    finish(&shared, ClosedReason::Requested);
                    guard.done = true;
                    return;
                }
                if inner.pool.position(&addr).is_none() {
                    // set_server_pool removed it while the handshake ran: pick again.
                    attempts -= 1;
                    continue;
                }
                match adopt(&shared, &mut inner, &addr, &mut est) {
                    None => Ok(est),
                    Some(reason) => Err(Failure {
                        attempt: AttemptError {
                            server: addr.to_string(),
                            address: None,
                            error: reason,
                        },
                        server_err: None,
                        credentials: None,
                        jwt: None,
                    }),
                }
            }
            Err(f) => Err(f),
        };
        match result {
            Ok(est) => {
                let mut inner = shared.lock("reconnect");
                let downtime = shared.end_outage(&mut inner);
                if ever_connected {
                    shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("tether_reconnects_total").increment(1);
                    shared.emit(EventKind::Reconnected {
                        server: addr.to_string(),
                        attempts,
                        downtime,
                        collapsed: 0,
                    });
                } else {
                    shared.emit(EventKind::Connected {
                        server: addr.to_string(),
                        collapsed: 0,
                    });
                }
                ever_connected = true;
                inner.lazy_connecting = false;
                drop(inner);
                shared.connected.notify_waiters();
                link = Some(est.stream);
            }
            Err(f) => {
                shared.emit(EventKind::ReconnectFailed {
                    server: f.attempt.server.clone(),
                    address: f.attempt.address.clone(),
                    attempt: attempts,
                    error: f.attempt.error.clone(),
                });
                let mut inner = shared.lock("reconnect");
                if shared.opts.connect_policy == ConnectPolicy::Lazy && !ever_connected {
                    // A failed lazy attempt returns to Idle (handled by the caller).
                    inner.lazy_connecting = false;
                }
                if inner.state == State::Connecting {
                    // The Retry policy's first attempt failed: the client is down and
                    // trying, as after a lost link (DESIGN: Connecting → Reconnecting).
                    shared.set_state(&mut inner, State::Reconnecting);
                }
                let elapsed = inner.outage_since.map_or(Duration::ZERO, |o| o.elapsed());
                record_attempt_failure(&shared, &mut inner, &addr, &f, elapsed, &mut rng);
                if !ever_connected && shared.opts.connect_policy == ConnectPolicy::Lazy {
                    drop(inner);
                    shared.connected.notify_waiters();
                }
            }
        }
    }
}

/// A reconnect attempt to `addr` failed: schedule its next attempt with the backoff (or
/// the user's reconnect_delay; `elapsed` is how long the outage, or the planned switch,
/// has lasted), apply the auth rules, and remove the server when they or max_reconnects
/// say so.
fn record_attempt_failure(
    shared: &Shared,
    inner: &mut Inner,
    addr: &ServerAddr,
    f: &Failure,
    elapsed: Duration,
    rng: &mut SmallRng,
) {
    let now = Instant::now();
    let Some(i) = inner.pool.position(addr) else {
        return;
    };
    let failures = inner.pool.get(i).map_or(0, |e| e.failures) + 1;
    let mut delay = match &shared.opts.reconnect_delay {
        Some(f) => f(&addr.to_string(), failures, elapsed),
        None => backoff_delay(failures, elapsed, shared.opts.reconnect_wait, rng),
    };
    let class = f.server_err.as_ref().and_then(ServerErr::auth_class);
    // Within JWT_CLOCK_SKEW of its exp counts as expired: the server's clock may be ahead.
    let jwt_expired = f
        .jwt
        .is_some_and(|t| t.expires_in(std::time::SystemTime::now()) <= JWT_CLOCK_SKEW);
    let verdict = inner.pool.record_auth(
        i,
        class,
        f.credentials,
        jwt_expired,
        now,
        shared.opts.reconnect_wait,
    );
    let mut remove = false;
    match verdict {
        AuthVerdict::Strike { strikes } => {
            remove = strikes >= 2
                && shared.opts.auth_failure_policy
                    == crate::options::AuthFailurePolicy::RemoveServer;
            // The next strike may count only reconnect_wait later: do not try before.
            delay = delay.max(shared.opts.reconnect_wait);
        }
        AuthVerdict::Expired => delay = Duration::ZERO,
        AuthVerdict::ExpiredRefused { first } => {
            if first {
                let expired_for = f.jwt.map_or(Duration::ZERO, |t| {
                    t.expired_for(std::time::SystemTime::now())
                });
                shared.emit(EventKind::CredentialsExpired {
                    server: addr.to_string(),
                    expired_for,
                });
            }
        }
        AuthVerdict::Transient | AuthVerdict::NotAuth => {}
    }
    let removed = if remove {
        inner.pool.remove(i)
    } else {
        inner.pool.record_failure(i, now, delay)
    };
    if let Some(r) = removed {
        shared.emit(EventKind::ServersChanged {
            added: Vec::new(),
            removed: vec![r.addr.to_string()],
        });
    }
}

/// Pick the server due earliest, emit `Reconnecting` for it and wait until it is due.
/// `None` when the client closes (or the pool is empty: then it is closed here).
async fn pick_and_wait(
    shared: &Shared,
    attempts: &mut u32,
) -> Option<(ServerAddr, Option<Established>)> {
    loop {
        let (due, addr) = {
            let mut inner = shared.lock("reconnect");
            if inner.close.is_some() {
                return None;
            }
            if std::mem::take(&mut inner.force_reconnect) {
                inner.pool.make_all_due(Instant::now());
            }
            let next = inner
                .pool
                .next(Instant::now())
                .and_then(|i| inner.pool.get(i).map(|e| (e.due, e.addr.clone())));
            let Some(next) = next else {
                drop(inner);
                finish(
                    shared,
                    ClosedReason::PoolExhausted(
                        "every server failed max_reconnects times or refused the credentials"
                            .into(),
                    ),
                );
                return None;
            };
            next
        };
        *attempts += 1;
        let delay = due.saturating_duration_since(Instant::now());
        shared.emit(EventKind::Reconnecting {
            attempt: *attempts,
            server: addr.to_string(),
            delay,
            collapsed: 0,
        });
        if delay.is_zero() || wait_until_due(shared, due).await {
            return Some((addr, None));
        }
        // Close or force_reconnect: pick again (this attempt was not made).
        *attempts -= 1;
    }
}

/// Sleep until `due`. Returns false early when close(), force_reconnect() or a new server
/// pool asks to pick again; other wake-ups (publishers, waiters) leave the schedule as it
/// is, so the next attempt keeps its number and its `Reconnecting` event is not repeated.
async fn wait_until_due(shared: &Shared, due: Instant) -> bool {
    let sleep = tokio::time::sleep_until(tokio_instant(due));
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            () = shared.wake.notified() => {
                let mut inner = shared.lock("reconnect wait");
                if inner.close.is_some()
                    || inner.force_reconnect
                    || std::mem::take(&mut inner.repick)
                {
                    return false;
                }
            }
        }
    }
}

/// Merge INFO `connect_urls` into the pool.
pub(crate) fn merge_pool(shared: &Shared, inner: &mut Inner, info: &ServerInfo, via: &ServerAddr) {
    // A lame-duck node listed again by a peer is back.
    inner.pool.note_announced(&info.connect_urls, via);
    if shared.opts.ignore_discovered_servers {
        return;
    }
    let mut rng = SmallRng::from_entropy();
    let (added, removed) = inner.pool.merge_discovered(
        &info.connect_urls,
        via,
        Instant::now(),
        &mut rng,
        !shared.opts.no_randomize,
    );
    if !added.is_empty() || !removed.is_empty() {
        shared.emit(EventKind::ServersChanged { added, removed });
    }
}

/// A link retired by a planned switch: it delivers for the overlap, then gets UNSUB and a
/// last PING, and closes once that PONG arrives (or pong_timeout passes).
struct OldLink {
    stream: Arc<TcpStream>,
    link: RetiringLink,
    rbuf: BytesMut,
    out: BytesMut,
    /// The bound on the overlap (ldm_overlap after the switch).
    retire_at: Instant,
    give_up_at: Instant,
    /// When the next probe goes out on this link (None: not probing).
    next_probe: Option<Instant>,
    /// When the next cut marker goes out on the new link (None: not cutting yet).
    next_marker: Option<Instant>,
    /// Requests written on this link: they fail if it dies before its last PONG.
    requests: Vec<u64>,
    from: String,
    to: String,
    failed: bool,
}

/// Close a retired link now (the current link went down, or the client closes): what
/// stayed unconfirmed on it is reported in `Migrated`, its flushes fail or re-arm.
fn retire_now(shared: &Shared, inner: &mut Inner, old: Option<OldLink>) {
    let Some(o) = old else {
        return;
    };
    end_probe(inner);
    let retired = o.link.is_retired();
    let unconfirmed = inner.conn.finish_retiring(o.link);
    if !retired && !shared.opts.request_retry_after_reconnect {
        // Written on a link that died unconfirmed: a responder may have acted on them,
        // and no reply can come back through it (B7).
        fail_written_requests(inner, o.requests);
    }
    report_migrated(shared, o.from, o.to, unconfirmed);
}

/// Fail these requests, whose frames were written on a link now lost: a responder may
/// have acted on them, and their replies cannot come back.
fn fail_written_requests(inner: &mut Inner, tokens: impl IntoIterator<Item = u64>) {
    for t in tokens {
        if let Some(r) = inner.requests.remove(&t) {
            let _ = r.tx.send(Err(RequestError::ConnectionLost {
                subject: r.subject,
                maybe_processed: true,
            }));
        }
    }
}

/// How often the old link publishes the probe while waiting for it on the new link (a
/// timer's resolution).
const PROBE_INTERVAL: Duration = Duration::from_millis(1);
/// A loop turn for another reason (a delivery, a PONG) sends the probe early, this long
/// after the last one: the sooner a probe reaches the old node after it learned the new
/// interest, the shorter the overlap, and every millisecond of it is a duplicate at
/// 1 msg/ms.
const PROBE_MIN_GAP: Duration = Duration::from_micros(200);

/// The next target of a pending planned switch and when it is due: another server not in
/// lame duck mode (for fresh credentials, the same server will do).
fn next_switch_target(
    inner: &Inner,
    reason: SwitchReason,
    now: Instant,
    skip: &[ServerAddr],
) -> Option<(ServerAddr, Instant)> {
    let current = inner.server_index();
    let target = inner
        .pool
        .next_other(current.unwrap_or(usize::MAX), now, skip)
        .or(current.filter(|_| reason == SwitchReason::Credentials))?;
    inner.pool.get(target).map(|e| (e.addr.clone(), e.due))
}

/// A switch's new link answered with the `server_id` of the node being left, or of a node
/// in lame duck mode: it reached such a node under another address. Returns why, and
/// whether it is the connected node; the switch goes on without that address.
fn same_node_as_left(
    inner: &mut Inner,
    addr: &ServerAddr,
    est: &Established,
    reason: SwitchReason,
) -> Option<(&'static str, bool)> {
    let now = Instant::now();
    let id = est.info.server_id.as_str();
    if id.is_empty() {
        return None;
    }
    if inner.pool.is_lame_duck_node(id, now) {
        if let Some(i) = inner.pool.position(addr) {
            inner.pool.mark_lame_duck(i, Some(id), now);
        }
        return Some(("this address reaches a server in lame duck mode", false));
    }
    let current_id = inner.conn.server_info().map(|i| i.server_id.as_str());
    if reason != SwitchReason::Credentials && current_id == Some(id) {
        return Some((
            "this address reaches the server the client is moving away from",
            true,
        ));
    }
    None
}

/// A refresh's switch that could not move yet tries again after reconnect_wait, while the
/// JWT is inside its refresh window.
fn rearm_refresh(shared: &Shared, inner: &mut Inner, reason: SwitchReason) {
    if reason != SwitchReason::Credentials {
        return;
    }
    let in_window = inner.jwt.is_some_and(|t| {
        t.refresh_in(shared.opts.jwt_refresh_lead, std::time::SystemTime::now())
            .is_zero()
    });
    if inner.jwt_refresh_at.is_none() && in_window {
        inner.jwt_refresh_at = Some(later(Instant::now(), shared.opts.reconnect_wait));
    }
}

/// Subscribe the probe on the new link (after the replayed subscriptions), followed by a
/// PING: its PONG says the new server registered them all, the moment the old node is
/// about to learn the interest, so a probe goes out then as well as every
/// [`PROBE_INTERVAL`].
fn start_probe(shared: &Shared, inner: &mut Inner, now: Instant) {
    let subject = format!(
        "{}.{}.probe",
        shared.opts.inbox_prefix,
        crate::client::nuid()
    );
    let Ok(sid) = inner.conn.subscribe(&subject, None) else {
        return;
    };
    let token = inner.token();
    let (tx, registered) = oneshot::channel();
    inner.flushes.insert(token, tx);
    inner.conn.flush(token);
    inner.probe = Some(Probe {
        sid,
        subject,
        started: now,
        arrived: None,
        confirmed: false,
        send_now: false,
        refused: false,
        marker: None,
        marker_seq: 0,
        registered: Some(registered),
    });
}

/// True once (and only once) the new server confirmed the probe's subscription.
fn probe_registered(inner: &mut Inner) -> bool {
    let Some(p) = inner.probe.as_mut() else {
        return false;
    };
    let Some(rx) = p.registered.as_mut() else {
        return false;
    };
    if let Err(oneshot::error::TryRecvError::Empty) = rx.try_recv() {
        return false;
    }
    p.registered = None;
    true
}

/// Publish one probe on the old link. Returns when the next one is due (None once the
/// probe is confirmed or was refused).
fn send_probe(inner: &Inner, now: Instant, out: &mut BytesMut) -> Option<Instant> {
    let p = inner.probe.as_ref()?;
    if p.confirmed || p.refused {
        return None;
    }
    let nanos = now.saturating_duration_since(p.started).as_nanos();
    tether_proto::encode::encode_pub(out, &p.subject, None, nanos.to_string().as_bytes());
    Some(later(now, PROBE_INTERVAL))
}

/// True when the old link's subscriptions may end: the first probe to arrive showed that
/// the old node knows the new interest, and a probe sent after that arrived too. That one
/// more trip is the margin for publishers on a third node, whose routes learn the interest
/// at about the same time as the old node; it costs no timer, and every millisecond of
/// overlap is a duplicate at 1 msg/ms.
fn probe_done(inner: &Inner) -> bool {
    inner.probe.as_ref().is_some_and(|p| p.confirmed)
}

/// A probe arrived on the new link. After the first one, the next probe goes out at once.
fn probe_arrived(p: &mut Probe, payload: &[u8]) {
    let now = Instant::now();
    let Some(first) = p.arrived else {
        p.arrived = Some(now);
        p.send_now = true;
        return;
    };
    // Trust a timestamp only if it could be ours: not later than now.
    let sent = std::str::from_utf8(payload)
        .ok()
        .and_then(|t| t.parse::<u64>().ok())
        .and_then(|ns| p.started.checked_add(Duration::from_nanos(ns)))
        .filter(|t| *t <= now);
    if sent.is_some_and(|t| t >= first) {
        p.confirmed = true;
    }
}

/// Start the switch's cut (see `Connection::gate_switch`): a marker subject subscribed on
/// both links; the new link's deliveries are held until a marker published on it comes
/// back through the old node, and the two streams are joined there without duplicates.
fn start_cut(shared: &Shared, inner: &mut Inner, link: &mut RetiringLink) {
    let Some(probe_sid) = inner.probe.as_ref().map(|p| p.sid) else {
        return;
    };
    let subject = format!("{}.{}.cut", shared.opts.inbox_prefix, crate::client::nuid());
    let Ok(sid) = inner.conn.subscribe(&subject, None) else {
        return;
    };
    inner.conn.gate_switch(link, &subject, sid, probe_sid);
    if let Some(p) = inner.probe.as_mut() {
        p.marker = Some((sid, subject));
    }
}

/// Unsubscribe the probe and the cut marker on the current link; deliveries still held
/// (the cut never came) are delivered.
fn end_probe(inner: &mut Inner) {
    inner.conn.release_gate(None);
    if let Some(p) = inner.probe.take() {
        inner.conn.unsubscribe(p.sid, None);
        if let Some((sid, _)) = p.marker {
            inner.conn.unsubscribe(sid, None);
        }
    }
}

/// `Migrated`, with the old link's unconfirmed counts also in the statistics.
fn report_migrated(shared: &Shared, from: String, to: String, unconfirmed: Counts) {
    shared.count_unconfirmed(unconfirmed);
    shared
        .counters
        .migrations
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    shared.emit(EventKind::Migrated {
        from,
        to,
        unconfirmed_msgs: unconfirmed.msgs,
        unconfirmed_bytes: unconfirmed.bytes,
    });
}

enum OldIo {
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
}

async fn old_io(old: &mut OldLink) -> OldIo {
    let OldLink {
        stream, rbuf, out, ..
    } = old;
    if rbuf.capacity() - rbuf.len() < 1024 {
        rbuf.reserve(READ_BUF);
    }
    tokio::select! {
        r = read_some(stream, rbuf) => OldIo::Read(r),
        w = write_some(stream, &out[..]), if !out.is_empty() => OldIo::Wrote(w),
    }
}

type RefreshFuture = Pin<Box<dyn Future<Output = Result<Loaded, String>> + Send>>;

type SwitchFuture =
    Pin<Box<dyn Future<Output = (ServerAddr, Result<Established, Failure>)> + Send>>;

/// Run one established link until it goes down or the client closes. Planned switches
/// (lame duck mode, force_reconnect, a new pool) happen here, make-before-break.
async fn run_link(shared: &Arc<Shared>, stream: TcpStream) -> LinkEnd {
    let mut stream = Arc::new(stream);
    shared.lock("driver").direct = Some(stream.clone());
    let end = run_link_inner(shared, &mut stream).await;
    shared.lock("driver").direct = None;
    if matches!(end, LinkEnd::Closed) {
        // Shut down the write side so the server sees a clean end of stream.
        if let Ok(mut s) = Arc::try_unwrap(stream) {
            let _ = s.shutdown().await;
        }
    }
    end
}

/// Read what the socket has (cancel-safe).
async fn read_some(stream: &TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read_buf(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            r => return r,
        }
    }
}

/// Write what the socket takes (cancel-safe).
async fn write_some(stream: &TcpStream, data: &[u8]) -> std::io::Result<usize> {
    loop {
        stream.writable().await?;
        match stream.try_write(data) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            r => return r,
        }
    }
}

/// Write pending frames from the caller's thread while the driver is idle, as nats.c does
/// for requests: the frame is on the wire without waiting for the driver task to run.
/// Whatever the socket does not take stays in flight for the driver, which the caller
/// then wakes as usual (it also re-arms the driver's timers).
pub(crate) fn try_direct_write(inner: &mut Inner) {
    if !inner.driver_waiting {
        return; // the driver is running and will write it
    }
    let Some(stream) = inner.direct.as_ref() else {
        return;
    };
    let now = Instant::now();
    if let Some(chunk) = inner.conn.poll_transmit(now) {
        if let Ok(n) = stream.try_write(&chunk) {
            inner.conn.handle_written(now, n);
        }
    }
}

#[allow(clippy::too_many_lines)] // issue 12 step 4 splits it; remove then
async fn run_link_inner(shared: &Arc<Shared>, stream: &mut Arc<TcpStream>) -> LinkEnd {
    let mut rbuf = BytesMut::with_capacity(READ_BUF);
    let mut chunk = Bytes::new();
    let mut pos = 0usize;
    let mut close_flush: Option<(oneshot::Receiver<Result<(), FlushError>>, Instant)> = None;
    let mut switching: Option<SwitchFuture> = None;
    // Why the switch under way (switching, ready or not yet adopted) was asked for, and
    // how many targets it tried.
    let mut switch_reason = SwitchReason::Requested;
    let mut switch_attempts: u32 = 0;
    let mut switch_started = Instant::now();
    // Addresses this switch reached and left again (the node being left, or one in lame
    // duck mode, under another address), and whether one was the connected node.
    let mut skip: Vec<ServerAddr> = Vec::new();
    let mut alias_of_current: Option<ServerAddr> = None;
    let mut rng = SmallRng::from_entropy();
    let mut ready: Option<(ServerAddr, Established)> = None;
    let mut old: Option<OldLink> = None;
    // The credentials being read again ahead of the JWT's expiry.
    let mut refresh: Option<RefreshFuture> = None;
    // One timer for the whole link, moved only when the deadline changes: creating a
    // Sleep per loop iteration costs a timer-wheel registration each time.
    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        let deadline;
        let mut shutdown = false;
        {
            let mut inner = shared.lock("driver");
            let now = Instant::now();
            if let Some(at) = inner.ldm_switch_at {
                if now >= at {
                    inner.ldm_switch_at = None;
                    inner.switch_request = Some(SwitchReason::LameDuck);
                }
            }
            let idle_link = switching.is_none() && ready.is_none() && old.is_none();
            if idle_link && refresh.is_none() && inner.jwt_refresh_at.is_some_and(|at| now >= at) {
                inner.jwt_refresh_at = None;
                if let Some(keys) = shared.opts.keys.clone() {
                    refresh = Some(Box::pin(load_keys(keys)));
                }
            }
            // A switch waiting for its next target to be due.
            let mut switch_due = None;
            if inner.close.is_none() && idle_link {
                if inner.switch_request.is_none() {
                    skip.clear();
                    alias_of_current = None;
                    switch_attempts = 0;
                }
                if let Some(reason) = inner.switch_request {
                    match next_switch_target(&inner, reason, now, &skip) {
                        Some((_, due)) if due > now => switch_due = Some(due),
                        Some((addr, _)) => {
                            if reason == SwitchReason::Credentials {
                                // One attempt; a failed one is re-armed by the refresh.
                                inner.switch_request = None;
                            }
                            if switch_attempts == 0 {
                                switch_started = now;
                            }
                            switch_reason = reason;
                            switch_attempts += 1;
                            let sh = shared.clone();
                            switching = Some(Box::pin(async move {
                                let r = establish(&sh, &addr).await;
                                (addr, r)
                            }));
                        }
                        // No other server: a requested move reconnects; lame duck mode
                        // stays on the old link until the pool offers another server (a
                        // node back from its restart) or the server closes the link.
                        None => {
                            if reason != SwitchReason::LameDuck {
                                inner.switch_request = None;
                            }
                            match (reason, alias_of_current.take()) {
                                // The new pool names the connected node under another
                                // address: it is the current server already.
                                (SwitchReason::ServerPool, Some(alias)) => {
                                    inner.server_name = alias.to_string();
                                    inner.current = Some(alias);
                                }
                                (SwitchReason::Requested | SwitchReason::ServerPool, _) => {
                                    inner.conn.close_link(now, DisconnectReason::Requested);
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            // Switch publishing at a frame boundary: no data chunk half written.
            if ready.is_some() && pos >= chunk.len() && inner.conn.can_retire_link() {
                let (addr, mut est) = ready.take().expect("checked");
                let Some(link) = inner.conn.retire_link() else {
                    unreachable!("can_retire_link was checked")
                };
                // Requests written on the old link: they fail if it dies before confirming.
                let pending: std::collections::HashSet<u64> =
                    inner.conn.pending_requests().collect();
                let requests: Vec<u64> = inner
                    .requests
                    .keys()
                    .copied()
                    .filter(|t| !pending.contains(t))
                    .collect();
                let from = inner.server_name.clone();
                shared.emit(EventKind::Migrating {
                    from: from.clone(),
                    to: addr.to_string(),
                    reason: switch_reason,
                });
                switch_attempts = 0;
                skip.clear();
                alias_of_current = None;
                if let Some(reason) = adopt(shared, &mut inner, &addr, &mut est) {
                    // The new link died at once; the old one is already retiring: report
                    // what stayed unconfirmed on it.
                    let unconfirmed = inner.conn.finish_retiring(link);
                    report_migrated(shared, from, addr.to_string(), unconfirmed);
                    return LinkEnd::Down {
                        reason,
                        ready: None,
                    };
                }
                if inner.server_index().is_none() {
                    // set_server_pool dropped this server while the switch ran.
                    inner.switch_request = Some(SwitchReason::ServerPool);
                }
                let mut link = link;
                start_probe(shared, &mut inner, now);
                start_cut(shared, &mut inner, &mut link);
                let fresh = Arc::new(est.stream);
                inner.direct = Some(fresh.clone());
                let bound = later(now, shared.opts.ldm_overlap);
                old = Some(OldLink {
                    stream: std::mem::replace(stream, fresh),
                    link,
                    rbuf: std::mem::replace(&mut rbuf, BytesMut::with_capacity(READ_BUF)),
                    out: BytesMut::new(),
                    retire_at: bound,
                    give_up_at: later(bound, shared.opts.effective_pong_timeout()),
                    next_probe: inner.probe.is_some().then_some(now),
                    next_marker: None,
                    requests,
                    from,
                    to: addr.to_string(),
                    failed: false,
                });
                chunk = Bytes::new();
                pos = 0;
            }
            if let Some(o) = &mut old {
                if !o.link.overlap_ended() {
                    let registered = probe_registered(&mut inner);
                    if registered {
                        // The bound counts from when the new server holds the
                        // subscriptions: a long replay does not eat into it.
                        o.retire_at = o.retire_at.max(later(now, shared.opts.ldm_overlap));
                        o.give_up_at = o
                            .give_up_at
                            .max(later(o.retire_at, shared.opts.effective_pong_timeout()));
                    }
                    let done = probe_done(&inner);
                    let cutting = inner.probe.as_ref().is_some_and(|p| p.marker.is_some());
                    // The streams are joined when the cut marker reached the old link (or,
                    // without a cut, once the probe is done).
                    let joined = o.link.is_cut() || (done && !cutting);
                    if joined || now >= o.retire_at {
                        if !joined {
                            tracing::warn!(
                                from = %o.from,
                                to = %o.to,
                                overlap_ms = shared.opts.ldm_overlap.as_millis() as u64,
                                "planned switch: the probe or the cut marker did not come \
                                 back within ldm_overlap; ending the old link's \
                                 subscriptions anyway (servers not in one cluster, or the \
                                 probe subject not permitted); duplicates are possible"
                            );
                        }
                        // The cluster knows the new interest and the streams are cut (or
                        // the bound passed): end the old link's subscriptions.
                        inner.conn.end_overlap(now, &mut o.link);
                        end_probe(&mut inner);
                        o.next_probe = None;
                        o.next_marker = None;
                        o.give_up_at = later(now, shared.opts.effective_pong_timeout());
                    } else if done {
                        // The old node knows the new interest: cut markers on the new link
                        // until one comes back through the old node.
                        if o.next_marker
                            .is_none_or(|at| later(now, PROBE_INTERVAL) >= later(at, PROBE_MIN_GAP))
                        {
                            if let Some(p) = inner.probe.as_mut().filter(|p| !p.refused) {
                                p.marker_seq += 1;
                                let seq = p.marker_seq;
                                if let Some((_, subject)) = p.marker.clone() {
                                    inner.conn.publish_marker(&subject, seq);
                                }
                            }
                            o.next_marker = Some(later(now, PROBE_INTERVAL));
                        }
                    } else if o
                        .next_probe
                        .is_some_and(|at| later(now, PROBE_INTERVAL) >= later(at, PROBE_MIN_GAP))
                        | registered
                        | inner
                            .probe
                            .as_mut()
                            .is_some_and(|p| std::mem::take(&mut p.send_now))
                    {
                        o.next_probe = send_probe(&inner, now, &mut o.out);
                    }
                }
                if let Some(b) = o.link.poll_transmit() {
                    o.out.extend_from_slice(&b);
                }
                if o.link.is_done() || o.failed || now >= o.give_up_at {
                    retire_now(shared, &mut inner, old.take());
                }
            }
            if !inner.conn.may_write() {
                // A closing -ERR: stop writing, even mid-chunk; the core rewinds what this
                // chunk held and resends it on the next link (a poison frame excepted).
                chunk = Bytes::new();
                pos = 0;
            } else if pos >= chunk.len() {
                // A caller's direct write may have left part of a chunk in flight.
                chunk = inner
                    .conn
                    .in_flight_rest()
                    .or_else(|| inner.conn.poll_transmit(now))
                    .unwrap_or_default();
                pos = 0;
            }
            if let Some(reason) = dispatch(shared, &mut inner) {
                // The reconnect replaces any switch still waiting (its jitter, a target).
                inner.ldm_switch_at = None;
                inner.switch_request = None;
                retire_now(shared, &mut inner, old.take());
                return LinkEnd::Down {
                    reason,
                    ready: ready.take().map(Box::new),
                };
            }
            if inner.close.is_some() {
                match &mut close_flush {
                    None if inner.conn.is_up() && inner.close == Some(CloseMode::Graceful) => {
                        let token = inner.token();
                        let (tx, rx) = oneshot::channel();
                        inner.flushes.insert(token, tx);
                        inner.conn.flush(token);
                        close_flush = Some((rx, later(now, shared.opts.flush_timeout)));
                        continue;
                    }
                    None => {
                        retire_now(shared, &mut inner, old.take());
                        return LinkEnd::Closed;
                    }
                    Some((rx, until)) => {
                        let done =
                            !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty));
                        shutdown = done || now >= *until;
                    }
                }
            }
            inner.driver_waiting = pos >= chunk.len();
            deadline = [
                inner.conn.poll_timeout(),
                close_flush.as_ref().map(|(_, until)| *until),
                inner.ldm_switch_at,
                // Checked only between switches (the end of one wakes the loop anyway).
                inner.jwt_refresh_at.filter(|_| idle_link),
                old.as_ref().map(|o| {
                    if o.link.overlap_ended() {
                        o.give_up_at
                    } else {
                        [Some(o.retire_at), o.next_probe, o.next_marker]
                            .into_iter()
                            .flatten()
                            .min()
                            .unwrap_or(o.retire_at)
                    }
                }),
                switch_due,
            ]
            .into_iter()
            .flatten()
            .min();
        }
        if shutdown {
            retire_now(shared, &mut shared.lock("driver"), old.take());
            return LinkEnd::Closed;
        }
        if rbuf.capacity() - rbuf.len() < READ_BUF / 4 {
            rbuf.reserve(READ_BUF);
        }
        if let Some(d) = deadline {
            if armed != Some(d) {
                timer.as_mut().reset(tokio_instant(d));
                armed = Some(d);
            }
        }
        // Unbiased: tokio picks a ready branch at random, so a receive backlog that keeps
        // the read branch ready can never starve the writer (PONGs, publishes, flush
        // PINGs) or the timers (S1 of the review).
        tokio::select! {
            r = read_some(stream, &mut rbuf) => {
                let mut inner = shared.lock("driver read");
                match r {
                    Ok(0) => inner.conn.handle_link_lost(Instant::now(), None),
                    Ok(_) => {
                        inner.conn.handle_read(Instant::now(), &mut rbuf);
                        // Hand deliveries and replies over now, not a loop turn later.
                        route_messages(&mut inner);
                    }
                    Err(e) => inner.conn.handle_link_lost(Instant::now(), Some(e.to_string())),
                }
            }
            w = write_some(stream, &chunk[pos..]), if pos < chunk.len() => {
                let mut inner = shared.lock("driver write");
                match w {
                    Ok(0) => inner.conn.handle_link_lost(Instant::now(), Some("write returned 0".into())),
                    Ok(n) => {
                        pos += n;
                        inner.conn.handle_written(Instant::now(), n);
                    }
                    Err(e) => inner.conn.handle_link_lost(Instant::now(), Some(e.to_string())),
                }
            }
            io = async { old_io(old.as_mut().expect("guarded")).await }, if old.is_some() => {
                let o = old.as_mut().expect("guarded");
                match io {
                    OldIo::Read(Ok(n)) if n > 0 => {
                        shared.lock("driver old read").conn.handle_retiring_read(Instant::now(), &mut o.link, &mut o.rbuf);
                    }
                    OldIo::Wrote(Ok(n)) if n > 0 => {
                        let _ = o.out.split_to(n);
                    }
                    _ => o.failed = true,
                }
            }
            (addr, result) = async { switching.as_mut().expect("guarded").await }, if switching.is_some() => {
                switching = None;
                let mut inner = shared.lock("switch");
                match result {
                    Ok(est) => {
                        if let Some((why, current)) = same_node_as_left(&mut inner, &addr, &est, switch_reason) {
                            skip.push(addr.clone());
                            if current {
                                alias_of_current = Some(addr.clone());
                            }
                            // Dropping `est` closes that link; the next target is tried.
                            tracing::info!(server = %addr, reason = why, "planned switch reached the node it is leaving; trying the next server");
                            shared.emit(EventKind::ReconnectFailed {
                                server: addr.to_string(),
                                address: None,
                                attempt: switch_attempts,
                                error: why.to_owned(),
                            });
                            rearm_refresh(shared, &mut inner, switch_reason);
                        } else {
                            ready = Some((addr, est));
                        }
                    }
                    Err(f) => {
                        shared.emit(EventKind::ReconnectFailed {
                            server: f.attempt.server.clone(),
                            address: f.attempt.address.clone(),
                            attempt: switch_attempts,
                            error: f.attempt.error.clone(),
                        });
                        // The connected server (a refresh's target) is never failed out of
                        // the pool by a second link's attempt. Others get the pool's
                        // backoff and auth rules, and the switch goes on with the next.
                        if inner.current.as_ref() != Some(&addr) {
                            let elapsed = switch_started.elapsed();
                            record_attempt_failure(shared, &mut inner, &addr, &f, elapsed, &mut rng);
                        }
                        rearm_refresh(shared, &mut inner, switch_reason);
                    }
                }
            }
            fresh = async { refresh.as_mut().expect("guarded").await }, if refresh.is_some() => {
                refresh = None;
                check_fresh_credentials(shared, &mut shared.lock("credentials"), fresh);
            }
            // Always armed, even mid-chunk: close(), force_reconnect() and a dropped last
            // handle must be seen while a write is blocked on a full socket.
            () = shared.wake.notified() => {}
            () = &mut timer, if deadline.is_some() => {
                armed = None;
                shared.lock("driver timer").conn.handle_timeout(Instant::now());
            }
        }
    }
}

/// The user JWT is within its refresh lead and the credentials were read again: move to a
/// new link with them if they expire later (semantics 13); else say so (once per link),
/// and read them again every [`CREDENTIALS_RECHECK`] until a fresher JWT appears or the
/// server ends the link (the reconnect then reads them again at once).
fn check_fresh_credentials(shared: &Shared, inner: &mut Inner, fresh: Result<Loaded, String>) {
    let Some(current) = inner.jwt else {
        return;
    };
    let now = std::time::SystemTime::now();
    let fresher = match &fresh {
        // A JWT without expiry outlives any that has one.
        Ok(l) => l.jwt.is_none_or(|t| t.expires_at > current.expires_at),
        Err(_) => false,
    };
    if fresher {
        if inner.switch_request.is_some() {
            // A switch already pending reads the credentials again anyway.
            return;
        }
        tracing::info!(
            server = %inner.server_name,
            expires_in_s = current.expires_in(now).as_secs(),
            "user JWT close to expiry; moving to a new link with fresher credentials"
        );
        inner.switch_request = Some(SwitchReason::Credentials);
        return;
    }
    inner.jwt_refresh_at = Some(later(Instant::now(), CREDENTIALS_RECHECK));
    if std::mem::replace(&mut inner.expiring_reported, true) {
        return;
    }
    let reason = match fresh {
        Err(e) => e,
        Ok(_) => "the credentials read again expire no later than the ones in use; \
                  provide a fresher JWT before it expires, or the server will end the link"
            .to_owned(),
    };
    shared.emit(EventKind::CredentialsExpiring {
        server: inner.server_name.clone(),
        expires_in: current.expires_in(now),
        reason,
    });
}

/// Route deliveries and handle the core's events. Returns the reason when the link went down.
fn dispatch(shared: &Shared, inner: &mut Inner) -> Option<String> {
    route_messages(inner);
    let mut down = None;
    while let Some(ev) = inner.conn.poll_event() {
        if let Some(reason) = handle_event(shared, inner, ev) {
            down = Some(reason);
        }
    }
    down
}

/// Hand deliveries to their subscriptions and replies to their requests.
fn route_messages(inner: &mut Inner) {
    while let Some(msg) = inner.conn.poll_message() {
        if let Some(p) = inner.probe.as_mut() {
            if p.sid == msg.sid {
                probe_arrived(p, &msg.payload);
                continue;
            }
            let marker = p.marker.as_ref();
            if marker.is_some_and(|(sid, _)| *sid == msg.sid) {
                continue;
            }
            if msg.subject.as_str() == p.subject
                || marker.is_some_and(|(_, subject)| msg.subject.as_str() == subject)
            {
                // A probe or marker reaching a user's wildcard subscription is not theirs.
                continue;
            }
        }
        if let Some(mux) = &inner.mux {
            if msg.sid == mux.sid {
                let token = msg
                    .subject
                    .as_str()
                    .strip_prefix(mux.prefix.as_str())
                    .and_then(|t| t.parse::<u64>().ok());
                if let Some(req) = token.and_then(|t| inner.requests.remove(&t)) {
                    let message = Message::from(msg);
                    let result = if message.is_no_responders() {
                        Err(RequestError::NoResponders {
                            subject: req.subject,
                        })
                    } else {
                        Ok(message)
                    };
                    let _ = req.tx.send(result);
                }
                continue;
            }
        }
        if let Some(q) = inner.subs.get(&msg.sid) {
            q.push(Message::from(msg));
        }
    }
}

#[allow(clippy::too_many_lines)] // issue 12 step 4 splits it; remove then
fn handle_event(shared: &Shared, inner: &mut Inner, ev: ConnEvent) -> Option<String> {
    match ev {
        ConnEvent::Disconnected {
            reason,
            unconfirmed,
            buffered_requests,
        } => {
            let text = reason.to_string();
            shared.count_unconfirmed(unconfirmed);
            metrics::counter!("tether_disconnects_total").increment(1);
            // Requests whose frames were written may have been processed: fail them now.
            if !shared.opts.request_retry_after_reconnect {
                let written: Vec<u64> = inner
                    .requests
                    .keys()
                    .copied()
                    .filter(|t| !buffered_requests.contains(t))
                    .collect();
                fail_written_requests(inner, written);
            }
            // Publishers waiting for room re-check now: under the Error policy a
            // disconnected buffer refuses at once instead of at block_deadline.
            shared.space.notify_waiters();
            // The state changes with the event, in one lock section: a stream taken in
            // between never starts with a Connected that is already over.
            if shared.opts.allow_reconnect && inner.state == State::Connected {
                shared.set_state(inner, State::Reconnecting);
            }
            shared.emit(EventKind::Disconnected {
                server: inner.server_name.clone(),
                reason: text.clone(),
                unconfirmed_msgs: unconfirmed.msgs,
                unconfirmed_bytes: unconfirmed.bytes,
            });
            Some(text)
        }
        ConnEvent::Connected { .. } => None,
        ConnEvent::InfoUpdated(info) => {
            if let Some(addr) = inner.current.clone() {
                merge_pool(shared, inner, &info, &addr);
            }
            None
        }
        ConnEvent::LameDuck => {
            shared.emit(EventKind::LameDuck {
                server: inner.server_name.clone(),
            });
            // Confirm what was written so far at once, then move after a random jitter so a
            // fleet does not move at the same moment. With no other server to go to yet,
            // the switch waits for one (a node back from its restart) until the server
            // closes the link.
            let token = inner.token();
            inner.conn.flush(token);
            let now = Instant::now();
            if let Some(i) = inner.server_index() {
                let id = inner.conn.server_info().map(|i| i.server_id.clone());
                inner.pool.mark_lame_duck(i, id.as_deref(), now);
            }
            let wait =
                crate::server_pool::uniform_below(shared.opts.ldm_jitter, &mut rand::thread_rng());
            inner.ldm_switch_at = Some(later(now, wait));
            None
        }
        ConnEvent::FlushDone(token) => {
            if let Some(tx) = inner.flushes.remove(&token) {
                let _ = tx.send(Ok(()));
            }
            None
        }
        ConnEvent::FlushFailed { token, unconfirmed } => {
            if let Some(tx) = inner.flushes.remove(&token) {
                let _ = tx.send(Err(FlushError::ConnectionLost {
                    unconfirmed_msgs: unconfirmed.msgs,
                    unconfirmed_bytes: unconfirmed.bytes,
                }));
            }
            None
        }
        ConnEvent::ServerError(message) => {
            if let Some(p) = inner.probe.as_mut().filter(|p| {
                message.contains(p.subject.as_str())
                    || p.marker
                        .as_ref()
                        .is_some_and(|(_, m)| message.contains(m.as_str()))
            }) {
                // No permission for the probe subject: the overlap runs to its bound.
                tracing::debug!(subject = %p.subject, error = %message, "planned switch probe refused");
                p.refused = true;
                return None;
            }
            shared.emit(EventKind::ServerError { message });
            None
        }
        ConnEvent::PublishDenied {
            subject,
            reply,
            message,
        } => {
            let matched = inner
                .requests
                .iter()
                .filter(|(t, r)| {
                    subject.as_deref() == Some(r.subject.as_str())
                        || reply.as_deref().is_some_and(|rp| {
                            inner
                                .mux
                                .as_ref()
                                .is_some_and(|m| rp == format!("{}{t}", m.prefix))
                        })
                })
                .map(|(t, _)| *t)
                .min();
            if let Some(r) = matched.and_then(|t| inner.requests.remove(&t)) {
                let _ = r.tx.send(Err(RequestError::PermissionDenied(message)));
            } else {
                inner.conn.note_publish_denied();
                shared.emit(EventKind::ServerError { message });
            }
            None
        }
        ConnEvent::SubscriptionEnded { sid, reason } => {
            if let Some(p) = inner
                .probe
                .as_mut()
                .filter(|p| p.sid == sid || p.marker.as_ref().is_some_and(|(m, _)| *m == sid))
            {
                tracing::debug!(subject = %p.subject, reason = ?reason, "planned switch probe subscription ended");
                p.refused = true;
                return None;
            }
            if inner.mux.as_ref().is_some_and(|m| m.sid == sid) {
                // The request inbox itself was refused (permissions on `_INBOX.>`, say):
                // fail what waits on it; the next request subscribes a new inbox.
                inner.mux = None;
                let why: String = match &reason {
                    SubEndReason::PermissionDenied(t)
                    | SubEndReason::MaxSubscriptionsExceeded(t) => t.clone(),
                    SubEndReason::MaxReached => "the request inbox subscription ended".to_owned(),
                };
                // No reply can reach those inboxes. Frames still pending are removed,
                // never sent; one written or in flight may have been acted on (S4).
                inner.inbox_refused = Some(why.clone());
                let pending: Vec<u64> = inner.conn.pending_requests().collect();
                inner.conn.remove_requests(|t| pending.contains(&t));
                for (token, r) in inner.requests.drain() {
                    let _ = r.tx.send(Err(RequestError::InboxDenied {
                        subject: r.subject,
                        message: why.clone(),
                        maybe_processed: !pending.contains(&token),
                    }));
                }
                return None;
            }
            if let Some(q) = inner.subs.remove(&sid) {
                q.end(match reason {
                    SubEndReason::MaxReached => Ended::Done,
                    SubEndReason::PermissionDenied(t) => {
                        Ended::Error(SubscribeError::PermissionDenied(t))
                    }
                    SubEndReason::MaxSubscriptionsExceeded(t) => {
                        Ended::Error(SubscribeError::MaxSubscriptionsExceeded(t))
                    }
                });
            }
            None
        }
        ConnEvent::FramesRemoved { reason, counts } => {
            let reason = match reason {
                RemovedReason::MaxPayloadLowered { max_payload } => {
                    format!("the server lowered max_payload to {max_payload}")
                }
                RemovedReason::PoisonFrame => {
                    "the server closed the connection over frames we sent (poison frame); they are not resent".to_owned()
                }
            };
            shared.emit(EventKind::FramesRemoved {
                reason,
                msgs: counts.msgs,
                bytes: counts.bytes,
            });
            None
        }
        ConnEvent::BufferSpace => {
            shared.space.notify_waiters();
            report_overflow_if_due(shared, inner);
            let c = inner.conn.buffered();
            rearm_high_water(inner, c);
            None
        }
    }
}

/// At most one BufferOverflow event per this interval; the counts in between accumulate
/// into the next one (and into Closed), so none is lost.
pub(crate) const OVERFLOW_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Report refused publishes if the last report is at least [`OVERFLOW_REPORT_INTERVAL`] old.
pub(crate) fn report_overflow_if_due(shared: &Shared, inner: &mut Inner) {
    let due = inner
        .overflow_reported_at
        .is_none_or(|t| t.elapsed() >= OVERFLOW_REPORT_INTERVAL);
    if due {
        report_overflow(shared, inner);
    }
}

/// Emit one BufferOverflow summarizing publishes refused since the last one.
pub(crate) fn report_overflow(shared: &Shared, inner: &mut Inner) {
    let (m, b) = std::mem::take(&mut inner.refused);
    if m > 0 {
        inner.overflow_reported_at = Some(Instant::now());
        shared.emit(EventKind::BufferOverflow {
            refused_msgs: m,
            refused_bytes: b,
        });
    }
}

fn rearm_high_water(inner: &mut Inner, c: Counts) {
    let limits = inner.conn.config().buffer;
    let pct = percent(c, limits);
    if pct < 25 {
        inner.high_water = 0;
    }
}

pub(crate) fn percent(c: Counts, limits: tether_proto::outbound::BufferLimits) -> u8 {
    let b = c.bytes.saturating_mul(100) / (limits.max_bytes as u64).max(1);
    let m = c.msgs.saturating_mul(100) / (limits.max_msgs as u64).max(1);
    b.max(m).min(100) as u8
}

/// Close for good: report what was unsent and unconfirmed, fail waiters, end streams.
pub(crate) fn finish(shared: &Shared, reason: ClosedReason) {
    let mut inner = shared.lock("close");
    if inner.state == State::Closed {
        return;
    }
    let reason = inner.close_as.take().unwrap_or(reason);
    // A driver that failed left its socket here: close it now, not when the client drops.
    inner.direct = None;
    let unconfirmed = inner.conn.unconfirmed();
    shared.end_outage(&mut inner);
    inner
        .conn
        .close_link(Instant::now(), DisconnectReason::Requested);
    while inner.conn.poll_event().is_some() {}
    let unsent = inner.conn.clear_buffer();
    report_overflow(shared, &mut inner);
    for (_, r) in inner.requests.drain() {
        let _ = r.tx.send(Err(RequestError::Closed));
    }
    for (_, tx) in inner.flushes.drain() {
        let _ = tx.send(Err(FlushError::Closed));
    }
    for (_, q) in inner.subs.drain() {
        q.end(Ended::Done);
    }
    inner.closed_reason = Some(reason.clone());
    inner.closed_report = crate::client::CloseReport {
        unsent_msgs: unsent.msgs,
        unsent_bytes: unsent.bytes,
        unconfirmed_msgs: unconfirmed.msgs,
        unconfirmed_bytes: unconfirmed.bytes,
    };
    shared.set_state(&mut inner, State::Closed);
    drop(inner);
    shared.emit(EventKind::Closed {
        reason: reason.to_string(),
        unsent_msgs: unsent.msgs,
        unsent_bytes: unsent.bytes,
        unconfirmed_msgs: unconfirmed.msgs,
        unconfirmed_bytes: unconfirmed.bytes,
    });
    shared.events.close();
    shared.space.notify_waiters();
    shared.connected.notify_waiters();
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
