//! PINGs and PONGs: keepalive, confirmation of what was written, flushes.

use std::time::Instant;

use crate::encode;
use crate::outbound::{Counts, FrameKind};

use super::{ConnEvent, Connection, DisconnectReason, LinkState, MAX_UNWRITTEN_PONGS};

/// What a PING was sent for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingPurpose {
    /// Inbound silence for ping_interval.
    Keepalive,
    /// Unconfirmed data exists.
    Confirm,
    /// A user flush (or drain, or close) with this token.
    Flush(u64),
    /// The last PING on a link being retired after a planned switch.
    Retire,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct PingOut {
    pub(super) purpose: PingPurpose,
    pub(super) sent_at: Instant,
    /// Cumulative PUB/HPUB frames written on this link when the PING was written.
    pub(super) written: Counts,
    /// Cumulative retained (plain PUB) frames written when the PING was written.
    pub(super) retained: u64,
}

impl Connection {
    pub(super) fn queue_pong(&mut self, now: Instant) {
        match self.state {
            LinkState::Up => {
                if self.pongs_unwritten >= MAX_UNWRITTEN_PONGS {
                    self.link_down(
                        now,
                        DisconnectReason::PongBacklog {
                            max: MAX_UNWRITTEN_PONGS,
                        },
                    );
                    return;
                }
                self.pongs_unwritten += 1;
                self.out.push(FrameKind::Pong, 0, encode::encode_pong);
            }
            LinkState::Down | LinkState::Closing => {}
        }
    }

    pub(super) fn handle_pong(&mut self) {
        match self.state {
            LinkState::Up | LinkState::Closing => {
                let Some(ping) = self.pings_out.pop_front() else {
                    return;
                };
                // This PONG answers PING number `pongs_total`: the SUBs written before that
                // PING are now known to be accepted.
                self.pongs_total += 1;
                let answered = self.pongs_total;
                self.subs_since_pong.retain(|(mark, _)| *mark >= answered);
                self.confirmed = ping.written;
                if ping.retained > self.confirmed_retained {
                    self.out
                        .release_retained(ping.retained - self.confirmed_retained);
                    self.confirmed_retained = ping.retained;
                    self.events.push_back(ConnEvent::BufferSpace);
                }
                if let PingPurpose::Flush(token) = ping.purpose {
                    if self.flushes_on_old_link.contains(&token) {
                        // Asked before a planned switch: the retired link must confirm too.
                        self.flushes_done_on_new_link.push(token);
                    } else {
                        self.events.push_back(ConnEvent::FlushDone(token));
                    }
                }
            }
            LinkState::Down => {}
        }
    }

    pub(super) fn maybe_confirm(&mut self, now: Instant) {
        if let Some(since) = self.unpinged_since {
            if now.duration_since(since) >= self.config.confirm_interval
                || self.unpinged_bytes >= self.config.confirm_bytes
            {
                self.queue_ping(PingPurpose::Confirm);
            }
        }
    }

    /// Ask for a PONG confirming every frame buffered or written so far. The answer is a
    /// [`ConnEvent::FlushDone`] or [`ConnEvent::FlushFailed`] with this token. While no
    /// link is up the PING is sent after the next handshake.
    pub fn flush(&mut self, token: u64) {
        if self.state == LinkState::Up {
            self.queue_ping(PingPurpose::Flush(token));
        } else {
            self.flush_waiting.push(token);
        }
    }

    /// Forget a flush (its caller timed out).
    pub fn cancel_flush(&mut self, token: u64) {
        self.flush_waiting.retain(|t| *t != token);
        for p in &mut self.pings_queued {
            if *p == PingPurpose::Flush(token) {
                *p = PingPurpose::Confirm;
            }
        }
        for p in &mut self.pings_out {
            if p.purpose == PingPurpose::Flush(token) {
                p.purpose = PingPurpose::Confirm;
            }
        }
    }

    pub(super) fn queue_ping(&mut self, purpose: PingPurpose) {
        if self.state != LinkState::Up {
            return;
        }
        self.out.push(FrameKind::Ping, 0, encode::encode_ping);
        self.pings_queued.push_back(purpose);
        self.pings_total += 1;
        // Once queued, the data before it is covered: no further confirm PING needed.
        self.unpinged_since = None;
        self.unpinged_bytes = 0;
    }
}
