//! PINGs and PONGs: keepalive, confirmation of what was written, flushes.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::encode;
use crate::outbound::{Counts, FrameKind};

use crate::time::saturating_add as later;

use super::timer::Timer;
use super::{ConnEvent, Connection, DisconnectReason, LinkState, MAX_UNWRITTEN_PONGS};

/// What a PING was sent for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PingPurpose {
    /// Inbound silence for ping_interval.
    Keepalive,
    /// Unconfirmed data exists.
    Confirm,
    /// A user flush (or drain, or close) with this token.
    Flush(u64),
    /// The last PING on a link being retired after a planned switch.
    Retire,
}

/// A PING written on a link, waiting for its PONG.
#[derive(Debug, Clone, Copy)]
pub(super) struct PingOut {
    pub(super) purpose: PingPurpose,
    pub(super) sent_at: Instant,
    /// Cumulative PUB/HPUB frames written on this link when the PING was written.
    written: Counts,
    /// Cumulative retained frames written when the PING was written.
    retained: u64,
}

/// What was written on one link and what its PONGs confirmed. The live link owns one; a
/// planned switch hands it to the retiring link, whose PONGs go on confirming it.
#[derive(Debug, Default)]
pub(super) struct LinkAccounting {
    /// PINGs written and not yet answered, oldest first.
    pub(super) pings_out: VecDeque<PingOut>,
    /// PUB/HPUB frames written on this link.
    pub(super) written: Counts,
    /// Of those, the ones retained for resending (resend_unconfirmed, request retry).
    pub(super) written_retained: u64,
    /// What the last PONG confirmed (the counts when its PING was written).
    confirmed: Counts,
    confirmed_retained: u64,
}

impl LinkAccounting {
    /// PUB/HPUB frames written and not yet confirmed by a PONG.
    pub(super) fn unconfirmed(&self) -> Counts {
        Counts {
            msgs: self.written.msgs - self.confirmed.msgs,
            bytes: self.written.bytes - self.confirmed.bytes,
        }
    }

    /// A PING for `purpose` was written now: its PONG confirms everything before it.
    pub(super) fn ping_written(&mut self, purpose: PingPurpose, now: Instant) {
        self.pings_out.push_back(PingOut {
            purpose,
            sent_at: now,
            written: self.written,
            retained: self.written_retained,
        });
    }

    /// A PONG arrived: returns the PING it answers and how many retained frames it newly
    /// confirms (to release from the buffer).
    pub(super) fn on_pong(&mut self) -> Option<(PingOut, u64)> {
        let ping = self.pings_out.pop_front()?;
        self.confirmed = ping.written;
        let released = ping.retained.saturating_sub(self.confirmed_retained);
        self.confirmed_retained = self.confirmed_retained.max(ping.retained);
        Some((ping, released))
    }

    /// Count everything written as confirmed (a poison frame's -ERR: it is reported as
    /// removed instead).
    pub(super) fn confirm_all(&mut self) {
        self.confirmed = self.written;
        self.confirmed_retained = self.written_retained;
    }
}

/// The flushes waiting for their PONG, and how many links each still waits for.
///
/// A flush is done when every link it waits for confirmed it: one link normally, the one
/// its PING goes out on. A planned switch adds one: a flush whose PING was still queued
/// at [`Connection::retire_link`] goes out on the new link, but what it covers was partly
/// written on the old one, so the retiring link's last PONG must confirm too (in either
/// order). A flush whose PING was written on the old link is confirmed there alone.
/// When a link it waits for is lost, the flush fails, or with resend_unconfirmed (the
/// frames are resent) it waits for a PING on the current or next link instead.
#[derive(Debug, Default)]
pub(super) struct Flushes {
    map: HashMap<u64, Flush>,
}

#[derive(Debug, Clone, Copy)]
struct Flush {
    links_left: u8,
}

impl Flushes {
    /// A flush asked (or re-armed on the current link alone).
    pub(super) fn arm(&mut self, token: u64) {
        self.map.insert(token, Flush { links_left: 1 });
    }

    /// A planned switch: the flush also waits for the retiring link's last PONG.
    pub(super) fn span(&mut self, token: u64) {
        if let Some(f) = self.map.get_mut(&token) {
            f.links_left += 1;
        }
    }

    /// A link's PONG confirmed it. True when no link is left: it is done (and forgotten).
    pub(super) fn confirmed(&mut self, token: u64) -> bool {
        let Some(f) = self.map.get_mut(&token) else {
            return false;
        };
        f.links_left = f.links_left.saturating_sub(1);
        if f.links_left > 0 {
            return false;
        }
        self.map.remove(&token);
        true
    }

    /// Forget it (it failed, or its caller gave up). True when it was waiting.
    pub(super) fn remove(&mut self, token: u64) -> bool {
        self.map.remove(&token).is_some()
    }

    /// True while it waits.
    pub(super) fn contains(&self, token: u64) -> bool {
        self.map.contains_key(&token)
    }
}

impl Connection {
    pub(super) fn queue_pong(&mut self) {
        match self.state {
            LinkState::Up => {
                if self.pongs_unwritten >= MAX_UNWRITTEN_PONGS {
                    self.link_down(DisconnectReason::PongBacklog {
                        max: MAX_UNWRITTEN_PONGS,
                    });
                    return;
                }
                self.pongs_unwritten += 1;
                self.out.push(FrameKind::Pong, 0, encode::encode_pong);
            }
            LinkState::Down | LinkState::Closing { .. } => {}
        }
    }

    pub(super) fn handle_pong(&mut self) {
        match self.state {
            LinkState::Up | LinkState::Closing { .. } => {
                let Some((ping, released)) = self.link.on_pong() else {
                    return;
                };
                // This PONG answers PING number `pongs_total`: the SUBs written before that
                // PING are now known to be accepted.
                self.pongs_total += 1;
                let answered = self.pongs_total;
                self.subs_since_pong.retain(|(mark, _)| *mark >= answered);
                if released > 0 {
                    self.out.release_retained(released);
                    self.events.push_back(ConnEvent::BufferSpace);
                }
                self.rearm_pong_timer();
                if let PingPurpose::Flush(token) = ping.purpose {
                    self.flush_confirmed(token);
                }
            }
            LinkState::Down => {}
        }
    }

    /// One link's PONG confirmed this flush: done when no other link must confirm it.
    pub(super) fn flush_confirmed(&mut self, token: u64) {
        if self.flushes.confirmed(token) {
            self.events.push_back(ConnEvent::FlushDone(token));
        }
    }

    /// The oldest PING written on a link that is up waits pong_timeout for its PONG.
    pub(super) fn rearm_pong_timer(&mut self) {
        match self.link.pings_out.front() {
            Some(p) if self.state == LinkState::Up => {
                let at = later(p.sent_at, self.config.pong_timeout);
                self.timers.set(Timer::Pong, at);
            }
            _ => self.timers.stop(Timer::Pong),
        }
    }

    /// A confirm PING when frames written wait for one for confirm_interval, or their
    /// bytes reached confirm_bytes.
    pub(super) fn maybe_confirm(&mut self, now: Instant) {
        if self.timers.is_expired(Timer::Confirm, now)
            || (self.timers.get(Timer::Confirm).is_some()
                && self.unpinged_bytes >= self.config.confirm_bytes)
        {
            self.queue_ping(PingPurpose::Confirm);
        }
    }

    /// Ask for a PONG confirming every frame buffered or written so far. The answer is a
    /// [`ConnEvent::FlushDone`] or [`ConnEvent::FlushFailed`] with this token. While no
    /// link is up the PING is sent after the next handshake.
    pub fn flush(&mut self, token: u64) {
        self.flushes.arm(token);
        if self.state == LinkState::Up {
            self.queue_ping(PingPurpose::Flush(token));
        } else {
            self.flush_waiting.push(token);
        }
    }

    /// Forget a flush (its caller timed out).
    pub fn cancel_flush(&mut self, token: u64) {
        self.flushes.remove(token);
        self.flush_waiting.retain(|t| *t != token);
        for p in &mut self.pings_queued {
            if *p == PingPurpose::Flush(token) {
                *p = PingPurpose::Confirm;
            }
        }
        for p in &mut self.link.pings_out {
            if p.purpose == PingPurpose::Flush(token) {
                p.purpose = PingPurpose::Confirm;
            }
        }
    }

    /// Test the link now: a PING whose PONG must come within pong_timeout like any
    /// other's, so a dead link is found that fast (a missed JetStream heartbeat does
    /// this). Nothing happens while no link is up.
    pub fn probe(&mut self) {
        self.queue_ping(PingPurpose::Confirm);
    }

    pub(super) fn queue_ping(&mut self, purpose: PingPurpose) {
        if self.state != LinkState::Up {
            return;
        }
        self.out.push(FrameKind::Ping, 0, encode::encode_ping);
        self.pings_queued.push_back(purpose);
        self.pings_total += 1;
        // Once queued, the data before it is covered: no further confirm PING needed.
        self.timers.stop(Timer::Confirm);
        self.unpinged_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_spanning_a_switch_is_done_when_both_links_confirmed_it() {
        let mut f = Flushes::default();
        f.arm(1);
        f.arm(2);
        f.span(2);
        assert!(f.confirmed(1), "one link: its PONG is enough");
        assert!(!f.confirmed(1), "done flushes are forgotten");
        assert!(!f.confirmed(2), "the retiring link has not confirmed yet");
        assert!(f.confirmed(2));
        // Re-armed on the current link alone (the retiring link died, frames resent).
        f.arm(3);
        f.span(3);
        f.arm(3);
        assert!(f.confirmed(3));
        // Cancelled or failed: a late PONG reports nothing.
        f.arm(4);
        assert!(f.remove(4));
        assert!(!f.contains(4) && !f.confirmed(4));
    }

    #[test]
    fn a_pong_confirms_what_was_written_before_its_ping() {
        let now = Instant::now();
        let mut a = LinkAccounting {
            written: Counts { msgs: 2, bytes: 20 },
            written_retained: 2,
            ..LinkAccounting::default()
        };
        a.ping_written(PingPurpose::Confirm, now);
        a.written = Counts { msgs: 3, bytes: 30 };
        a.written_retained = 3;
        assert_eq!(a.unconfirmed(), Counts { msgs: 3, bytes: 30 });
        let (ping, released) = a.on_pong().unwrap();
        assert_eq!((ping.purpose, released), (PingPurpose::Confirm, 2));
        assert_eq!(a.unconfirmed(), Counts { msgs: 1, bytes: 10 });
        assert!(a.on_pong().is_none());
        a.confirm_all();
        assert_eq!(a.unconfirmed(), Counts::default());
    }
}
