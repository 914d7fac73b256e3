//! The planned (make-before-break) switch's pieces: the retiring link, choosing the next
//! target, the probe that says when the old node knows the new interest, the cut that
//! joins the two links' streams, and the JWT refresh that asks for a switch. The
//! [`LinkDriver`](super::link::LinkDriver) sequences them (`Switch`); each step here is a
//! function of the connection state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tether_proto::conn::RetiringLink;
use tether_proto::outbound::Counts;
use tether_proto::time::saturating_add as later;
use tokio::sync::oneshot;

use super::driver::{Established, CREDENTIALS_RECHECK};
use super::timer::DriverTimer;
use super::transport::Transport;
use super::{Inner, Probe, Shared};
use crate::credentials::{CredentialsError, Loaded};
use crate::error::AttemptCause;
use crate::events::EventKind;
use crate::events::MigrateReason as SwitchReason;
use crate::server_pool::ServerAddr;

/// A link retired by a planned switch: it delivers for the overlap, then gets UNSUB and a
/// last PING, and closes once that PONG arrives (or pong_timeout passes). Its deadlines
/// are the driver's `Retire*`, `Probe` and `Marker` timers.
pub(super) struct RetiringIo {
    pub(super) io: Arc<Transport>,
    pub(super) link: RetiringLink,
    pub(super) rbuf: BytesMut,
    /// Bytes for this link: the core's UNSUBs and last PING, and the probes.
    pub(super) out: BytesMut,
    /// Requests written on this link: they fail if it dies before its last PONG.
    pub(super) requests: Vec<u64>,
    pub(super) from: String,
    pub(super) to: String,
    /// Its socket failed or closed.
    pub(super) failed: bool,
}

/// Close a retired link now (the current link went down, or the client closes): what
/// stayed unconfirmed on it is reported in `Migrated`, its flushes fail or re-arm.
pub(super) fn retire_now(shared: &Shared, inner: &mut Inner, old: RetiringIo) {
    end_probe(inner);
    let retired = old.link.is_retired();
    let unconfirmed = inner.conn.finish_retiring(old.link);
    if !retired && !shared.opts.core.retain_requests {
        // Written on a link that died unconfirmed: a responder may have acted on them,
        // and no reply can come back through it (B7).
        crate::request::fail_written(inner, old.requests);
    }
    report_migrated(shared, old.from, old.to, unconfirmed);
}

/// How often the old link publishes the probe while waiting for it on the new link (a
/// timer's resolution).
pub(super) const PROBE_INTERVAL: Duration = Duration::from_millis(1);
/// A loop turn for another reason (a delivery, a PONG) sends the probe early, this long
/// after the last one: the sooner a probe reaches the old node after it learned the new
/// interest, the shorter the overlap, and every millisecond of it is a duplicate at
/// 1 msg/ms.
pub(super) const PROBE_MIN_GAP: Duration = Duration::from_micros(200);
/// The cut starts no sooner than this after the first probe came back. A third node's
/// routes learn the new interest at about the time the old node does, but on a busy
/// machine a few scheduling slices later: a publisher there that does not know the new
/// interest yet sends only to the old node, and what reaches the old link after the cut is
/// dropped as a duplicate. Waiting costs no duplicate (the new link's deliveries are held
/// meanwhile), only that much delay of them.
pub(super) const THIRD_NODE_MARGIN: Duration = Duration::from_millis(20);

/// The next target of a pending planned switch and when it is due: another server not in
/// lame duck mode (for fresh credentials, the same server will do).
pub(super) fn next_switch_target(
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
pub(super) fn same_node_as_left(
    inner: &mut Inner,
    addr: &ServerAddr,
    est: &Established,
    reason: SwitchReason,
) -> Option<(AttemptCause, bool)> {
    let now = Instant::now();
    let id = est.info.server_id.as_str();
    if id.is_empty() {
        return None;
    }
    if inner.pool.is_lame_duck_node(id, now) {
        if let Some(i) = inner.pool.position(addr) {
            inner.pool.mark_lame_duck(i, Some(id), now);
        }
        return Some((AttemptCause::LameDuckNode, false));
    }
    let current_id = inner.conn.server_info().map(|i| i.server_id.as_str());
    if reason != SwitchReason::Credentials && current_id == Some(id) {
        return Some((AttemptCause::NodeBeingLeft, true));
    }
    None
}

/// A refresh's switch that could not move yet tries again after reconnect_wait, while the
/// JWT is inside its refresh window.
pub(super) fn rearm_refresh(shared: &Shared, inner: &mut Inner, reason: SwitchReason) {
    if reason != SwitchReason::Credentials {
        return;
    }
    let in_window = inner.jwt.is_some_and(|t| {
        t.refresh_in(shared.opts.jwt_refresh_lead, std::time::SystemTime::now())
            .is_zero()
    });
    if inner.timers.get(DriverTimer::JwtRefresh).is_none() && in_window {
        let at = later(Instant::now(), shared.opts.reconnect_wait);
        inner.timers.set(DriverTimer::JwtRefresh, at);
    }
}

/// Subscribe the probe on the new link (after the replayed subscriptions), followed by a
/// PING: its PONG says the new server registered them all, the moment the old node is
/// about to learn the interest, so a probe goes out then as well as every
/// [`PROBE_INTERVAL`].
pub(super) fn start_probe(shared: &Shared, inner: &mut Inner, now: Instant) {
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
pub(super) fn probe_registered(inner: &mut Inner) -> bool {
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
pub(super) fn send_probe(inner: &Inner, now: Instant, out: &mut BytesMut) -> Option<Instant> {
    let p = inner.probe.as_ref()?;
    if p.confirmed || p.refused {
        return None;
    }
    let nanos = now.saturating_duration_since(p.started).as_nanos();
    tether_proto::encode::encode_pub(out, &p.subject, None, nanos.to_string().as_bytes());
    Some(later(now, PROBE_INTERVAL))
}

/// True when the cut may be prepared: the first probe to arrive showed that the old node
/// knows the new interest, and a probe sent after that arrived too (one more trip). The
/// cut itself waits for [`THIRD_NODE_MARGIN`] as well ([`cut_from`]), the margin for
/// publishers on a third node.
pub(super) fn probe_done(inner: &Inner) -> bool {
    inner.probe.as_ref().is_some_and(|p| p.confirmed)
}

/// When the cut may start: [`THIRD_NODE_MARGIN`] after the first probe came back.
pub(super) fn cut_from(inner: &Inner) -> Option<Instant> {
    let first = inner.probe.as_ref()?.arrived?;
    Some(later(first, THIRD_NODE_MARGIN))
}

/// A probe arrived on the new link. After the first one, the next probe goes out at once.
pub(super) fn probe_arrived(p: &mut Probe, payload: &[u8]) {
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
pub(super) fn start_cut(shared: &Shared, inner: &mut Inner, link: &mut RetiringLink) {
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
pub(super) fn end_probe(inner: &mut Inner) {
    inner.conn.release_gate(None);
    if let Some(p) = inner.probe.take() {
        inner.conn.unsubscribe(p.sid, None);
        if let Some((sid, _)) = p.marker {
            inner.conn.unsubscribe(sid, None);
        }
    }
}

/// `Migrated`, with the old link's unconfirmed counts also in the statistics.
pub(super) fn report_migrated(shared: &Shared, from: String, to: String, unconfirmed: Counts) {
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

/// The user JWT is within its refresh lead and the credentials were read again: move to a
/// new link with them if they expire later (semantics 13); else say so (once per link),
/// and read them again every [`CREDENTIALS_RECHECK`] until a fresher JWT appears or the
/// server ends the link (the reconnect then reads them again at once).
pub(super) fn check_fresh_credentials(
    shared: &Shared,
    inner: &mut Inner,
    fresh: Result<Loaded, CredentialsError>,
) {
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
    let at = later(Instant::now(), CREDENTIALS_RECHECK);
    inner.timers.set(DriverTimer::JwtRefresh, at);
    if std::mem::replace(&mut inner.expiring_reported, true) {
        return;
    }
    let reason = match fresh {
        Err(e) => e.to_string(),
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
