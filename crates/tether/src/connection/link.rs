//! One link's driver: the loop that runs an established link until it goes down or the
//! client closes, and carries out planned (make-before-break) switches on the way.
//!
//! Every turn takes the connection lock once: [`LinkDriver::on_wake`] feeds what ended
//! the last wait to the core, then the `drive_*` steps run in order; then the driver
//! releases the lock and waits in one `select!` ([`LinkDriver::wait`]) for the next thing
//! to happen. One lock section a turn, not two: a publisher refilling a JetStream window
//! meets the driver's lock half as often. Replies routed in the section are handed to
//! their requesters right after it (`request::Replies`).
//! 1. `drive_timers`: the driver's own deadlines (lame-duck jitter, JWT refresh).
//! 2. `drive_switch`: the planned switch, one state at a time (see [`Switch`]).
//! 3. `drive_transmit`: the next chunk the core has for the socket.
//! 4. `dispatch`: deliveries to subscriptions, the core's events (a link down ends here).
//! 5. `drive_close`: close(), with its flush.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tether_proto::time::saturating_add as later;
use tokio::sync::oneshot;

use super::driver::{
    adopt, dispatch, establish, route_messages, tokio_instant, Established, LinkEnd, READ_BUF,
};
use super::reconnect::{record_attempt_failure, Failure};
use super::switch::{
    check_fresh_credentials, cut_from, end_probe, next_switch_target, probe_done, probe_registered,
    rearm_refresh, report_migrated, retire_now, same_node_as_left, send_probe, start_cut,
    start_probe, RetiringIo, PROBE_INTERVAL, PROBE_MIN_GAP,
};
use super::timer::DriverTimer;
use super::transport::Transport;
use super::{CloseMode, Inner, Shared};
use crate::credentials::{self, CredentialsError, Loaded};
use crate::error::FlushError;
use crate::events::EventKind;
use crate::events::MigrateReason as SwitchReason;
use crate::server_pool::ServerAddr;
use tether_proto::conn::DisconnectReason;

type RefreshFuture = Pin<Box<dyn Future<Output = Result<Loaded, CredentialsError>> + Send>>;

type SwitchFuture =
    Pin<Box<dyn Future<Output = (ServerAddr, Result<Established, Failure>)> + Send>>;

/// Run one established link until it goes down or the client closes.
pub(super) async fn run_link(shared: &Arc<Shared>, link: Established) -> LinkEnd {
    let io = Arc::new(link.io);
    {
        let mut inner = shared.lock("driver");
        inner.direct = Some(io.clone());
        for t in DriverTimer::LINK {
            inner.timers.stop(t);
        }
    }
    let mut link = LinkDriver::new(shared, io, link.leftover);
    let end = link.drive().await;
    {
        let mut inner = shared.lock("driver");
        inner.direct = None;
        inner.driver_holds = false;
    }
    if matches!(end, LinkEnd::Closed) {
        // Shut down the write side so the server sees a clean end of stream.
        if let Ok(io) = Arc::try_unwrap(link.io) {
            io.shutdown().await;
        }
    }
    end
}

/// Write pending frames from the caller's thread while the driver is idle, as nats.c does
/// for requests: the frame is on the wire without waiting for the driver task to run.
/// Whatever the transport does not take stays in flight for the driver.
///
/// Returns true when the driver must run: the write was partial (or not made), it left
/// events other than freed buffer space, or it armed a timer earlier than the one the
/// driver sleeps until. Otherwise the driver sleeps on: waking it would cost a thread
/// hop and a turn under the lock while the reply is on its way, for nothing.
pub(crate) fn try_direct_write(shared: &Shared, inner: &mut Inner) -> bool {
    if !inner.driver_waiting {
        return false; // the driver is running and will write it
    }
    let Some(io) = inner.direct.as_ref() else {
        return true;
    };
    if inner.conn.has_events() {
        return true; // for the driver, in order
    }
    let now = Instant::now();
    if let Some(chunk) = inner.conn.poll_transmit(now) {
        if let Ok(n) = io.try_write(&chunk) {
            inner.conn.handle_written(now, n);
        }
    }
    // Records a TLS session could not hand to the socket wait for the driver's read.
    if !inner.conn.is_write_idle() || io.has_pending() {
        return true;
    }
    if inner.conn.take_buffer_space() {
        super::driver::buffer_space(shared, inner);
    }
    let earlier = match (inner.conn.poll_timeout(), inner.driver_deadline) {
        (Some(t), Some(d)) => t < d,
        (Some(_), None) => true,
        (None, _) => false,
    };
    earlier || inner.conn.has_events()
}

/// The longest a JetStream window request's frame or a JetStream ack waits for the
/// driver's next read (see `Client::buffer_publish`); the timer's resolution may add up
/// to a millisecond.
pub(crate) const HOLD: std::time::Duration = std::time::Duration::from_millis(1);

/// A planned switch, from the request to the old link's end. One at a time.
enum Switch {
    /// No switch under way (one may be pending in `Inner::switch_request`).
    Idle,
    /// Dialing a target and running its handshake, beside the live link.
    Dialing(SwitchFuture),
    /// The new link's handshake completed; it is adopted at the next frame boundary.
    Ready(Box<(ServerAddr, Established)>),
    /// The new link is current; the old one delivers until the streams are cut, then
    /// retires.
    Overlap(Box<RetiringIo>),
}

impl Switch {
    fn is_idle(&self) -> bool {
        matches!(self, Self::Idle)
    }

    /// Wait for the dialing target or the retiring link's I/O (never ready otherwise).
    async fn io(&mut self) -> Wake {
        match self {
            Self::Dialing(f) => {
                let (addr, result) = f.await;
                Wake::Dialed(addr, result)
            }
            Self::Overlap(o) => Wake::Retiring(retiring_io(o).await),
            Self::Idle | Self::Ready(_) => std::future::pending().await,
        }
    }
}

/// What one planned switch keeps across its targets.
struct SwitchPlan {
    /// Why the switch under way was asked for.
    reason: SwitchReason,
    /// How many targets it tried.
    attempts: u32,
    started: Instant,
    /// Addresses this switch reached and left again (the node being left, or one in lame
    /// duck mode, under another address).
    skip: Vec<ServerAddr>,
    /// One of them was the connected node.
    alias_of_current: Option<ServerAddr>,
    rng: SmallRng,
}

impl SwitchPlan {
    fn reset(&mut self) {
        self.skip.clear();
        self.alias_of_current = None;
        self.attempts = 0;
    }
}

/// The chunk being written to the transport.
#[derive(Default)]
struct Transmit {
    chunk: Bytes,
    pos: usize,
}

impl Transmit {
    fn is_idle(&self) -> bool {
        self.pos >= self.chunk.len()
    }

    fn rest(&self) -> &[u8] {
        &self.chunk[self.pos.min(self.chunk.len())..]
    }

    fn set(&mut self, chunk: Bytes) {
        self.chunk = chunk;
        self.pos = 0;
    }
}

/// What ended a wait.
enum Wake {
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    Retiring(RetiringWake),
    Dialed(ServerAddr, Result<Established, Failure>),
    Refreshed(Result<Loaded, CredentialsError>),
    Notified,
    Timer,
}

enum RetiringWake {
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
}

async fn retiring_io(old: &mut RetiringIo) -> RetiringWake {
    let RetiringIo { io, rbuf, out, .. } = old;
    if rbuf.capacity() - rbuf.len() < 1024 {
        rbuf.reserve(READ_BUF);
    }
    tokio::select! {
        r = io.read(rbuf) => RetiringWake::Read(r),
        w = io.write(&out[..]), if !out.is_empty() => RetiringWake::Wrote(w),
    }
}

/// The result of one turn.
enum Step {
    Wait(Option<Instant>),
    Again,
    End(LinkEnd),
}

/// Runs one link: see the module docs.
pub(super) struct LinkDriver<'a> {
    shared: &'a Arc<Shared>,
    io: Arc<Transport>,
    rbuf: BytesMut,
    tx: Transmit,
    switch: Switch,
    plan: SwitchPlan,
    /// The credentials being read again ahead of the JWT's expiry.
    refresh: Option<RefreshFuture>,
    /// close()'s flush, while it is awaited.
    close_flush: Option<oneshot::Receiver<Result<(), FlushError>>>,
    /// One timer for the whole link, moved only when the deadline changes: creating a
    /// Sleep per loop turn costs a timer-wheel registration each time.
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: Option<Instant>,
    /// The replies of the last turn, sent after the lock section.
    replies: crate::request::Replies,
    /// This turn read, wrote or was woken by a handle: not just a timer with nothing to
    /// do. Only such a turn arms the hold (see `step`), so an idle link with window
    /// requests unanswered does not wake every HOLD.
    active: bool,
}

impl<'a> LinkDriver<'a> {
    /// A driver for the link on `io`, whose read buffer starts with `rbuf` (what the core
    /// left of the bytes read with the handshake).
    fn new(shared: &'a Arc<Shared>, io: Arc<Transport>, mut rbuf: BytesMut) -> Self {
        rbuf.reserve(READ_BUF);
        Self {
            shared,
            io,
            rbuf,
            tx: Transmit::default(),
            switch: Switch::Idle,
            plan: SwitchPlan {
                reason: SwitchReason::Requested,
                attempts: 0,
                started: Instant::now(),
                skip: Vec::new(),
                alias_of_current: None,
                rng: SmallRng::from_entropy(),
            },
            refresh: None,
            close_flush: None,
            sleep: Box::pin(tokio::time::sleep(std::time::Duration::from_secs(3600))),
            armed: None,
            replies: crate::request::Replies::default(),
            active: false,
        }
    }

    async fn drive(&mut self) -> LinkEnd {
        let mut woke = None;
        loop {
            let step = {
                let mut inner = self.shared.lock("driver");
                if let Some(wake) = woke.take() {
                    self.on_wake(&mut inner, wake);
                }
                let step = self.step(&mut inner, Instant::now());
                self.replies.take_from(&mut inner);
                step
            };
            self.replies.send();
            match step {
                Step::Wait(deadline) => woke = Some(self.wait(deadline).await),
                Step::Again => {}
                Step::End(end) => return end,
            }
        }
    }

    /// One turn under the lock.
    fn step(&mut self, inner: &mut Inner, now: Instant) -> Step {
        self.drive_timers(inner, now);
        if let Some(end) = self.drive_switch(inner, now) {
            return Step::End(end);
        }
        self.drive_transmit(inner, now);
        if let Some(reason) = dispatch(self.shared, inner) {
            return Step::End(self.link_down(inner, reason));
        }
        if let Some(step) = self.drive_close(inner, now) {
            return step;
        }
        inner.driver_waiting = self.tx.is_idle();
        // With window requests unanswered, their acks wake the driver soon, and with a
        // pull stream live, its messages: frames of further window requests and acks wait
        // for them (at most HOLD), see `buffer_publish`. A turn with nothing to do (the
        // hold's own timer) does not arm it again: the next such frame wakes the driver,
        // whose turn arms it.
        let expected = inner.requests.windowed() > 0 || inner.pull_streams > 0;
        inner.driver_holds = inner.driver_waiting
            && expected
            && inner.close.is_none()
            && std::mem::take(&mut self.active);
        self.shared.held.store(false, Ordering::Relaxed);
        let mut deadline = self.next_deadline(inner);
        if inner.driver_holds {
            let hold = later(now, HOLD);
            deadline = Some(deadline.map_or(hold, |d| d.min(hold)));
        }
        inner.driver_deadline = deadline;
        Step::Wait(deadline)
    }

    /// Lame duck mode's jittered switch falls due; the JWT's refresh window opens.
    fn drive_timers(&mut self, inner: &mut Inner, now: Instant) {
        if inner.timers.is_expired(DriverTimer::LdmSwitch, now) {
            inner.timers.stop(DriverTimer::LdmSwitch);
            inner.switch_request = Some(SwitchReason::LameDuck);
        }
        if self.switch.is_idle()
            && self.refresh.is_none()
            && inner.timers.is_expired(DriverTimer::JwtRefresh, now)
        {
            inner.timers.stop(DriverTimer::JwtRefresh);
            if let Some(keys) = self.shared.opts.keys.clone() {
                self.refresh = Some(Box::pin(credentials::load_keys(
                    keys,
                    self.shared.opts.connection_timeout,
                )));
            }
        }
    }

    /// Move the planned switch on: start dialing a requested one, adopt a ready link at a
    /// frame boundary, and run the overlap.
    fn drive_switch(&mut self, inner: &mut Inner, now: Instant) -> Option<LinkEnd> {
        inner.timers.stop(DriverTimer::SwitchDue);
        if self.switch.is_idle() && inner.close.is_none() {
            self.start_switch(inner, now);
        }
        // Switch publishing at a frame boundary: no data chunk half written.
        if matches!(self.switch, Switch::Ready(_))
            && self.tx.is_idle()
            && inner.conn.can_retire_link()
        {
            if let Switch::Ready(ready) = std::mem::replace(&mut self.switch, Switch::Idle) {
                let (addr, est) = *ready;
                if let Some(end) = self.adopt_new_link(inner, now, addr, est) {
                    return Some(end);
                }
            }
        }
        self.drive_overlap(inner, now);
        None
    }

    /// Dial the next target of a pending switch request when it is due.
    fn start_switch(&mut self, inner: &mut Inner, now: Instant) {
        let Some(reason) = inner.switch_request else {
            self.plan.reset();
            return;
        };
        match next_switch_target(inner, reason, now, &self.plan.skip) {
            Some((_, due)) if due > now => inner.timers.set(DriverTimer::SwitchDue, due),
            Some((addr, _)) => {
                if reason == SwitchReason::Credentials {
                    // One attempt; a failed one is re-armed by the refresh.
                    inner.switch_request = None;
                }
                if self.plan.attempts == 0 {
                    self.plan.started = now;
                }
                self.plan.reason = reason;
                self.plan.attempts += 1;
                let sh = self.shared.clone();
                self.switch = Switch::Dialing(Box::pin(async move {
                    let r = establish(&sh, &addr).await;
                    (addr, r)
                }));
            }
            // No other server: a requested move reconnects; lame duck mode stays on the
            // old link until the pool offers another server (a node back from its
            // restart) or the server closes the link.
            None => {
                if reason != SwitchReason::LameDuck {
                    inner.switch_request = None;
                }
                match (reason, self.plan.alias_of_current.take()) {
                    // The new pool names the connected node under another address: it is
                    // the current server already.
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

    /// The switch's target answered: go on with the next target if it is the node being
    /// left (under another address), else it is ready to adopt.
    fn on_dialed(
        &mut self,
        inner: &mut Inner,
        addr: ServerAddr,
        result: Result<Established, Failure>,
    ) {
        let shared = self.shared;
        let reason = self.plan.reason;
        match result {
            Ok(est) => {
                let Some((why, current)) = same_node_as_left(inner, &addr, &est, reason) else {
                    self.switch = Switch::Ready(Box::new((addr, est)));
                    return;
                };
                self.plan.skip.push(addr.clone());
                if current {
                    self.plan.alias_of_current = Some(addr.clone());
                }
                // Dropping `est` closes that link; the next target is tried.
                tracing::info!(
                    server = %addr,
                    reason = %why,
                    "planned switch reached the node it is leaving; trying the next server"
                );
                shared.emit(EventKind::ReconnectFailed {
                    server: addr.to_string(),
                    address: None,
                    attempt: self.plan.attempts,
                    error: why,
                });
            }
            Err(f) => {
                shared.emit(f.event(self.plan.attempts));
                // The connected server (a refresh's target) is never failed out of the
                // pool by a second link's attempt. Others get the pool's backoff and auth
                // rules, and the switch goes on with the next.
                if inner.current.as_ref() != Some(&addr) {
                    let elapsed = self.plan.started.elapsed();
                    record_attempt_failure(shared, inner, &addr, &f, elapsed, &mut self.plan.rng);
                }
            }
        }
        rearm_refresh(shared, inner, reason);
    }

    /// Detach the live link, adopt the new one, and start the overlap (probe and cut).
    fn adopt_new_link(
        &mut self,
        inner: &mut Inner,
        now: Instant,
        addr: ServerAddr,
        mut est: Established,
    ) -> Option<LinkEnd> {
        let shared = self.shared;
        let mut link = inner.conn.retire_link()?;
        // Requests written on the old link: they fail if it dies before confirming.
        let pending: std::collections::HashSet<u64> = inner.conn.pending_requests().collect();
        let requests = crate::request::written(inner, |t| pending.contains(&t));
        let from = inner.server_name.clone();
        shared.emit(EventKind::Migrating {
            from: from.clone(),
            to: addr.to_string(),
            reason: self.plan.reason,
        });
        self.plan.reset();
        if let Some(reason) = adopt(shared, inner, &addr, &mut est) {
            // The new link died at once; the old one is already retiring: report what
            // stayed unconfirmed on it.
            let unconfirmed = inner.conn.finish_retiring(link);
            report_migrated(shared, from, addr.to_string(), unconfirmed);
            return Some(LinkEnd::Down {
                reason,
                ready: None,
            });
        }
        if inner.server_index().is_none() {
            // set_server_pool dropped this server while the switch ran.
            inner.switch_request = Some(SwitchReason::ServerPool);
        }
        start_probe(shared, inner, now);
        start_cut(shared, inner, &mut link);
        let fresh = Arc::new(est.io);
        let mut rbuf = est.leftover;
        rbuf.reserve(READ_BUF);
        inner.direct = Some(fresh.clone());
        let bound = later(now, shared.opts.ldm_overlap);
        inner.timers.set(DriverTimer::Retire, bound);
        inner.timers.set(
            DriverTimer::RetireGiveUp,
            later(bound, shared.opts.effective_pong_timeout()),
        );
        inner
            .timers
            .set_or_stop(DriverTimer::Probe, inner.probe.is_some().then_some(now));
        inner.timers.stop(DriverTimer::Marker);
        self.switch = Switch::Overlap(Box::new(RetiringIo {
            io: std::mem::replace(&mut self.io, fresh),
            link,
            rbuf: std::mem::replace(&mut self.rbuf, rbuf),
            out: BytesMut::new(),
            requests,
            from,
            to: addr.to_string(),
            failed: false,
        }));
        self.tx = Transmit::default();
        None
    }

    /// The overlap: probe until the old node knows the new interest, cut the streams,
    /// retire the old link's subscriptions, and close it after its last PONG.
    fn drive_overlap(&mut self, inner: &mut Inner, now: Instant) {
        let Switch::Overlap(o) = &mut self.switch else {
            return;
        };
        if !o.link.overlap_ended() {
            overlap_step(self.shared, inner, o, now);
        }
        if let Some(b) = o.link.poll_transmit() {
            o.out.extend_from_slice(&b);
        }
        if o.link.is_done() || o.failed || inner.timers.is_expired(DriverTimer::RetireGiveUp, now) {
            self.end_overlap(inner);
        }
    }

    /// Close the retiring link now, if there is one.
    fn end_overlap(&mut self, inner: &mut Inner) {
        if !matches!(self.switch, Switch::Overlap(_)) {
            return;
        }
        if let Switch::Overlap(o) = std::mem::replace(&mut self.switch, Switch::Idle) {
            for t in [
                DriverTimer::Retire,
                DriverTimer::RetireGiveUp,
                DriverTimer::Probe,
                DriverTimer::Marker,
            ] {
                inner.timers.stop(t);
            }
            retire_now(self.shared, inner, *o);
        }
    }

    /// The next chunk for the transport, unless one is still being written.
    fn drive_transmit(&mut self, inner: &mut Inner, now: Instant) {
        if !inner.conn.may_write() {
            // A closing -ERR: stop writing, even mid-chunk; the core rewinds what this
            // chunk held and resends it on the next link (a poison frame excepted).
            self.tx = Transmit::default();
        } else if self.tx.is_idle() {
            // Let go of the written chunk first: the core reuses its memory.
            self.tx = Transmit::default();
            // A caller's direct write may have left part of a chunk in flight.
            let chunk = inner
                .conn
                .in_flight_rest()
                .or_else(|| inner.conn.poll_transmit(now))
                .unwrap_or_default();
            self.active |= !chunk.is_empty();
            self.tx.set(chunk);
        }
    }

    /// The link went down: the reconnect replaces any switch still waiting (its jitter, a
    /// target); a new link whose handshake completed goes to the reconnect loop.
    fn link_down(&mut self, inner: &mut Inner, reason: DisconnectReason) -> LinkEnd {
        inner.timers.stop(DriverTimer::LdmSwitch);
        inner.switch_request = None;
        self.end_overlap(inner);
        let ready = match std::mem::replace(&mut self.switch, Switch::Idle) {
            Switch::Ready(r) => Some(r),
            _ => None,
        };
        LinkEnd::Down { reason, ready }
    }

    /// close(): flush first when the link is up (bounded by flush_timeout), then end.
    fn drive_close(&mut self, inner: &mut Inner, now: Instant) -> Option<Step> {
        inner.close.as_ref()?;
        let done = match &mut self.close_flush {
            None if inner.conn.is_up() && inner.close == Some(CloseMode::Graceful) => {
                let token = inner.token();
                let (tx, rx) = oneshot::channel();
                inner.flushes.insert(token, tx);
                inner.conn.flush(token);
                self.close_flush = Some(rx);
                inner.timers.set(
                    DriverTimer::CloseFlush,
                    later(now, self.shared.opts.flush_timeout),
                );
                return Some(Step::Again);
            }
            None => true,
            Some(rx) => {
                !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
                    || inner.timers.is_expired(DriverTimer::CloseFlush, now)
            }
        };
        if !done {
            return None;
        }
        self.end_overlap(inner);
        Some(Step::End(LinkEnd::Closed))
    }

    fn next_deadline(&self, inner: &Inner) -> Option<Instant> {
        // The JWT refresh is looked at only between switches (the end of one wakes the
        // loop anyway).
        let timers = if self.switch.is_idle() {
            inner.timers.next_timeout()
        } else {
            inner.timers.next_timeout_except(DriverTimer::JwtRefresh)
        };
        [inner.conn.poll_timeout(), timers]
            .into_iter()
            .flatten()
            .min()
    }

    /// Wait for the transport, the switch, the credentials, a handle's wake-up or the
    /// next deadline.
    async fn wait(&mut self, deadline: Option<Instant>) -> Wake {
        if self.rbuf.capacity() - self.rbuf.len() < READ_BUF / 4 {
            self.rbuf.reserve(READ_BUF);
        }
        if let Some(d) = deadline {
            if self.armed != Some(d) {
                self.sleep.as_mut().reset(tokio_instant(d));
                self.armed = Some(d);
            }
        }
        let Self {
            shared,
            io,
            rbuf,
            tx,
            switch,
            refresh,
            sleep,
            ..
        } = self;
        let busy = !switch.is_idle() && !matches!(switch, Switch::Ready(_));
        // Unbiased: tokio picks a ready branch at random, so a receive backlog that keeps
        // the read branch ready can never starve the writer (PONGs, publishes, flush
        // PINGs) or the timers (S1 of the review).
        tokio::select! {
            r = io.read(rbuf) => Wake::Read(r),
            w = io.write(tx.rest()), if !tx.is_idle() => Wake::Wrote(w),
            wake = switch.io(), if busy => wake,
            fresh = async { refresh.as_mut().expect("guarded").await }, if refresh.is_some() => {
                Wake::Refreshed(fresh)
            }
            // Always armed, even mid-chunk: close(), force_reconnect() and a dropped last
            // handle must be seen while a write is blocked on a full socket.
            () = shared.wake.notified() => Wake::Notified,
            () = sleep.as_mut(), if deadline.is_some() => Wake::Timer,
        }
    }

    /// Hand what ended the wait to the core (or the switch).
    fn on_wake(&mut self, inner: &mut Inner, wake: Wake) {
        let shared = self.shared;
        self.active |= !matches!(wake, Wake::Timer);
        match wake {
            Wake::Read(r) => match r {
                Ok(0) => inner.conn.handle_link_lost(Instant::now(), None),
                Ok(_) => {
                    inner.conn.handle_read(Instant::now(), &mut self.rbuf);
                    // Hand deliveries and replies over now, not after the steps.
                    route_messages(inner);
                }
                Err(e) => inner
                    .conn
                    .handle_link_lost(Instant::now(), Some(e.to_string())),
            },
            Wake::Wrote(w) => match w {
                Ok(0) => inner
                    .conn
                    .handle_link_lost(Instant::now(), Some("write returned 0".into())),
                Ok(n) => {
                    self.tx.pos += n;
                    inner.conn.handle_written(Instant::now(), n);
                }
                Err(e) => inner
                    .conn
                    .handle_link_lost(Instant::now(), Some(e.to_string())),
            },
            Wake::Retiring(io) => {
                let Switch::Overlap(o) = &mut self.switch else {
                    return;
                };
                match io {
                    RetiringWake::Read(Ok(n)) if n > 0 => {
                        inner
                            .conn
                            .handle_retiring_read(Instant::now(), &mut o.link, &mut o.rbuf);
                    }
                    RetiringWake::Wrote(Ok(n)) if n > 0 => o.out.advance(n),
                    _ => o.failed = true,
                }
            }
            Wake::Dialed(addr, result) => {
                self.switch = Switch::Idle;
                self.on_dialed(inner, addr, result);
            }
            Wake::Refreshed(fresh) => {
                self.refresh = None;
                check_fresh_credentials(shared, inner, fresh);
            }
            Wake::Notified => {}
            Wake::Timer => {
                self.armed = None;
                inner.conn.handle_timeout(Instant::now());
            }
        }
    }
}

/// One turn of the overlap before the old link retires: count the bound from the new
/// server's registration, probe, cut, and retire once the streams are joined (or the
/// bound passed).
fn overlap_step(shared: &Shared, inner: &mut Inner, o: &mut RetiringIo, now: Instant) {
    let pong_timeout = shared.opts.effective_pong_timeout();
    let registered = probe_registered(inner);
    if registered {
        // The bound counts from when the new server holds the subscriptions: a long
        // replay does not eat into it.
        let bound = later(now, shared.opts.ldm_overlap);
        let retire_at = inner
            .timers
            .get(DriverTimer::Retire)
            .map_or(bound, |t| t.max(bound));
        inner.timers.set(DriverTimer::Retire, retire_at);
        let give_up = later(retire_at, pong_timeout);
        let give_up_at = inner
            .timers
            .get(DriverTimer::RetireGiveUp)
            .map_or(give_up, |t| t.max(give_up));
        inner.timers.set(DriverTimer::RetireGiveUp, give_up_at);
    }
    let done = probe_done(inner);
    let cutting = inner.probe.as_ref().is_some_and(|p| p.marker.is_some());
    // The streams are joined when the cut marker reached the old link (or, without a cut,
    // once the probe is done).
    let joined = o.link.is_cut() || (done && !cutting);
    // Early by up to a timer's resolution, but never closer than PROBE_MIN_GAP.
    let due = |t: Option<Instant>| {
        t.is_none_or(|at| later(now, PROBE_INTERVAL) >= later(at, PROBE_MIN_GAP))
    };
    if joined || inner.timers.is_expired(DriverTimer::Retire, now) {
        if !joined {
            tracing::warn!(
                from = %o.from,
                to = %o.to,
                overlap_ms = shared.opts.ldm_overlap.as_millis() as u64,
                "planned switch: the probe or the cut marker did not come back within \
                 ldm_overlap; ending the old link's subscriptions anyway (servers not in \
                 one cluster, or the probe subject not permitted); duplicates are possible"
            );
        }
        // The cluster knows the new interest and the streams are cut (or the bound
        // passed): end the old link's subscriptions.
        inner.conn.end_overlap(now, &mut o.link);
        end_probe(inner);
        inner.timers.stop(DriverTimer::Retire);
        inner.timers.stop(DriverTimer::Probe);
        inner.timers.stop(DriverTimer::Marker);
        inner
            .timers
            .set(DriverTimer::RetireGiveUp, later(now, pong_timeout));
    } else if done {
        // The old node knows the new interest: after the third-node margin, cut markers
        // on the new link until one comes back through the old node.
        // No more probes: a stale probe deadline would wake the loop at once, every turn.
        inner.timers.stop(DriverTimer::Probe);
        let from = cut_from(inner).unwrap_or(now);
        if now < from {
            inner.timers.set(DriverTimer::Marker, from);
        } else if due(inner.timers.get(DriverTimer::Marker)) {
            if let Some(p) = inner.probe.as_mut().filter(|p| !p.refused) {
                p.marker_seq += 1;
                let seq = p.marker_seq;
                if let Some((_, subject)) = p.marker.clone() {
                    inner.conn.publish_marker(&subject, seq);
                }
            }
            inner
                .timers
                .set(DriverTimer::Marker, later(now, PROBE_INTERVAL));
        }
    } else if (inner.timers.get(DriverTimer::Probe).is_some()
        && due(inner.timers.get(DriverTimer::Probe)))
        | registered
        | inner
            .probe
            .as_mut()
            .is_some_and(|p| std::mem::take(&mut p.send_now))
    {
        let next = send_probe(inner, now, &mut o.out);
        inner.timers.set_or_stop(DriverTimer::Probe, next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transmit_is_idle_once_its_chunk_is_written() {
        let mut tx = Transmit::default();
        assert!(tx.is_idle());
        tx.set(Bytes::from_static(b"PING\r\n"));
        assert!(!tx.is_idle());
        tx.pos += 4;
        assert_eq!(tx.rest(), b"\r\n");
        tx.pos += 2;
        assert!(tx.is_idle());
        assert!(tx.rest().is_empty());
    }
}
