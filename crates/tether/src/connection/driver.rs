//! The I/O driver: one task per client. It owns the socket, feeds the sans-IO core, writes
//! what the core queues, fires its timers, routes deliveries, and runs the reconnect loop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tether_proto::conn::{
    classify_auth_err, Auth, ConnEvent, Connection, HandshakeError, RemovedReason, SubEndReason,
};
use tether_proto::outbound::Counts;
use tether_proto::time::saturating_add as later;
use tether_proto::ServerInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::net::TcpStream;

use super::switch::probe_arrived;
use super::transport;
use super::{Inner, Shared};
use crate::credentials::{self, JwtTimes, Loaded};
use crate::error::{AttemptError, FlushError, RequestError, SubscribeError};
use crate::events::{ClosedReason, EventKind, State};
use crate::message::Message;
use crate::options::ConnectPolicy;
use crate::server_pool::{backoff_delay, AuthVerdict, ServerAddr};
use crate::subscription::Ended;

/// Read buffer size; grows for large messages.
pub(super) const READ_BUF: usize = 64 * 1024;

pub(super) fn tokio_instant(t: Instant) -> tokio::time::Instant {
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
pub(super) async fn load_keys(keys: credentials::KeySource) -> Result<Loaded, String> {
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
    pub(crate) server_err: Option<String>,
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

/// Dial `addr` and run the handshake, bounded by connection_timeout. The handshake runs on
/// a core of its own, so the session (and a live link, during a planned switch) is
/// untouched until the caller adopts the result.
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
    let fail = |address: Option<String>, error: String, server_err: Option<String>| Failure {
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
    let mut core = Connection::new(shared.opts.core_config(), start);
    core.set_pause_after_handshake(true);
    core.handle_transport_connected(Instant::now(), deadline, loaded.auth);
    let mut rbuf = BytesMut::with_capacity(4096);
    loop {
        if let Some(chunk) = core.poll_transmit(Instant::now()) {
            match tokio::time::timeout_at(tokio_instant(deadline), stream.write_all(&chunk)).await {
                Ok(Ok(())) => core.handle_written(Instant::now(), chunk.len()),
                Ok(Err(e)) => core.handle_link_lost(Instant::now(), Some(e.to_string())),
                Err(_) => core.handle_timeout(Instant::now()),
            }
        }
        while let Some(ev) = core.poll_event() {
            match ev {
                ConnEvent::Connected { info } => {
                    return Ok(Established {
                        stream,
                        info,
                        leftover: rbuf,
                        jwt: loaded.jwt,
                    });
                }
                ConnEvent::HandshakeFailed(e) => {
                    let server_err = match &e {
                        HandshakeError::Server(t) => Some(t.clone()),
                        _ => None,
                    };
                    return Err(fail(address, e.to_string(), server_err));
                }
                _ => {}
            }
        }
        if core.has_transmit() {
            continue;
        }
        if rbuf.capacity() - rbuf.len() < 1024 {
            rbuf.reserve(4096);
        }
        tokio::select! {
            r = stream.read_buf(&mut rbuf) => match r {
                Ok(0) => core.handle_link_lost(Instant::now(), None),
                Ok(_) => core.handle_read(Instant::now(), &mut rbuf),
                Err(e) => core.handle_link_lost(Instant::now(), Some(e.to_string())),
            },
            () = tokio::time::sleep_until(tokio_instant(deadline)) => {
                core.handle_timeout(Instant::now());
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
    inner.conn.adopt_link(now, est.info.clone());
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
    // The link's server is current before the bytes that followed its handshake are
    // handled (an INFO with `ldm` among them concerns this server).
    let previous = inner.current.replace(addr.clone());
    let previous_name = std::mem::replace(&mut inner.server_name, addr.to_string());
    // The handshake completed: failures and a lame-duck mark end (before those bytes,
    // which may mark it again).
    if let Some(i) = inner.pool.position(addr) {
        inner.pool.record_success(i);
    }
    if !est.leftover.is_empty() {
        inner.conn.handle_read(now, &mut est.leftover);
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
pub(super) enum LinkEnd {
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
            match super::link::run_link(&shared, stream).await {
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
pub(super) fn record_attempt_failure(
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
    let class = f.server_err.as_deref().and_then(classify_auth_err);
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

/// Fail these requests, whose frames were written on a link now lost: a responder may
/// have acted on them, and their replies cannot come back.
pub(super) fn fail_written_requests(inner: &mut Inner, tokens: impl IntoIterator<Item = u64>) {
    for t in tokens {
        if let Some(r) = inner.requests.remove(&t) {
            let _ = r.tx.send(Err(RequestError::ConnectionLost {
                subject: r.subject,
                maybe_processed: true,
            }));
        }
    }
}

/// Route deliveries and handle the core's events. Returns the reason when the link went down.
pub(super) fn dispatch(shared: &Shared, inner: &mut Inner) -> Option<String> {
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
pub(super) fn route_messages(inner: &mut Inner) {
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
        ConnEvent::Connected { .. } | ConnEvent::HandshakeFailed(_) => None,
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
                    _ => "the request inbox subscription ended".to_owned(),
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
                    _ => Ended::Done,
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
                _ => "removed".to_owned(),
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
        _ => None,
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
    inner.conn.handle_close_link();
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
