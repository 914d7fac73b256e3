//! The subscription table: SUB, UNSUB (counts relative to the current link), the replay
//! after a reconnect (a cursor handing out bounded chunks), and subscriptions the server
//! ends.

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::encode;
use crate::op::Msg;
use crate::outbound::FrameKind;
use crate::server_err::ServerErr;

use super::{ConnEvent, Connection, LinkState, ReplayStats, SubEndReason, SubscribeRefused};

#[derive(Debug, Clone)]
pub(super) struct SubState {
    pub(super) subject: String,
    pub(super) queue: Option<String>,
    pub(super) max: Option<u64>,
    pub(super) delivered: u64,
    /// `delivered` when the SUB went out on the current link: the server counts an
    /// UNSUB's maximum from there, so a count given later is sent relative to it.
    pub(super) base: u64,
    /// UNSUB sent by drain; deliveries still accepted until [`Connection::forget`].
    pub(super) draining: bool,
}

impl Connection {
    pub(super) fn is_queue_sub(&self, sid: u64) -> bool {
        self.subs.get(&sid).is_some_and(|s| s.queue.is_some())
    }

    pub(super) fn handle_msg(&mut self, msg: Msg) {
        self.stats.in_msgs += 1;
        self.stats.in_bytes += msg.wire_size as u64;
        if msg.malformed_headers {
            self.stats.malformed_headers += 1;
        }
        let sid = msg.sid;
        let Some(sub) = self.subs.get_mut(&sid) else {
            self.stats.unknown_sid += 1;
            return;
        };
        sub.delivered += 1;
        let done = sub.max.is_some_and(|m| sub.delivered >= m);
        self.messages.push_back(msg);
        if done {
            self.remove_sub(sid);
            self.events.push_back(ConnEvent::SubscriptionEnded {
                sid,
                reason: SubEndReason::MaxReached,
            });
        }
    }

    /// A `Permissions Violation for Subscription`: end the subscriptions it names.
    /// An error that names no subscription of ours is reported as it is.
    pub(super) fn end_refused_subs(&mut self, err: ServerErr) {
        let ServerErr::SubPermission {
            subject,
            queue,
            sid,
            any_queue,
            text,
        } = &err
        else {
            self.events.push_back(ConnEvent::ServerError(err));
            return;
        };
        let (subject, queue, sid, any_queue) =
            (subject.as_str(), queue.as_deref(), *sid, *any_queue);
        // A sid names exactly one subscription; else the subject and the queue (none: the
        // plain subscriptions only, so a permission that allows only queue subscriptions
        // on S does not end those).
        let sids: Vec<u64> = match sid {
            Some(sid) => self
                .subs
                .get(&sid)
                .filter(|s| s.subject == subject)
                .map(|_| sid)
                .into_iter()
                .collect(),
            None => self
                .sub_order
                .iter()
                .copied()
                .filter(|sid| {
                    self.subs.get(sid).is_some_and(|s| {
                        s.subject == subject && (any_queue || s.queue.as_deref() == queue)
                    })
                })
                .collect(),
        };
        for &sid in &sids {
            self.remove_sub(sid);
            self.events.push_back(ConnEvent::SubscriptionEnded {
                sid,
                reason: SubEndReason::PermissionDenied(text.clone()),
            });
        }
        if sids.is_empty() {
            self.events.push_back(ConnEvent::ServerError(err));
        }
    }

    /// Start a subscription; its SUB is written now if a link is up, else at the next
    /// handshake. Returns the sid.
    pub fn subscribe(
        &mut self,
        subject: &str,
        queue: Option<&str>,
    ) -> Result<u64, SubscribeRefused> {
        let sid = self.next_sid;
        let line = encode::sub_control_line_len(subject, queue, sid);
        if line > self.config.max_control_line {
            return Err(SubscribeRefused {
                len: line,
                limit: self.config.max_control_line,
            });
        }
        self.next_sid += 1;
        self.subs.insert(
            sid,
            SubState {
                subject: subject.to_owned(),
                queue: queue.map(str::to_owned),
                max: None,
                delivered: 0,
                base: 0,
                draining: false,
            },
        );
        self.sub_order.insert(sid);
        if self.state == LinkState::Up {
            self.out.push(FrameKind::Control, 0, |buf| {
                encode::encode_sub(buf, subject, queue, sid);
            });
            let entry = (self.pings_total, sid);
            match self.replay.as_mut().filter(|r| r.stage == Stage::Chunks) {
                // Written after the replay: listed after its SUBs.
                Some(r) => r.deferred.push(entry),
                None => self.subs_since_pong.push(entry),
            }
        }
        Ok(sid)
    }

    /// Unsubscribe now (`max` None) or after `max` messages in all.
    ///
    /// During a replay, a subscription the replay has not reached yet gets no UNSUB: it
    /// is skipped (removed), or its SUB goes out with the remaining count. One already
    /// replayed gets its UNSUB after the replay, like any new frame.
    pub fn unsubscribe(&mut self, sid: u64, max: Option<u64>) {
        let unreplayed = self.replay_pending(sid);
        let Some(sub) = self.subs.get_mut(&sid) else {
            return;
        };
        let base = sub.base;
        let remove = match max {
            Some(m) if m > sub.delivered => {
                sub.max = Some(m);
                false
            }
            _ => true,
        };
        if remove {
            self.remove_sub(sid);
            if max.is_some() {
                // The count is already reached: the stream ends after what it holds.
                self.events.push_back(ConnEvent::SubscriptionEnded {
                    sid,
                    reason: SubEndReason::MaxReached,
                });
            }
        }
        if self.state == LinkState::Up && !unreplayed {
            // The server counts from the SUB on this link; `max` counts from the first.
            let wire_max = max.map(|m| m.saturating_sub(base));
            self.out.push(FrameKind::Control, 0, |buf| {
                encode::encode_unsub(buf, sid, if remove { None } else { wire_max });
            });
        }
    }

    /// Send UNSUB for `sid` but keep accepting its deliveries (drain): messages the server
    /// sent before it processed the UNSUB still arrive. End it with [`Self::forget`].
    /// A subscription the replay has not reached yet is skipped by it, with no UNSUB.
    pub fn unsubscribe_draining(&mut self, sid: u64) {
        let unreplayed = self.replay_pending(sid);
        let Some(sub) = self.subs.get_mut(&sid) else {
            return;
        };
        sub.draining = true;
        if self.state == LinkState::Up && !unreplayed {
            self.out.push(FrameKind::Control, 0, |buf| {
                encode::encode_unsub(buf, sid, None);
            });
        }
    }

    /// Forget `sid` without writing anything (its UNSUB was already sent).
    pub fn forget(&mut self, sid: u64) {
        self.remove_sub(sid);
    }

    pub(super) fn remove_sub(&mut self, sid: u64) {
        // Its `subs_since_pong` entry, if any, stays: see the `maximum subscriptions
        // exceeded` handling.
        if self.subs.remove(&sid).is_some() {
            self.sub_order.remove(&sid);
        }
    }

    /// The sids of every subscription, oldest first.
    pub fn sids(&self) -> Vec<u64> {
        self.sub_order.iter().copied().collect()
    }

    /// Start the replay of every subscription on the link just adopted (see
    /// [`Connection::adopt_link`]): the subscriptions that exist now, in sid order.
    pub(super) fn start_replay(&mut self, now: Instant) {
        self.replay = Some(Replay {
            next: 0,
            end: self.next_sid,
            stage: Stage::Chunks,
            started: now,
            subscriptions: 0,
            bytes: 0,
            deferred: Vec::new(),
            buf: BytesMut::new(),
        });
    }

    /// True while `sid` is part of the current link's replay and not yet handed to the
    /// writer: its SUB (with its remaining count) is still to come.
    pub(super) fn replay_pending(&self, sid: u64) -> bool {
        self.replay
            .as_ref()
            .is_some_and(|r| r.stage == Stage::Chunks && sid >= r.next && sid < r.end)
    }

    /// True while the replay has subscriptions left to hand to the writer.
    pub(super) fn replay_unsent(&self) -> bool {
        self.replay.as_ref().is_some_and(|r| {
            r.stage == Stage::Chunks
                && self
                    .sub_order
                    .range(r.next.min(r.end)..r.end)
                    .next()
                    .is_some()
        })
    }

    /// The next chunk of the replay: SUB lines (each with an UNSUB carrying the remaining
    /// auto-unsubscribe count, if any) from the cursor on, until the chunk holds
    /// [`REPLAY_CHUNK_BYTES`] or more. None when no replay is under way, or when it has no
    /// more to send: then it is complete (`now` ends its duration) and the buffered frames
    /// are next.
    pub(super) fn next_replay_chunk(&mut self, now: Instant) -> Option<Bytes> {
        let r = self.replay.as_mut().filter(|r| r.stage == Stage::Chunks)?;
        for &sid in self.sub_order.range(r.next.min(r.end)..r.end) {
            if r.buf.len() >= REPLAY_CHUNK_BYTES {
                break;
            }
            r.next = sid + 1;
            // Subscriptions being drained are not subscribed again.
            let Some(s) = self.subs.get_mut(&sid).filter(|s| !s.draining) else {
                continue;
            };
            s.base = s.delivered;
            encode::encode_sub(&mut r.buf, &s.subject, s.queue.as_deref(), sid);
            if let Some(max) = s.max {
                encode::encode_unsub(&mut r.buf, sid, Some(max.saturating_sub(s.delivered)));
            }
            r.subscriptions += 1;
            // The replay goes ahead of every PING of this link: the first PONG confirms
            // it. Until then a `maximum subscriptions exceeded` can name a replayed SUB
            // (a server restarted with a lower limit), which must end that subscription
            // rather than leave a stream that silently receives nothing. Entries are
            // added as chunks are handed out, so the newest written comes last.
            self.subs_since_pong.push((0, sid));
        }
        if !r.buf.is_empty() {
            r.bytes += r.buf.len() as u64;
            return Some(r.buf.split().freeze());
        }
        // Complete: SUBs made meanwhile (queued behind it) are written after it.
        r.stage = Stage::Buffered { taken: false };
        r.next = r.end;
        r.buf = BytesMut::new();
        self.subs_since_pong.append(&mut r.deferred);
        self.stats.last_replay = Some(ReplayStats {
            subscriptions: r.subscriptions,
            bytes: r.bytes,
            duration: now.saturating_duration_since(r.started),
        });
        None
    }

    /// After the replay, the writer took the pending frames (`taken`), or found none.
    pub(super) fn buffered_taken(&mut self, taken: bool) {
        let Some(r) = self.replay.as_mut() else {
            return;
        };
        if r.stage == (Stage::Buffered { taken: false }) {
            if taken {
                r.stage = Stage::Buffered { taken: true };
            } else {
                self.caught_up();
            }
        }
    }

    /// A chunk was fully written: if it held the frames buffered before the replay, the
    /// link is caught up.
    pub(super) fn buffered_written(&mut self) {
        if self
            .replay
            .as_ref()
            .is_some_and(|r| r.stage == (Stage::Buffered { taken: true }))
        {
            self.caught_up();
        }
    }

    fn caught_up(&mut self) {
        if self.replay.take().is_some() {
            let stats = self.stats.last_replay.unwrap_or_default();
            self.events.push_back(ConnEvent::Replayed(stats));
        }
    }
}

/// A replay chunk is handed to the writer once it holds this many bytes (or the replay
/// has no more): the writer can let others at the client between chunks, and nothing
/// holds the whole replay at once.
pub const REPLAY_CHUNK_BYTES: usize = 64 * 1024;

/// Where a link's replay is (see [`Connection::adopt_link`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Chunks of SUB lines are handed out, one per [`Connection::poll_transmit`].
    Chunks,
    /// The replay is written; the frames buffered before and during it go next, in one
    /// chunk (`taken` once handed to the writer).
    Buffered { taken: bool },
}

/// The replay cursor over the subscription table.
#[derive(Debug)]
pub(super) struct Replay {
    /// The sid to resume from: the sids below it were handed to the writer.
    pub(super) next: u64,
    /// The first sid created after the link was adopted: sids from it on are not part of
    /// the replay (their SUBs are queued behind it like any new frame).
    pub(super) end: u64,
    pub(super) stage: Stage,
    started: Instant,
    subscriptions: u64,
    bytes: u64,
    /// `subs_since_pong` entries of SUBs queued during the replay: they are written after
    /// it, so they join the list when it completes.
    pub(super) deferred: Vec<(u64, u64)>,
    /// The chunk being encoded.
    buf: BytesMut,
}
