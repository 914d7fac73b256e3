//! The planned switch (make-before-break): the retiring link, and the cut that joins its
//! stream of deliveries to the new link's.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::decode::Decoder;
use crate::encode;
use crate::op::{Msg, ServerOp, Subject};
use crate::outbound::{Counts, FrameKind, Retained};
use crate::server_err::ServerErr;

use super::{ConnEvent, Connection, LinkAccounting, LinkState, PingPurpose};

/// The hold on the new link's deliveries during a planned switch's cut.
#[derive(Debug)]
pub(super) struct Gate {
    marker: u64,
    exempt: u64,
    /// The highest marker sequence number seen on the current link.
    segment: u64,
    held: VecDeque<(u64, Msg)>,
    /// What the retiring link delivered before the cut (plain subscriptions), by
    /// [`fingerprint`], with how many times: a held delivery from before the cut is
    /// dropped only against one of these.
    delivered_old: HashMap<u64, u32>,
}

impl Gate {
    /// The retiring link delivered `msg` before the cut.
    fn delivered_old(&mut self, msg: &Msg) {
        *self.delivered_old.entry(fingerprint(msg)).or_insert(0) += 1;
    }

    /// True (once per delivery seen) when the retiring link delivered a copy of `msg`.
    fn take_delivered_old(&mut self, msg: &Msg) -> bool {
        let key = fingerprint(msg);
        let Some(n) = self.delivered_old.get_mut(&key) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            self.delivered_old.remove(&key);
        }
        true
    }
}

/// What identifies a delivery across the two links of a switch: its subscription,
/// subject, reply, size and payload (core NATS messages carry no id).
fn fingerprint(msg: &Msg) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    msg.sid.hash(&mut h);
    msg.subject.as_str().hash(&mut h);
    msg.reply.as_ref().map(Subject::as_str).hash(&mut h);
    msg.wire_size.hash(&mut h);
    msg.payload.hash(&mut h);
    h.finish()
}

/// A cut marker's sequence number (its payload, in decimal).
fn marker_seq(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload).ok()?.parse().ok()
}

/// A link retired by a planned switch (lame duck mode, force_reconnect, a new server
/// pool): it keeps delivering for the overlap, then gets UNSUB for everything and a last
/// PING, and is closed once that PONG confirms what was written on it.
#[derive(Debug)]
pub struct RetiringLink {
    decoder: Decoder,
    /// What was written on this link and what its PONGs confirmed.
    acct: LinkAccounting,
    /// PONGs, the cut marker's SUB, the retiring UNSUBs and PING, to write on this link.
    out: BytesMut,
    retire: Retire,
    /// The sid of the cut marker subscribed on this link too (see [`Connection::gate_switch`]).
    marker: Option<u64>,
    /// The marker sequence number at which the two streams were cut.
    cut: Option<u64>,
    /// Frames written on this link and retained for resending until it confirms them.
    retained: Retained,
    /// Flushes asked before the switch whose PING goes out on the new link: they also
    /// wait for this link's last PONG (see [`super::ping::Flushes`]).
    flushes: Vec<u64>,
}

/// Where a retiring link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retire {
    /// It delivers for the overlap.
    Overlap,
    /// UNSUB for everything and the last PING are queued; waiting for its PONG.
    LastPing,
    /// The last PONG arrived: the server processed everything written on the link.
    Retired,
    /// An -ERR that closes it, or bad bytes; `last_ping` says whether it was queued.
    Failed { last_ping: bool },
}

impl RetiringLink {
    /// True once the retiring PONG arrived or the link failed: close it.
    pub fn is_done(&self) -> bool {
        matches!(self.retire, Retire::Retired | Retire::Failed { .. })
    }

    /// True once the overlap ended: UNSUB and the last PING were queued
    /// ([`Connection::end_overlap`]).
    pub fn overlap_ended(&self) -> bool {
        matches!(
            self.retire,
            Retire::LastPing | Retire::Retired | Retire::Failed { last_ping: true }
        )
    }

    /// True once the cut marker arrived on this link: the new link delivers from here on.
    pub fn is_cut(&self) -> bool {
        self.cut.is_some()
    }

    /// True once the retiring PONG arrived: the server processed every frame written on
    /// this link. A link done without it (closed, an -ERR, bad bytes) may have lost some.
    pub fn is_retired(&self) -> bool {
        self.retire == Retire::Retired
    }

    /// Publish frames written on this link and not confirmed.
    pub fn unconfirmed(&self) -> Counts {
        self.acct.unconfirmed()
    }

    /// The link failed: what it still owes is reported when it is finished.
    fn fail(&mut self) {
        self.retire = match self.retire {
            Retire::Overlap => Retire::Failed { last_ping: false },
            Retire::LastPing => Retire::Failed { last_ping: true },
            done => done,
        };
    }

    /// Bytes to write on this link (PONGs, the retiring UNSUBs and PING).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }
}

impl Connection {
    /// A delivery on the current link: held while a planned switch's gate is closed.
    pub(super) fn handle_current_msg(&mut self, msg: Msg) {
        let queue = self.is_queue_sub(msg.sid);
        if let Some(g) = self.gate.as_mut() {
            if msg.sid == g.marker {
                if let Some(seq) = marker_seq(&msg.payload) {
                    g.segment = g.segment.max(seq);
                }
                return;
            }
            // Queue groups get one copy per group, and the probe is the driver's own.
            if !queue && msg.sid != g.exempt {
                g.held.push_back((g.segment, msg));
                return;
            }
        }
        self.handle_msg(msg);
    }

    /// True when a planned switch may retire the current link now: it is up, its
    /// subscription replay is written and caught up, and no data chunk is half written
    /// (publishing switches at a frame boundary).
    pub fn can_retire_link(&self) -> bool {
        self.state == LinkState::Up && self.replay.is_none() && !self.out.has_in_flight()
    }

    /// Retire the current link for a planned switch. Pending frames (and the PINGs queued
    /// among them) stay for the next link; frames written on this link are confirmed, or
    /// reported, through the returned [`RetiringLink`].
    pub fn retire_link(&mut self) -> Option<RetiringLink> {
        if !self.can_retire_link() {
            return None;
        }
        let flushes: Vec<u64> = self
            .pings_queued
            .iter()
            .filter_map(|p| match p {
                PingPurpose::Flush(t) => Some(*t),
                _ => None,
            })
            .collect();
        for token in &flushes {
            self.flushes.span(*token);
        }
        let link = RetiringLink {
            decoder: std::mem::replace(&mut self.decoder, Decoder::new(self.config.decoder)),
            acct: std::mem::take(&mut self.link),
            out: BytesMut::new(),
            retire: Retire::Overlap,
            marker: None,
            cut: None,
            retained: self.out.take_retained(),
            flushes,
        };
        self.state = LinkState::Down;
        self.reset_link_counters();
        Some(link)
    }

    /// Bytes read from a retiring link: deliveries go to the subscriptions as usual,
    /// server PINGs are answered on that link, PONGs confirm what was written on it.
    pub fn handle_retiring_read(
        &mut self,
        _now: Instant,
        link: &mut RetiringLink,
        buf: &mut BytesMut,
    ) {
        loop {
            match link.decoder.decode(buf) {
                Ok(Some(ServerOp::Msg(msg))) => {
                    if link.marker == Some(msg.sid) {
                        if link.cut.is_none() {
                            if let Some(k) = marker_seq(&msg.payload) {
                                // The streams join here: what the new link delivered
                                // before marker k reached this node before it too.
                                link.cut = Some(k);
                                self.release_gate(Some(k));
                            }
                        }
                        continue;
                    }
                    let plain = !self.is_queue_sub(msg.sid);
                    if link.cut.is_some() && plain {
                        continue; // after the cut the new link delivers it
                    }
                    if let Some(g) = self.gate.as_mut().filter(|_| plain) {
                        g.delivered_old(&msg);
                    }
                    self.handle_msg(msg);
                }
                Ok(Some(ServerOp::Ping)) => encode::encode_pong(&mut link.out),
                Ok(Some(ServerOp::Pong)) => {
                    let Some((ping, released)) = link.acct.on_pong() else {
                        continue;
                    };
                    if released > 0 {
                        self.out.release_from(&mut link.retained, released);
                        self.events.push_back(ConnEvent::BufferSpace);
                    }
                    match ping.purpose {
                        PingPurpose::Flush(token) => self.flush_confirmed(token),
                        PingPurpose::Retire => {
                            link.retire = Retire::Retired;
                            // Flushes that spanned the switch: the old part is confirmed.
                            for token in std::mem::take(&mut link.flushes) {
                                self.flush_confirmed(token);
                            }
                        }
                        PingPurpose::Keepalive | PingPurpose::Confirm => {}
                    }
                }
                Ok(Some(ServerOp::Err(text))) => {
                    let err = ServerErr::parse(&text);
                    if err.is_fatal() {
                        link.fail();
                    }
                    self.events.push_back(ConnEvent::ServerError(err));
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => {
                    link.fail();
                    buf.clear();
                    return;
                }
            }
        }
    }

    /// Start a planned switch's cut. `marker_sid` is a subscription to `subject` made on
    /// the current (new) link with [`Self::subscribe`]; it is subscribed on `link` too,
    /// with the same sid. From now on the current link's deliveries (but for queue
    /// subscriptions and `exempt`) are held, each tagged with the last marker sequence
    /// number seen on the current link. Markers published on the current link
    /// ([`Self::publish_marker`]) reach `link` through the old node; the first to arrive
    /// there, k, is the cut: held deliveries tagged below k that `link` delivered too are
    /// dropped (the new node processed them before marker k, so they reached the old
    /// node, and `link`, before it too), the rest are delivered, and `link` drops what it
    /// delivers after k (see [`Self::release_gate`]).
    pub fn gate_switch(
        &mut self,
        link: &mut RetiringLink,
        subject: &str,
        marker_sid: u64,
        exempt: u64,
    ) {
        encode::encode_sub(&mut link.out, subject, None, marker_sid);
        link.marker = Some(marker_sid);
        self.gate = Some(Gate {
            marker: marker_sid,
            exempt,
            segment: 0,
            held: VecDeque::new(),
            delivered_old: HashMap::new(),
        });
    }

    /// Publish cut marker `seq` on the current link (a control frame: never counted,
    /// retained or resent).
    pub fn publish_marker(&mut self, subject: &str, seq: u64) {
        if self.state != LinkState::Up {
            return;
        }
        self.out.push(FrameKind::Control, 0, |buf| {
            encode::encode_pub(buf, subject, None, seq.to_string().as_bytes());
        });
    }

    /// End the cut's hold. With the cut's marker `from`, held deliveries tagged below it
    /// are dropped as duplicates when the retiring link delivered a copy of them; without
    /// it (the old link died, or the wait reached its bound) everything held is
    /// delivered.
    ///
    /// A delivery the new node sent before marker k reached the old node before k too,
    /// when it was published on one of the two nodes. From a third node it travels two
    /// routes that need not keep that order: its copy on the retiring link can arrive
    /// after k, where it is dropped. So a held delivery is dropped only against a copy
    /// the retiring link delivered, never on its position alone.
    pub fn release_gate(&mut self, from: Option<u64>) {
        let Some(mut g) = self.gate.take() else {
            return;
        };
        for (segment, msg) in std::mem::take(&mut g.held) {
            let before_cut = from.is_some_and(|k| segment < k);
            if !(before_cut && g.take_delivered_old(&msg)) {
                self.handle_msg(msg);
            }
        }
    }

    /// The overlap is over: UNSUB every subscription and a last PING on the retiring link.
    pub fn end_overlap(&mut self, now: Instant, link: &mut RetiringLink) {
        link.retire = match link.retire {
            Retire::Overlap => Retire::LastPing,
            Retire::Failed { last_ping: false } => Retire::Failed { last_ping: true },
            _ => return,
        };
        for sid in &self.sub_order {
            encode::encode_unsub(&mut link.out, *sid, None);
        }
        encode::encode_ping(&mut link.out);
        link.acct.ping_written(PingPurpose::Retire, now);
    }

    /// The retiring link is closed. Returns what stayed unconfirmed on it. Flushes that
    /// waited on it fail (or, with resend_unconfirmed, re-arm on the current link).
    pub fn finish_retiring(&mut self, link: RetiringLink) -> Counts {
        let unconfirmed = link.unconfirmed();
        let waiting = link.acct.pings_out.iter().filter_map(|p| match p.purpose {
            PingPurpose::Flush(token) => Some(token),
            _ => None,
        });
        let tokens: Vec<u64> = waiting.chain(link.flushes.iter().copied()).collect();
        for token in tokens {
            if !self.flushes.contains(token) {
                continue; // cancelled, or failed with the current link already
            }
            if self.config.resend_unconfirmed {
                // The frames are resent below: confirm them on the current link alone.
                self.flush(token);
            } else {
                self.flushes.remove(token);
                self.events
                    .push_back(ConnEvent::FlushFailed { token, unconfirmed });
            }
        }
        // Written on the old link and never confirmed: resend on the current one, within
        // its limit (its server may allow less than the old one did).
        self.out.requeue(link.retained);
        self.remove_over_max_payload();
        unconfirmed
    }
}
