//! The subscription table: SUB, UNSUB (counts relative to the current link), the replay
//! after a reconnect, and subscriptions the server ends.

use bytes::BytesMut;

use crate::encode;
use crate::op::Msg;
use crate::outbound::FrameKind;
use crate::server_err::ServerErr;

use super::{ConnEvent, Connection, LinkState, SubEndReason, SubscribeRefused};

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
        self.sub_order.push(sid);
        if self.state == LinkState::Up {
            self.out.push(FrameKind::Control, 0, |buf| {
                encode::encode_sub(buf, subject, queue, sid);
            });
            self.subs_since_pong.push((self.pings_total, sid));
        }
        Ok(sid)
    }

    /// Unsubscribe now (`max` None) or after `max` messages in all.
    pub fn unsubscribe(&mut self, sid: u64, max: Option<u64>) {
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
        if self.state == LinkState::Up {
            // The server counts from the SUB on this link; `max` counts from the first.
            let wire_max = max.map(|m| m.saturating_sub(base));
            self.out.push(FrameKind::Control, 0, |buf| {
                encode::encode_unsub(buf, sid, if remove { None } else { wire_max });
            });
        }
    }

    /// Send UNSUB for `sid` but keep accepting its deliveries (drain): messages the server
    /// sent before it processed the UNSUB still arrive. End it with [`Self::forget`].
    pub fn unsubscribe_draining(&mut self, sid: u64) {
        let Some(sub) = self.subs.get_mut(&sid) else {
            return;
        };
        sub.draining = true;
        if self.state == LinkState::Up {
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
        if self.subs.remove(&sid).is_some() {
            self.sub_order.retain(|s| *s != sid);
            self.subs_since_pong.retain(|(_, s)| *s != sid);
        }
    }

    /// The sids of every subscription, oldest first.
    pub fn sids(&self) -> Vec<u64> {
        self.sub_order.clone()
    }

    /// Subscription replay (with remaining auto-unsubscribe counts), ahead of the
    /// buffered frames, in one pipelined write.
    pub(super) fn replay_subs(&mut self) {
        let mut replay = BytesMut::new();
        let mut frames = Vec::new();
        for sid in &self.sub_order {
            // Subscriptions being drained are not subscribed again.
            let Some(s) = self.subs.get_mut(sid).filter(|s| !s.draining) else {
                continue;
            };
            s.base = s.delivered;
            let start = replay.len();
            encode::encode_sub(&mut replay, &s.subject, s.queue.as_deref(), *sid);
            if let Some(max) = s.max {
                encode::encode_unsub(&mut replay, *sid, Some(max.saturating_sub(s.delivered)));
            }
            frames.push(crate::outbound::Frame {
                len: (replay.len() - start) as u32,
                payload_len: 0,
                kind: FrameKind::Control,
            });
            // The replay goes ahead of every PING of this link: the first PONG confirms
            // it. Until then a `maximum subscriptions exceeded` can name a replayed SUB
            // (a server restarted with a lower limit), which must end that subscription
            // rather than leave a stream that silently receives nothing.
            self.subs_since_pong.push((0, *sid));
        }
        if !replay.is_empty() {
            self.out.prepend(&replay, frames);
        }
    }
}
