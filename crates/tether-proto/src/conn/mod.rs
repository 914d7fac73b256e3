//! The connection state machine: one client session across links.
//!
//! [`Connection`] holds everything that outlives a single TCP link (the subscription table,
//! the outbound buffer, pending flushes) and the state of the current link (PINGs in
//! flight, unconfirmed counts, timers). It does no I/O and reads no clock.
//!
//! # Call order
//! Once a TCP link is up, the driver runs its [`Handshake`] (the same grammar, apart from
//! the session) and hands the [`Established`] link to [`Connection::adopt_link`]. Then it
//! calls, in a loop:
//! - [`Connection::handle_read`] with every chunk of bytes read;
//! - [`Connection::poll_transmit`] for a chunk to write, then [`Connection::handle_written`]
//!   with the number of bytes the socket accepted;
//! - [`Connection::poll_timeout`] for the next deadline, and [`Connection::handle_timeout`]
//!   when it passes;
//! - [`Connection::handle_link_lost`] on EOF or an I/O error, [`Connection::close_link`]
//!   to end the link on purpose;
//! - [`Connection::poll_event`] and [`Connection::poll_message`] to drain outputs.
//!
//! Handles call [`Connection::publish`], [`Connection::subscribe`],
//! [`Connection::unsubscribe`] and [`Connection::flush`], then wake the driver.
//!
//! # Files
//! - `mod.rs`: [`Connection`], reading, writing, timers, link loss, publishing;
//! - `config.rs`: [`Config`], the `DEFAULT_*` values, [`Auth`];
//! - `event.rs`: [`ConnEvent`] and the reasons it carries;
//! - `handshake.rs`: INFO, CONNECT, the PONGs that complete it, [`HandshakeError`];
//! - `ping.rs`: PINGs (keepalive, confirm, flush) and what their PONGs confirm;
//! - `subs.rs`: the subscription table, UNSUB counts, the replay after a reconnect;
//! - `retire.rs`: the planned switch: the retiring link and the cut.

mod config;
mod event;
mod handshake;
mod ping;
mod retire;
mod subs;
mod timer;

use std::collections::{BTreeSet, VecDeque};

use rustc_hash::FxHashMap;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::decode::Decoder;
use crate::encode;
use crate::headers::HeaderMap;
use crate::info::ServerInfo;
use crate::op::{Msg, ServerOp};
use crate::outbound::{Counts, FrameKind, OutboundBuffer};
use crate::server_err::ServerErr;
use crate::time::saturating_add as later;

pub use config::*;
pub use event::{
    ConnEvent, DisconnectReason, PublishRefused, RemovedReason, ReplayStats, SubEndReason,
    SubscribeRefused,
};
pub use handshake::{Established, Handshake, HandshakeError, TlsIntent};
use ping::PingPurpose;
use ping::{Flushes, LinkAccounting};
use retire::Gate;
pub use retire::RetiringLink;
pub use subs::REPLAY_CHUNK_BYTES;
use subs::{Replay, SubState};
use timer::{Timer, TimerTable};

/// Where the current link is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// No link (a link's [`Handshake`] runs apart; see [`Connection::adopt_link`]).
    Down,
    /// A link whose handshake completed.
    Up,
    /// A closing -ERR arrived: no more writes, reading on until EOF or the grace
    /// ([`CLOSING_READ_GRACE`]) ends.
    Closing {
        /// The -ERR, reported when the link goes down.
        reason: DisconnectReason,
        /// A publish frame was half written when our own bytes caused the -ERR: it is the
        /// likely poison, dropped after the rewind, never resent.
        drop_partial: bool,
    },
}

/// Totals kept by the state machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Messages delivered by the server.
    pub in_msgs: u64,
    /// Payload bytes delivered (header block included).
    pub in_bytes: u64,
    /// Publish frames fully written.
    pub out_msgs: u64,
    /// Payload bytes of the publish frames written (header block included).
    pub out_bytes: u64,
    /// Messages for sids no longer subscribed.
    pub unknown_sid: u64,
    /// `Permissions Violation for Publish` errors that matched no request.
    pub publish_denied: u64,
    /// Frames removed (lowered max_payload, poison frames).
    pub frames_removed: u64,
    /// Handshakes completed.
    pub connects: u64,
    /// Messages delivered without their header block because it could not be parsed.
    pub malformed_headers: u64,
    /// The last subscription replay completed (every chunk written), if any.
    pub last_replay: Option<ReplayStats>,
}

/// The sans-IO connection. See the module docs for the call order.
#[derive(Debug)]
pub struct Connection {
    config: Config,
    decoder: Decoder,
    state: LinkState,
    info: Option<Box<ServerInfo>>,
    max_payload: usize,
    headers_supported: bool,

    out: OutboundBuffer,

    /// PINGs queued and not yet written, with what each is for.
    pings_queued: VecDeque<PingPurpose>,
    /// What was written on this link and what its PONGs confirmed.
    link: LinkAccounting,
    /// PONGs queued on this link and not yet written.
    pongs_unwritten: usize,
    /// Bytes of publish frames written since the last PING (the Confirm timer runs from
    /// the first of them).
    unpinged_bytes: usize,
    timers: TimerTable,
    /// Flushes asked while no link is up: their PINGs go out after the next handshake.
    flush_waiting: Vec<u64>,
    flushes: Flushes,

    /// Looked up for every message: keyed by our own sids, so a fast hash (FxHash) is
    /// enough.
    subs: FxHashMap<u64, SubState>,
    /// The sids of `subs`, in order (oldest first): the replay's order. A set, so that
    /// removing one costs O(log n), not a pass over every subscription (dropping 100,000
    /// subscriptions one by one was quadratic).
    sub_order: BTreeSet<u64>,
    /// SUBs not yet confirmed by a PONG, with the number of PINGs queued before each, in
    /// the order they are written (a subscription ended since may still be listed).
    subs_since_pong: Vec<(u64, u64)>,
    /// The current link's subscription replay, until it and the frames buffered before
    /// it are written.
    replay: Option<Replay>,
    /// PINGs queued and PONGs received on this link (after the handshake).
    pings_total: u64,
    pongs_total: u64,
    next_sid: u64,

    events: VecDeque<ConnEvent>,
    messages: VecDeque<Msg>,
    stats: ConnStats,
    /// A planned switch's cut: the current (new) link's deliveries held until the
    /// retired link shows where the two streams join.
    gate: Option<Gate>,
    /// Requests cancelled while their frames were in flight: not resent after a rewind.
    cancelled_in_flight: Vec<u64>,
}

impl Connection {
    /// A session with no link yet.
    /// (`_now` keeps the handlers' grammar: nothing runs until a link is adopted.)
    pub fn new(config: Config, _now: Instant) -> Self {
        let decoder = Decoder::new(config.decoder);
        let max_payload = config.assumed_max_payload;
        Self {
            out: OutboundBuffer::new(config.buffer),
            decoder,
            state: LinkState::Down,
            info: None,
            max_payload,
            headers_supported: true,
            pings_queued: VecDeque::new(),
            link: LinkAccounting::default(),
            pongs_unwritten: 0,
            unpinged_bytes: 0,
            timers: TimerTable::default(),
            flush_waiting: Vec::new(),
            flushes: Flushes::default(),
            subs: FxHashMap::default(),
            sub_order: BTreeSet::new(),
            subs_since_pong: Vec::new(),
            replay: None,
            pings_total: 0,
            pongs_total: 0,
            next_sid: 1,
            events: VecDeque::new(),
            messages: VecDeque::new(),
            stats: ConnStats::default(),
            gate: None,
            cancelled_in_flight: Vec::new(),
            config,
        }
    }

    /// The current link state.
    pub fn state(&self) -> &LinkState {
        &self.state
    }

    /// True when the handshake has completed on the current link.
    pub fn is_up(&self) -> bool {
        self.state == LinkState::Up
    }

    /// The last INFO seen.
    pub fn server_info(&self) -> Option<&ServerInfo> {
        self.info.as_deref()
    }

    /// The max_payload in force.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Totals.
    pub fn stats(&self) -> ConnStats {
        self.stats
    }

    /// PUB/HPUB frames counted against the buffer bounds.
    pub fn buffered(&self) -> Counts {
        self.out.counted()
    }

    /// PUB/HPUB frames not yet written.
    pub fn unsent(&self) -> Counts {
        self.out.unsent()
    }

    /// PUB/HPUB frames written on this link and not yet confirmed by a PONG.
    pub fn unconfirmed(&self) -> Counts {
        self.link.unconfirmed()
    }

    /// False after a closing -ERR: the driver stops writing, even a chunk half written
    /// (what it holds is rewound and resent on the next link).
    pub fn may_write(&self) -> bool {
        !matches!(self.state, LinkState::Closing { .. })
    }

    /// True when nothing waits to be written.
    pub fn is_write_idle(&self) -> bool {
        self.out.is_idle() && !self.replay_unsent()
    }

    /// Bytes read from the socket. Decodes every complete op in `buf` and leaves the
    /// rest there for the next call.
    pub fn handle_read(&mut self, now: Instant, buf: &mut BytesMut) {
        if buf.is_empty() {
            return;
        }
        if self.state == LinkState::Up {
            // Keepalive after ping_interval of inbound silence (outbound traffic proves
            // nothing).
            self.timers
                .set(Timer::Keepalive, later(now, self.config.ping_interval));
        }
        loop {
            if matches!(self.state, LinkState::Down) {
                buf.clear();
                return;
            }
            match self.decoder.decode(buf) {
                Ok(Some(op)) => self.handle_op(now, op),
                Ok(None) => return,
                Err(e) => {
                    self.link_down(DisconnectReason::Protocol(e));
                    buf.clear();
                    return;
                }
            }
        }
    }

    fn handle_op(&mut self, now: Instant, op: ServerOp) {
        match op {
            ServerOp::Msg(msg) => self.handle_current_msg(msg),
            ServerOp::Ping => self.queue_pong(),
            ServerOp::Pong => self.handle_pong(),
            ServerOp::Info(info) => self.handle_info(info),
            ServerOp::Ok => {}
            ServerOp::Err(text) => self.handle_err(now, text),
        }
    }

    fn handle_info(&mut self, info: Box<ServerInfo>) {
        match self.state {
            LinkState::Up | LinkState::Closing { .. } => {
                // Only frames not yet handed to the writer can be removed: a chunk in
                // flight cannot be recalled. A frame in it over the new limit reaches the
                // server, whose `Maximum Payload Violation` reports it (FramesRemoved,
                // poison frame) with everything else unconfirmed; it is never resent.
                let lowered = info.max_payload < self.max_payload;
                self.max_payload = info.max_payload;
                // Later INFOs may repeat `ldm`: act on the first one of this link only.
                let ldm = info.ldm && !self.info.as_ref().is_some_and(|i| i.ldm);
                self.info = Some(info.clone());
                if lowered {
                    self.remove_over_max_payload();
                }
                self.events.push_back(ConnEvent::InfoUpdated(info));
                if ldm {
                    self.events.push_back(ConnEvent::LameDuck);
                }
            }
            LinkState::Down => {}
        }
    }

    fn remove_over_max_payload(&mut self) {
        let limit = self.max_payload;
        let removed = self.out.remove_pending(|f| f.payload_len as usize > limit);
        if removed.msgs > 0 {
            self.stats.frames_removed += removed.msgs;
            self.events.push_back(ConnEvent::FramesRemoved {
                reason: RemovedReason::MaxPayloadLowered { max_payload: limit },
                counts: removed,
            });
            self.events.push_back(ConnEvent::BufferSpace);
        }
    }

    fn handle_err(&mut self, now: Instant, text: String) {
        let err = ServerErr::parse(&text);
        match err {
            err if err.is_fatal() => {
                let drop_partial = err.is_ours() && self.remove_poison();
                self.begin_closing(now, DisconnectReason::ServerError(err), drop_partial);
            }
            err @ ServerErr::SubPermission { .. } => self.end_refused_subs(err),
            ServerErr::PubPermission {
                subject,
                reply,
                text,
            } => {
                self.events.push_back(ConnEvent::PublishDenied {
                    subject,
                    reply,
                    message: text,
                });
            }
            ServerErr::MaxSubscriptions => match self.subs_since_pong.pop() {
                // The newest SUB not confirmed is the one refused. Entries stay when a
                // subscription ends (a pass over the list per unsubscribe would make
                // dropping many subscriptions quadratic): one gone since has nothing
                // left to end.
                Some((_, sid)) => {
                    if self.subs.contains_key(&sid) {
                        self.remove_sub(sid);
                        self.events.push_back(ConnEvent::SubscriptionEnded {
                            sid,
                            reason: SubEndReason::MaxSubscriptionsExceeded(text),
                        });
                    }
                }
                None => self
                    .events
                    .push_back(ConnEvent::ServerError(ServerErr::MaxSubscriptions)),
            },
            err => self.events.push_back(ConnEvent::ServerError(err)),
        }
    }

    /// A closing -ERR our own bytes caused: what was written since the last PONG is the
    /// likely poison, reported as removed (not unconfirmed) and never resent. True when a
    /// publish frame is half written: the likely poison, dropped after the rewind.
    fn remove_poison(&mut self) -> bool {
        let removed = self.out.discard_retained();
        let unconfirmed = self.unconfirmed();
        let mut counts = Counts {
            msgs: unconfirmed.msgs.max(removed.msgs),
            bytes: unconfirmed.bytes.max(removed.bytes),
        };
        // The server rejects a large frame after its control line, often before it is
        // fully written: that frame is the likely poison. It is dropped after the rewind,
        // never resent.
        let partial = self.out.partial_front().filter(|f| f.kind.is_publish());
        if let Some(f) = partial {
            counts.msgs += 1;
            counts.bytes += u64::from(f.len);
        }
        self.events.push_back(ConnEvent::BufferSpace);
        // They are reported as removed, not as unconfirmed.
        self.link.confirm_all();
        if counts.msgs > 0 {
            self.stats.frames_removed += counts.msgs;
            self.events.push_back(ConnEvent::FramesRemoved {
                reason: RemovedReason::PoisonFrame,
                counts,
            });
        }
        partial.is_some()
    }

    /// The publisher's denied publish matched no request: count it.
    pub fn note_publish_denied(&mut self) {
        self.stats.publish_denied += 1;
    }

    /// A closing -ERR: no more writes; the link is read for [`CLOSING_READ_GRACE`].
    fn begin_closing(&mut self, now: Instant, reason: DisconnectReason, drop_partial: bool) {
        match &mut self.state {
            LinkState::Up => {
                self.state = LinkState::Closing {
                    reason,
                    drop_partial,
                };
                // Only the grace runs now: no writes, no PINGs.
                self.timers.stop_all();
                self.timers
                    .set(Timer::Closing, later(now, CLOSING_READ_GRACE));
            }
            LinkState::Closing {
                drop_partial: d, ..
            } => *d |= drop_partial,
            LinkState::Down => {}
        }
    }

    /// The link ended (EOF, `error` None, or an I/O error). After a closing -ERR the
    /// reason is that error.
    /// (Nothing is timed once the link is gone: `_now` keeps the handlers' grammar.)
    pub fn handle_link_lost(&mut self, _now: Instant, error: Option<String>) {
        let reason = match (&self.state, error) {
            (LinkState::Closing { reason, .. }, _) => reason.clone(),
            (_, Some(e)) => DisconnectReason::Io(e),
            (_, None) => DisconnectReason::Eof,
        };
        self.link_down(reason);
    }

    /// Close the current link on purpose (close, force_reconnect, a planned switch with
    /// no other server: `reason` is [`DisconnectReason::Requested`]). Reports like any
    /// loss.
    pub fn close_link(&mut self, _now: Instant, reason: DisconnectReason) {
        self.link_down(reason);
    }

    /// The link is gone: rewind the outbound stream, fail or re-arm its flushes, report.
    fn link_down(&mut self, reason: DisconnectReason) {
        if self.state == LinkState::Down {
            return;
        }
        let unconfirmed = self.unconfirmed();
        // Retained frames (resend_unconfirmed) go first, then what was never written.
        let cancelled = std::mem::take(&mut self.cancelled_in_flight);
        self.out.rewind(|f| Self::kept_at_rewind(&cancelled, f));
        if matches!(
            self.state,
            LinkState::Closing {
                drop_partial: true,
                ..
            }
        ) {
            // The poison frame cut in half is first now (retained frames were discarded).
            self.out.drop_first_pending();
        }
        let buffered_requests: Vec<u64> = self.out.buffered_requests().collect();
        // Flushes waiting for a PONG on this link.
        let mut failed = Vec::new();
        for p in self.pings_queued.drain(..) {
            if let PingPurpose::Flush(t) = p {
                failed.push(t);
            }
        }
        for p in self.link.pings_out.drain(..) {
            if let PingPurpose::Flush(t) = p.purpose {
                failed.push(t);
            }
        }
        for token in failed {
            if self.config.resend_unconfirmed {
                // The frames are resent, so the flush waits for a PING on the next link.
                if self.flushes.contains(token) {
                    self.flush_waiting.push(token);
                }
            } else if self.flushes.remove(token) {
                self.events
                    .push_back(ConnEvent::FlushFailed { token, unconfirmed });
            }
        }
        self.reset_link_state();
        self.events.push_back(ConnEvent::Disconnected {
            reason,
            unconfirmed,
            buffered_requests,
        });
    }

    fn reset_link_state(&mut self) {
        self.state = LinkState::Down;
        if self.out.has_in_flight() {
            let cancelled = std::mem::take(&mut self.cancelled_in_flight);
            self.out.rewind(|f| Self::kept_at_rewind(&cancelled, f));
        }
        self.cancelled_in_flight.clear();
        self.pings_queued.clear();
        self.pongs_unwritten = 0;
        self.reset_link_counters();
        self.decoder = Decoder::new(self.config.decoder);
    }

    /// Per-link accounting starts again (a new link, or a planned switch).
    fn reset_link_counters(&mut self) {
        // PINGs still queued (a planned switch keeps them) go out on the next link.
        self.pings_total = self.pings_queued.len() as u64;
        self.pongs_total = 0;
        self.link = LinkAccounting::default();
        self.unpinged_bytes = 0;
        self.timers.stop_all();
        self.subs_since_pong.clear();
        // A replay not completed is dropped: the next link replays everything.
        self.replay = None;
    }

    /// A deadline from [`Self::poll_timeout`] passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired = |t: Timer| self.timers.is_expired(t, now);
        let reason = if expired(Timer::Closing) {
            match &self.state {
                LinkState::Closing { reason, .. } => reason.clone(),
                _ => DisconnectReason::Eof,
            }
        } else if self.state != LinkState::Up {
            return;
        } else if expired(Timer::WriteStall) {
            // Data pending and no byte accepted for write_stall_timeout.
            DisconnectReason::WriteStall {
                timeout: self.config.write_stall_timeout,
            }
        } else if expired(Timer::Pong) {
            DisconnectReason::PongTimeout {
                timeout: self.config.pong_timeout,
            }
        } else if expired(Timer::Keepalive)
            && self.link.pings_out.len() + self.pings_queued.len()
                >= self.config.max_pings_outstanding
        {
            DisconnectReason::TooManyPingsOutstanding {
                max: self.config.max_pings_outstanding,
            }
        } else {
            if expired(Timer::Keepalive) {
                self.timers
                    .set(Timer::Keepalive, later(now, self.config.ping_interval));
                self.queue_ping(PingPurpose::Keepalive);
            }
            self.maybe_confirm(now);
            return;
        };
        self.link_down(reason);
    }

    /// The next deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_timeout()
    }

    /// The unwritten rest of the chunk in flight, for a writer that takes over a chunk
    /// another writer started (the caller's direct write of a request, see the driver).
    pub fn in_flight_rest(&self) -> Option<Bytes> {
        self.out.in_flight_rest()
    }

    /// The next chunk to write, if any. Returns `None` while a chunk is in flight.
    ///
    /// On a link just adopted the subscription replay comes first, one bounded chunk per
    /// call (see [`Self::adopt_link`]); the buffered frames follow once it is written.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        if self.state != LinkState::Up || self.out.has_in_flight() {
            return None;
        }
        let chunk = if let Some(chunk) = self.next_replay_chunk(now) {
            self.out.take_control_chunk(chunk)
        } else {
            let chunk = self.out.take_chunk();
            self.buffered_taken(chunk.is_some());
            chunk?
        };
        self.timers.set(
            Timer::WriteStall,
            later(now, self.config.write_stall_timeout),
        );
        Some(chunk)
    }

    /// The socket accepted `n` bytes of the chunk from [`Self::poll_transmit`].
    ///
    /// After a closing -ERR ([`LinkState::Closing`]) the driver stops writing (see
    /// [`Self::may_write`]); bytes reported written anyway are ignored: the server acts on
    /// nothing after its -ERR, so those frames count as never written and are resent.
    pub fn handle_written(&mut self, now: Instant, n: usize) {
        if self.state != LinkState::Up || !self.out.has_in_flight() {
            return;
        }
        let retain = self.config.resend_unconfirmed;
        let retain_requests = self.config.retain_requests;
        let mut freed = false;
        // The closure borrows the fields it updates; advance borrows the buffer.
        self.out
            .advance(n, retain, retain_requests, |w| match w.frame.kind {
                FrameKind::Pub | FrameKind::Request(_) => {
                    if let FrameKind::Request(t) = w.frame.kind {
                        // Written after all: beyond recall, nothing to drop later.
                        if !self.cancelled_in_flight.is_empty() {
                            self.cancelled_in_flight.retain(|c| *c != t);
                        }
                    }
                    // `count` frames alike (a run of equal PUBs), accounted at once.
                    let count = u64::from(w.count);
                    let bytes = u64::from(w.frame.len) * count;
                    self.link.written.msgs += count;
                    self.link.written.bytes += bytes;
                    self.stats.out_msgs += count;
                    self.stats.out_bytes += u64::from(w.frame.payload_len) * count;
                    let retained = match w.frame.kind {
                        FrameKind::Pub => retain,
                        _ => retain_requests,
                    };
                    if retained {
                        self.link.written_retained += count;
                    }
                    if !(retained && w.frame.kind == FrameKind::Pub) {
                        freed = true;
                    }
                    if self.timers.get(Timer::Confirm).is_none() {
                        // The first frame not covered by a PING: the next one is due at
                        // most confirm_interval later.
                        let at = later(now, self.config.confirm_interval);
                        self.timers.set(Timer::Confirm, at);
                    }
                    self.unpinged_bytes += bytes as usize;
                }
                FrameKind::Ping => {
                    // PINGs are never merged: `count` is 1; each is accounted anyway.
                    for _ in 0..w.count {
                        let purpose = self
                            .pings_queued
                            .pop_front()
                            .unwrap_or(PingPurpose::Confirm);
                        self.link.ping_written(purpose, now);
                    }
                    self.timers.stop(Timer::Confirm);
                    self.unpinged_bytes = 0;
                }
                FrameKind::Pong => {
                    self.pongs_unwritten = self.pongs_unwritten.saturating_sub(w.count as usize)
                }
                FrameKind::Control => {}
            });
        if !self.out.has_in_flight() {
            self.timers.stop(Timer::WriteStall);
            self.buffered_written();
        } else if n > 0 {
            self.timers.set(
                Timer::WriteStall,
                later(now, self.config.write_stall_timeout),
            );
        }
        self.rearm_pong_timer();
        if freed {
            self.events.push_back(ConnEvent::BufferSpace);
        }
        if self.unpinged_bytes >= self.config.confirm_bytes {
            self.queue_ping(PingPurpose::Confirm);
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ConnEvent> {
        self.events.pop_front()
    }

    /// True while events wait for [`Self::poll_event`].
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Removes the [`ConnEvent::BufferSpace`] events at the front of the queue; true if
    /// there were any. For a writer other than the driver (a caller's direct write),
    /// which acts on freed space itself and leaves any other event to the driver.
    pub fn take_buffer_space(&mut self) -> bool {
        let mut any = false;
        while matches!(self.events.front(), Some(ConnEvent::BufferSpace)) {
            self.events.pop_front();
            any = true;
        }
        any
    }

    /// The next delivered message, if any.
    pub fn poll_message(&mut self) -> Option<Msg> {
        self.messages.pop_front()
    }

    /// Check that a publish could be buffered: size limits, header support, link state.
    /// Returns the encoded frame length. Does not check the buffer bounds.
    pub fn check_publish(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&HeaderMap>,
        payload_len: usize,
    ) -> Result<usize, PublishRefused> {
        let headers_len = headers.map(HeaderMap::encoded_len);
        let size = headers_len.unwrap_or(0) + payload_len;
        if size > self.max_payload {
            return Err(PublishRefused::MaxPayload {
                size,
                limit: self.max_payload,
            });
        }
        if headers.is_some() && !self.headers_supported {
            return Err(PublishRefused::HeadersNotSupported);
        }
        let line = encode::pub_control_line_len(subject, reply, headers_len, payload_len);
        if line > self.config.max_control_line {
            return Err(PublishRefused::ControlLineTooLong {
                len: line,
                limit: self.config.max_control_line,
            });
        }
        // The frame: control line, CRLF, header block and payload, CRLF.
        let frame = line + 2 + size + 2;
        if frame > self.config.buffer.max_bytes {
            return Err(PublishRefused::TooLargeForBuffer {
                frame,
                limit: self.config.buffer.max_bytes,
            });
        }
        if !self.config.buffer_while_disconnected && !self.is_up() {
            return Err(PublishRefused::Disconnected);
        }
        Ok(frame)
    }

    /// Buffer a PUB/HPUB frame. Subjects and headers must already be validated.
    pub fn publish(
        &mut self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        kind: FrameKind,
    ) -> Result<(), PublishRefused> {
        let frame = self.check_publish(subject, reply, headers, payload.len())?;
        if !self.out.has_room(frame) {
            let c = self.out.counted();
            return Err(PublishRefused::BufferFull {
                bytes: c.bytes,
                msgs: c.msgs,
                connected: self.is_up(),
            });
        }
        let payload_len = headers.map_or(0, HeaderMap::encoded_len) + payload.len();
        self.out.push(kind, payload_len, |buf| {
            // The frame's length is known: one reserve, no second count.
            buf.reserve(frame);
            match headers {
                Some(h) => encode::encode_hpub(buf, subject, reply, h, payload),
                None => encode::put_pub(buf, subject, reply, payload),
            }
        });
        Ok(())
    }

    /// Tokens of the requests whose frames are pending: not yet handed to the writer, so
    /// surely not written (those [`Self::remove_requests`] can remove).
    pub fn pending_requests(&self) -> impl Iterator<Item = u64> + '_ {
        self.out.pending_requests()
    }

    /// A request's caller gave up (timeout, a dropped future) or was told it failed: its
    /// frame must never be sent. A pending frame is removed now; one in the chunk being
    /// written goes out if the socket takes it, and is dropped, not resent, if the link
    /// drops first. A written frame is beyond recall.
    pub fn cancel_request(&mut self, token: u64) {
        if self.remove_requests(|t| t == token).msgs == 0 && self.out.in_flight_request(token) {
            self.cancelled_in_flight.push(token);
        }
    }

    /// Whether a frame survives a rewind: publishes do, except cancelled requests.
    fn kept_at_rewind(cancelled: &[u64], f: &crate::outbound::Frame) -> bool {
        match f.kind {
            FrameKind::Request(t) => !cancelled.contains(&t),
            kind => kind.is_publish(),
        }
    }

    /// Remove the frames of the requests for which `pred(token)` is true, if they are still
    /// pending (not yet handed to the writer): their callers gave up or were told the
    /// request failed, so they must never be sent. Frames in flight, written or retained
    /// stay (see [`Self::cancel_request`]). Returns what was removed.
    pub fn remove_requests(&mut self, mut pred: impl FnMut(u64) -> bool) -> Counts {
        let removed = self.out.remove_pending(|f| match f.kind {
            FrameKind::Request(t) => pred(t),
            _ => false,
        });
        if removed.msgs > 0 {
            self.events.push_back(ConnEvent::BufferSpace);
        }
        removed
    }

    /// Drop all buffered frames (the client is closing for good). Returns what was unsent.
    pub fn clear_buffer(&mut self) -> Counts {
        let unsent = self.out.unsent();
        self.out.clear();
        unsent
    }
}
