//! The I/O driver of one link: it owns the socket, feeds the sans-IO core, writes what the
//! core queues, fires its timers, routes deliveries and runs planned switches. The
//! reconnect loop around it is in [`super::reconnect`].

use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tether_proto::conn::{
    ConnEvent, DisconnectReason, Handshake, HandshakeError, SubEndReason, TlsIntent,
};
use tether_proto::outbound::Counts;
use tether_proto::server_err::ServerErr;
use tether_proto::time::saturating_add as later;
use tether_proto::ServerInfo;

use super::reconnect::{Failure, UsedCredentials};
use super::switch::probe_arrived;
use super::timer::DriverTimer;
use super::transport::{self, Transport};
use super::{Inner, Shared, WaitersFail};
use crate::buffer_watch::{self, Change};
use crate::credentials::{self, JwtTimes};
use crate::error::{AttemptCause, FlushError, SubscribeError};
use crate::events::{ClosedReason, EventKind, State};
use crate::message::Message;
use crate::request;
use crate::server_pool::ServerAddr;
use crate::subscription::Ended;
use crate::tls::{self, TlsError};

/// Read buffer size; grows for large messages.
pub(super) const READ_BUF: usize = 64 * 1024;

pub(crate) fn tokio_instant(t: Instant) -> tokio::time::Instant {
    tokio::time::Instant::from_std(t)
}

/// How often the credentials are read again after `CredentialsExpiring`, until a fresher
/// JWT appears (then the planned switch moves to it) or the link ends.
pub(crate) const CREDENTIALS_RECHECK: Duration = Duration::from_secs(1);

/// A link whose handshake completed, ready to be adopted by the session core.
pub(crate) struct Established {
    pub(crate) io: Transport,
    pub(crate) info: Box<ServerInfo>,
    /// Bytes read after the handshake's last PONG; after [`adopt`], what the core left of
    /// them (an operation not complete yet), the start of the link's read buffer.
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

/// Dial `addr` and run the handshake ([`Handshake`]), bounded by connection_timeout. The
/// handshake runs apart from the session core, so the session (and a live link, during a
/// planned switch) is untouched until the caller adopts the result.
pub(crate) async fn establish(shared: &Shared, addr: &ServerAddr) -> Result<Established, Failure> {
    let start = Instant::now();
    let deadline = later(start, shared.opts.connection_timeout);
    let loaded = credentials::auth_for(&shared.opts, addr)
        .await
        .map_err(|e| Failure::new(addr, None, AttemptCause::Credentials(e.to_string())))?;
    let (tcp, sock) = transport::dial(addr, tokio_instant(deadline))
        .await
        .map_err(|e| Failure::new(addr, e.address(), AttemptCause::Dial(e)))?;
    let mut io = Transport::tcp(tcp);
    let address = Some(sock.to_string());
    let tls_failure = |e: TlsError| Failure::new(addr, address.clone(), AttemptCause::Tls(e));
    let tls_opts = &shared.opts.tls;
    let intent = if tls_opts.first {
        start_tls(shared, &mut io, addr, deadline)
            .await
            .map_err(|e| match e {
                Some(e) => tls_failure(e),
                None => Failure::new(
                    addr,
                    address.clone(),
                    AttemptCause::Handshake(HandshakeError::Timeout {
                        stage: "during the TLS handshake (tls_first)",
                    }),
                ),
            })?;
        TlsIntent::Established
    } else if addr.is_tls() || tls_opts.wanted() {
        TlsIntent::Always
    } else {
        TlsIntent::IfRequired
    };
    let credentials = UsedCredentials::of(&loaded);
    let mut hs =
        Handshake::new(start, deadline, loaded.auth, &shared.opts.core_config()).with_tls(intent);
    let mut rbuf = BytesMut::with_capacity(4096);
    loop {
        while let Some(chunk) = hs.poll_transmit(Instant::now()) {
            match tokio::time::timeout_at(tokio_instant(deadline), io.write_all(&chunk)).await {
                Ok(Ok(())) => hs.handle_written(Instant::now(), chunk.len()),
                Ok(Err(e)) => match TlsError::from_io(&e, addr.tls_name()) {
                    Some(tls) => return Err(tls_failure(tls)),
                    None => hs.handle_link_lost(Instant::now(), Some(e.to_string())),
                },
                Err(_) => hs.handle_timeout(Instant::now()),
            }
        }
        match hs.poll_outcome() {
            Some(Ok(link)) => {
                return Ok(Established {
                    io,
                    info: link.info,
                    leftover: link.leftover,
                    jwt: loaded.jwt,
                });
            }
            Some(Err(error)) => {
                return Err(Failure::handshake(addr, address, error, credentials));
            }
            None => {}
        }
        if hs.wants_tls() {
            match start_tls(shared, &mut io, addr, deadline).await {
                Ok(()) => hs.handle_tls_established(Instant::now()),
                Err(Some(e)) => return Err(tls_failure(e)),
                Err(None) => hs.handle_timeout(Instant::now()),
            }
            // The handshake dropped what followed the plaintext INFO (`rbuf` is empty).
            continue;
        }
        if rbuf.capacity() - rbuf.len() < 1024 {
            rbuf.reserve(4096);
        }
        tokio::select! {
            r = io.read(&mut rbuf) => match r {
                Ok(0) => hs.handle_link_lost(Instant::now(), None),
                Ok(_) => hs.handle_read(Instant::now(), &mut rbuf),
                Err(e) => match TlsError::from_io(&e, addr.tls_name()) {
                    Some(tls) => return Err(tls_failure(tls)),
                    None => hs.handle_link_lost(Instant::now(), Some(e.to_string())),
                },
            },
            () = tokio::time::sleep_until(tokio_instant(deadline)) => {
                hs.handle_timeout(Instant::now());
            }
        }
    }
}

/// Run the TLS handshake on `io` by `deadline`, checking the server's certificate against
/// the name `addr` is known by. `Err(None)` is the deadline.
async fn start_tls(
    shared: &Shared,
    io: &mut Transport,
    addr: &ServerAddr,
    deadline: Instant,
) -> Result<(), Option<TlsError>> {
    let name = addr.tls_name();
    let config = shared.tls.config(&shared.opts.tls).map_err(Some)?;
    let session = rustls::ClientConnection::new(config, tls::server_name(name).map_err(Some)?)
        .map_err(|e| Some(TlsError::classify(&e, name)))?;
    match tokio::time::timeout_at(tokio_instant(deadline), io.start_tls(session)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Some(TlsError::from_io(&e, name).unwrap_or_else(|| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                TlsError::Handshake {
                    detail: String::from(
                        "the server closed the connection during the TLS handshake",
                    ),
                }
            } else {
                TlsError::Handshake {
                    detail: e.to_string(),
                }
            }
        }))),
        Err(_) => Err(None),
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
) -> Option<DisconnectReason> {
    let now = Instant::now();
    est.leftover = inner.conn.adopt_link(
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
    inner.timers.stop(DriverTimer::LdmSwitch);
    let refresh_at = est.jwt.map(|t| {
        later(
            now,
            t.refresh_in(shared.opts.jwt_refresh_lead, std::time::SystemTime::now()),
        )
    });
    inner
        .timers
        .set_or_stop(DriverTimer::JwtRefresh, refresh_at);
    // The link's server is current before the bytes that followed its handshake are
    // handled (an INFO with `ldm` among them concerns this server).
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
pub(crate) enum LinkEnd {
    /// The client closes.
    Closed,
    /// The link went down. `ready` is a planned switch's new link whose handshake had
    /// completed: the reconnect adopts it instead of dialling again (S7).
    Down {
        reason: DisconnectReason,
        ready: Option<Box<(ServerAddr, Established)>>,
    },
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

/// Route deliveries and handle the core's events. Returns the reason when the link went down.
pub(super) fn dispatch(shared: &Shared, inner: &mut Inner) -> Option<DisconnectReason> {
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
        if request::is_inbox(inner, msg.sid) {
            request::on_reply(inner, msg);
            continue;
        }
        if let Some(q) = inner.subs.get(&msg.sid) {
            q.push(Message::from(msg));
        }
    }
}

/// Frames left the buffer: wake publishers waiting for room, report the level.
pub(super) fn buffer_space(shared: &Shared, inner: &mut Inner) {
    shared.space.notify_waiters();
    buffer_watch::report_overflow(shared, inner, false);
    buffer_watch::on_level(shared, inner, Change::Drained);
}

/// Act on one event of the session core. Returns the reason when the link went down.
fn handle_event(shared: &Shared, inner: &mut Inner, ev: ConnEvent) -> Option<DisconnectReason> {
    match ev {
        ConnEvent::Disconnected {
            reason,
            unconfirmed,
            buffered_requests,
        } => {
            request::on_disconnected(shared, inner, &buffered_requests);
            return Some(on_disconnected(shared, inner, reason, unconfirmed));
        }
        ConnEvent::Connected { .. } => {}
        ConnEvent::InfoUpdated(info) => {
            if let Some(addr) = inner.current.clone() {
                merge_pool(shared, inner, &info, &addr);
            }
        }
        ConnEvent::LameDuck => on_lame_duck(shared, inner),
        ConnEvent::FlushDone(token) => {
            if let Some(tx) = inner.flushes.remove(&token) {
                let _ = tx.send(Ok(()));
            }
        }
        ConnEvent::FlushFailed { token, unconfirmed } => {
            if let Some(tx) = inner.flushes.remove(&token) {
                let _ = tx.send(Err(FlushError::ConnectionLost {
                    unconfirmed_msgs: unconfirmed.msgs,
                    unconfirmed_bytes: unconfirmed.bytes,
                }));
            }
        }
        ConnEvent::ServerError(error) => on_server_error(shared, inner, error),
        ConnEvent::PublishDenied {
            subject,
            reply,
            message,
        } => {
            let (s, r) = (subject.as_deref(), reply.as_deref());
            if let Some(text) = request::on_publish_denied(inner, s, r, message) {
                inner.conn.note_publish_denied();
                shared.emit(EventKind::ServerError {
                    error: ServerErr::PubPermission {
                        subject,
                        reply,
                        text,
                    },
                });
            }
        }
        ConnEvent::SubscriptionEnded { sid, reason } => on_subscription_ended(inner, sid, reason),
        ConnEvent::FramesRemoved { reason, counts } => {
            shared.emit(EventKind::FramesRemoved {
                reason,
                msgs: counts.msgs,
                bytes: counts.bytes,
            });
        }
        // The replay and the frames buffered before it are written: the reconnect is
        // complete (DESIGN semantics 4).
        ConnEvent::Replayed(_) => super::reconnect::on_replayed(shared, inner),
        ConnEvent::BufferSpace => buffer_space(shared, inner),
    }
    None
}

/// The link went down: count what it left unconfirmed, wake publishers, and move to
/// Reconnecting together with the `Disconnected` event. Returns the reason.
fn on_disconnected(
    shared: &Shared,
    inner: &mut Inner,
    reason: DisconnectReason,
    unconfirmed: Counts,
) -> DisconnectReason {
    shared.count_unconfirmed(unconfirmed);
    metrics::counter!("tether_disconnects_total").increment(1);
    if inner.reconnected.take().is_some() {
        tracing::debug!(
            server = %inner.server_name,
            "link lost before its subscription replay was written; no Reconnected for it"
        );
    }
    // Publishers waiting for room re-check now: under the Error policy a disconnected
    // buffer refuses at once instead of at block_deadline.
    shared.space.notify_waiters();
    // The state changes with the event, in one lock section: a stream taken in between
    // never starts with a Connected that is already over.
    if shared.opts.allow_reconnect && inner.state == State::Connected {
        shared.set_state(inner, State::Reconnecting);
    }
    shared.emit(EventKind::Disconnected {
        server: inner.server_name.clone(),
        reason: reason.clone(),
        unconfirmed_msgs: unconfirmed.msgs,
        unconfirmed_bytes: unconfirmed.bytes,
    });
    reason
}

/// The server entered lame duck mode. Confirm what was written so far at once, then move
/// after a random jitter so a fleet does not move at the same moment. With no other
/// server to go to yet, the switch waits for one (a node back from its restart) until the
/// server closes the link.
fn on_lame_duck(shared: &Shared, inner: &mut Inner) {
    shared.emit(EventKind::LameDuck {
        server: inner.server_name.clone(),
    });
    let token = inner.token();
    inner.conn.flush(token);
    let now = Instant::now();
    if let Some(i) = inner.server_index() {
        let id = inner.conn.server_info().map(|i| i.server_id.clone());
        inner.pool.mark_lame_duck(i, id.as_deref(), now);
    }
    let wait = crate::server_pool::uniform_below(shared.opts.ldm_jitter, &mut rand::thread_rng());
    inner.timers.set(DriverTimer::LdmSwitch, later(now, wait));
}

/// An -ERR about the planned switch's probe or cut marker (no permission for the
/// subject): the overlap runs to its bound. Returns false when it is about something else.
fn probe_refused(inner: &mut Inner, error: &ServerErr) -> bool {
    let Some(p) = inner.probe.as_mut() else {
        return false;
    };
    let message = error.to_string();
    let names = |subject: &str| message.contains(subject);
    if !names(&p.subject) && !p.marker.as_ref().is_some_and(|(_, m)| names(m)) {
        return false;
    }
    tracing::debug!(subject = %p.subject, error = %message, "planned switch probe refused");
    p.refused = true;
    true
}

/// The probe's or the cut marker's subscription ended. Returns false for another `sid`.
fn probe_ended(inner: &mut Inner, sid: u64, reason: &SubEndReason) -> bool {
    let Some(p) = inner
        .probe
        .as_mut()
        .filter(|p| p.sid == sid || p.marker.as_ref().is_some_and(|(m, _)| *m == sid))
    else {
        return false;
    };
    tracing::debug!(subject = %p.subject, reason = ?reason, "planned switch probe subscription ended");
    p.refused = true;
    true
}

/// An -ERR the server sent on a link that stays open; one about the planned switch's
/// probe is not the user's.
fn on_server_error(shared: &Shared, inner: &mut Inner, error: ServerErr) {
    if !probe_refused(inner, &error) {
        shared.emit(EventKind::ServerError { error });
    }
}

/// A subscription ended: the probe's, the request inbox, or a user's (its stream ends,
/// with the server's refusal if any).
fn on_subscription_ended(inner: &mut Inner, sid: u64, reason: SubEndReason) {
    if probe_ended(inner, sid, &reason) || request::on_inbox_ended(inner, sid, &reason) {
        return;
    }
    if let Some(q) = inner.subs.remove(&sid) {
        q.end(match reason {
            SubEndReason::MaxReached => Ended::Done,
            SubEndReason::PermissionDenied(t) => Ended::Error(SubscribeError::PermissionDenied(t)),
            SubEndReason::MaxSubscriptionsExceeded(t) => {
                Ended::Error(SubscribeError::MaxSubscriptionsExceeded(t))
            }
        });
    }
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
    buffer_watch::report_overflow(shared, &mut inner, true);
    inner.fail_waiters(WaitersFail::Closed);
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
        reason,
        unsent_msgs: unsent.msgs,
        unsent_bytes: unsent.bytes,
        unconfirmed_msgs: unconfirmed.msgs,
        unconfirmed_bytes: unconfirmed.bytes,
    });
    shared.events.close();
    shared.space.notify_waiters();
    shared.connected.notify_waiters();
}
