//! The outbound buffer: one byte stream with whole-frame boundaries.
//!
//! The buffer itself is internal to the connection state machine; this module also holds
//! the types it shares with the client: [`FrameKind`], [`Counts`] and [`BufferLimits`].
//!
//! Publishers encode straight into the buffer (`OutboundBuffer::push`); the writer takes
//! everything queued as one chunk (`take_chunk`) and reports progress with `advance`. Each
//! frame carries its kind, so that when a link drops:
//!
//! - whole PUB/HPUB frames not yet written stay, in their original order;
//! - a frame cut in half is put back whole (the server acts only on a frame's last byte,
//!   so resending it never duplicates);
//! - SUB, UNSUB, PING and PONG frames are dropped: they are regenerated from state.
//!
//! The bounds ([`BufferLimits`]) count PUB/HPUB frames and their encoded bytes only, and a
//! frame counts until its last byte has been accepted by the socket. Frames written but
//! not yet confirmed by a PONG can be retained for resending (`resend_unconfirmed`); those
//! count against the bounds too.
//!
//! Frames are listed as runs (`Run`): consecutive PUB frames of the same length and
//! payload length (one subject, one payload size: the common case) share one entry with a
//! count, so a publish usually adds no entry and a write reports a whole run's written
//! frames in one step (`Written::count`). Every other kind of frame is a run of one.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Bounds of the outbound buffer: whichever is reached first refuses a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimits {
    /// Encoded bytes of PUB/HPUB frames.
    pub max_bytes: usize,
    /// Number of PUB/HPUB frames.
    pub max_msgs: usize,
}

/// What a frame in the buffer is; decides what survives a disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A PUB or HPUB published by the user.
    Pub,
    /// A PUB or HPUB carrying a request; the id is the request mux token.
    Request(u64),
    /// SUB, UNSUB or CONNECT: regenerated from state after a reconnect.
    Control,
    /// A PING; the connection keeps what it was for.
    Ping,
    /// A PONG answering the server.
    Pong,
}

impl FrameKind {
    /// PUB/HPUB frames (including requests) survive a disconnect and count against the bounds.
    pub fn is_publish(self) -> bool {
        matches!(self, FrameKind::Pub | FrameKind::Request(_))
    }
}

/// One frame's place in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    /// Encoded length, control line and payload.
    pub(crate) len: u32,
    /// Header block plus payload length (PUB/HPUB only), checked against max_payload.
    pub(crate) payload_len: u32,
    /// The kind of frame.
    pub(crate) kind: FrameKind,
}

/// Consecutive frames alike: `count` frames described by `frame`, back to back in the
/// stream. Only [`FrameKind::Pub`] frames of equal `len` and `payload_len` share a run;
/// any other frame is a run of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    /// Each frame of the run.
    pub(crate) frame: Frame,
    /// How many frames (at least 1).
    pub(crate) count: u32,
}

impl Run {
    fn one(frame: Frame) -> Self {
        Self { frame, count: 1 }
    }

    /// Encoded bytes of the whole run.
    fn bytes(&self) -> usize {
        self.frame.len as usize * self.count as usize
    }
}

/// Append `run` to `list`, extending the last run when both are PUB frames alike.
fn push_run(list: &mut VecDeque<Run>, run: Run) {
    if run.frame.kind == FrameKind::Pub {
        if let Some(back) = list.back_mut() {
            if back.frame == run.frame {
                if let Some(count) = back.count.checked_add(run.count) {
                    back.count = count;
                    return;
                }
            }
        }
    }
    list.push_back(run);
}

/// Totals of PUB/HPUB frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Frames.
    pub msgs: u64,
    /// Encoded bytes.
    pub bytes: u64,
}

impl Counts {
    fn add(&mut self, f: &Frame) {
        self.add_n(f, 1);
    }
    fn add_n(&mut self, f: &Frame, n: u32) {
        self.msgs += u64::from(n);
        self.bytes += u64::from(f.len) * u64::from(n);
    }
    fn sub_n(&mut self, f: &Frame, n: u32) {
        self.msgs = self.msgs.saturating_sub(u64::from(n));
        self.bytes = self.bytes.saturating_sub(u64::from(f.len) * u64::from(n));
    }
}

/// Written frames kept for resending until a PONG confirms them: the buffer's own, or
/// those moved out with a retiring link (see [`OutboundBuffer::take_retained`]).
#[derive(Debug, Default)]
pub(crate) struct Retained {
    bytes: BytesMut,
    frames: VecDeque<Run>,
}

impl Retained {
    /// Drop the `msgs` oldest frames (a PONG confirmed them); retained PUBs stop counting
    /// in `counted`.
    fn release(&mut self, mut msgs: u64, counted: &mut Counts) {
        let mut bytes = 0usize;
        while msgs > 0 {
            let Some(front) = self.frames.front_mut() else {
                break;
            };
            // Frames of the front run confirmed: all of it, or its first `msgs`.
            let n = u32::try_from(msgs).map_or(front.count, |m| m.min(front.count));
            let f = front.frame;
            if n == front.count {
                self.frames.pop_front();
            } else {
                front.count -= n;
            }
            if f.kind == FrameKind::Pub {
                counted.sub_n(&f, n);
            }
            bytes += f.len as usize * n as usize;
            msgs -= u64::from(n);
        }
        let _ = self.bytes.split_to(bytes.min(self.bytes.len()));
    }
}

/// Frames whose last byte the socket just accepted: `count` consecutive frames alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    /// Each frame.
    pub(crate) frame: Frame,
    /// How many (at least 1; more only for PUB frames of one run).
    pub(crate) count: u32,
}

/// The byte- and message-bounded outbound buffer.
#[derive(Debug)]
pub(crate) struct OutboundBuffer {
    limits: BufferLimits,
    /// Encoded frames not yet handed to the writer.
    pending: BytesMut,
    pending_frames: VecDeque<Run>,
    /// The chunk handed to the writer, and how much of it the socket accepted.
    in_flight: Bytes,
    in_flight_frames: VecDeque<Run>,
    in_flight_pos: usize,
    /// Bytes of the first frame of the first in-flight run already written.
    front_written: usize,
    /// PUB/HPUB frames counted against the bounds (pending + in flight + retained).
    counted: Counts,
    /// Written PUB/HPUB frames kept for resending until a PONG confirms them.
    retained: Retained,
    /// The empty rest of the buffer the last chunk was split from, sharing its memory:
    /// reclaimed whole as the next pending buffer once the chunk is written and the writer
    /// has let go of it, so steady publishing writes into memory already mapped instead
    /// of a fresh allocation (and its page faults) per chunk. Reclaimed this way the
    /// buffer stays shared, so handing out the next chunk allocates nothing either.
    spent: BytesMut,
    /// Capacity of the buffer `spent` belongs to.
    spent_cap: usize,
    /// The largest chunk taken since the buffer was last idle (see [`Self::take_chunk`]).
    peak: usize,
}

/// Buffer memory over this size is freed once everything is written (the end of a burst,
/// a replayed backlog); below it, or while frames keep coming, it is kept for reuse.
const IDLE_KEEP: usize = 1 << 20;
/// Capacity of a new pending buffer.
const INITIAL_CAPACITY: usize = 64 * 1024;
/// Room beyond the byte bound in a pending buffer sized for a backlog: control frames
/// (SUB, PING, PONG...) do not count against the bound.
const BACKLOG_SLACK: usize = 64 * 1024;

impl OutboundBuffer {
    /// An empty buffer with these bounds.
    pub(crate) fn new(limits: BufferLimits) -> Self {
        Self {
            limits,
            pending: BytesMut::with_capacity(INITIAL_CAPACITY),
            pending_frames: VecDeque::with_capacity(1024),
            in_flight: Bytes::new(),
            in_flight_frames: VecDeque::new(),
            in_flight_pos: 0,
            front_written: 0,
            counted: Counts::default(),
            retained: Retained::default(),
            spent: BytesMut::new(),
            spent_cap: 0,
            peak: 0,
        }
    }

    /// PUB/HPUB frames and bytes counted against the bounds.
    pub(crate) fn counted(&self) -> Counts {
        self.counted
    }

    /// True when a publish frame of `len` bytes fits within the bounds now.
    pub(crate) fn has_room(&self, len: usize) -> bool {
        self.counted.msgs < self.limits.max_msgs as u64
            && self.counted.bytes + len as u64 <= self.limits.max_bytes as u64
    }

    /// Append one frame of `kind`: `encode` writes it at the end of the pending stream.
    /// `payload_len` is its header block plus payload (PUB/HPUB; 0 for the others),
    /// checked against max_payload if the server lowers it.
    pub(crate) fn push(
        &mut self,
        kind: FrameKind,
        payload_len: usize,
        encode: impl FnOnce(&mut BytesMut),
    ) {
        let start = self.pending.len();
        encode(&mut self.pending);
        let frame = Frame {
            len: (self.pending.len() - start) as u32,
            payload_len: payload_len as u32,
            kind,
        };
        if kind.is_publish() {
            self.counted.add(&frame);
        }
        push_run(&mut self.pending_frames, Run::one(frame));
    }

    /// True when nothing waits to be written (pending empty, chunk fully written).
    pub(crate) fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.in_flight_pos >= self.in_flight.len()
    }

    /// True while a chunk handed to the writer is not fully written.
    pub(crate) fn has_in_flight(&self) -> bool {
        self.in_flight_pos < self.in_flight.len()
    }

    /// The unwritten rest of the chunk in flight, if any.
    pub(crate) fn in_flight_rest(&self) -> Option<Bytes> {
        self.has_in_flight()
            .then(|| self.in_flight.slice(self.in_flight_pos..))
    }

    /// Hand everything pending to the writer as one chunk. Returns `None` when a chunk is
    /// still in flight or nothing is pending.
    pub(crate) fn take_chunk(&mut self) -> Option<Bytes> {
        if self.has_in_flight() || self.pending.is_empty() {
            return None;
        }
        // The next pending buffer gets room for the largest chunk since the last idle
        // moment, and for all the bounds allow once that passes IDLE_KEEP (a publisher
        // running ahead of the socket fills the buffer): the two buffers taking turns
        // reach that size once, then a backlog fills memory already mapped instead of a
        // buffer grown by copying and faulted in page by page (a quarter of a 16 B
        // publish's CPU, measured).
        self.peak = self.peak.max(self.pending.len());
        let room = if self.peak >= IDLE_KEEP {
            self.limits.max_bytes.saturating_add(BACKLOG_SLACK)
        } else {
            self.peak
        };
        let mut next = self.reclaim_spent();
        if next.capacity() < room {
            next.reserve(room);
        }
        let mut buf = std::mem::replace(&mut self.pending, next);
        self.spent_cap = buf.capacity();
        // Split, not frozen whole: the chunk and `spent` share one buffer, and only its
        // first split makes it shared (one allocation per buffer, not one per chunk).
        self.in_flight = buf.split().freeze();
        self.spent = buf;
        // The in-flight list is empty here (its chunk was fully written): swap so both
        // keep their capacity and no list is reallocated per chunk.
        std::mem::swap(&mut self.in_flight_frames, &mut self.pending_frames);
        self.in_flight_pos = 0;
        self.front_written = 0;
        Some(self.in_flight.clone())
    }

    /// Hand `chunk`, control frames made apart from the pending stream (a part of the
    /// subscription replay), to the writer as one frame: it goes out before anything
    /// pending, and like any control frame it is dropped, not resent, when the link drops.
    /// Only call while nothing is in flight.
    pub(crate) fn take_control_chunk(&mut self, chunk: Bytes) -> Bytes {
        self.in_flight_frames.clear();
        self.in_flight_frames.push_back(Run::one(Frame {
            len: chunk.len() as u32,
            payload_len: 0,
            kind: FrameKind::Control,
        }));
        self.in_flight = chunk.clone();
        self.in_flight_pos = 0;
        self.front_written = 0;
        chunk
    }

    /// The socket accepted `n` more bytes of the chunk. `on_written` is called, in order,
    /// for the frames whose last byte is now written: once per run they complete (or
    /// complete in part), with how many of its frames that is. Written PUB frames are
    /// retained when `retain_pubs` (they keep counting against the bounds), request frames
    /// when `retain_requests` (they do not count while retained).
    pub(crate) fn advance(
        &mut self,
        mut n: usize,
        retain_pubs: bool,
        retain_requests: bool,
        mut on_written: impl FnMut(Written),
    ) {
        n = n.min(self.in_flight.len() - self.in_flight_pos);
        self.in_flight_pos += n;
        while n > 0 {
            let Some(front) = self.in_flight_frames.front_mut() else {
                break;
            };
            let frame = front.frame;
            let len = frame.len as usize;
            // The front frame may be partly written already.
            let left = len - self.front_written;
            if n < left {
                self.front_written += n;
                break;
            }
            // The front frame, then as many whole frames of the run as the rest covers.
            let more = match (n - left).checked_div(len) {
                Some(k) => k.min(front.count as usize - 1),
                None => front.count as usize - 1,
            };
            n -= left + more * len;
            // Where the frames written now end in the chunk.
            let end = self.in_flight_pos - n;
            let done = 1 + more as u32;
            if done == front.count {
                self.in_flight_frames.pop_front();
                self.front_written = 0;
            } else {
                // The run goes on: `n` (less than a frame) is the start of its next frame.
                front.count -= done;
                self.front_written = n;
                n = 0;
            }
            if frame.kind.is_publish() {
                let retain = match frame.kind {
                    FrameKind::Pub => retain_pubs,
                    _ => retain_requests,
                };
                if retain {
                    let start = end - len * done as usize;
                    self.retained
                        .bytes
                        .extend_from_slice(&self.in_flight[start..end]);
                    push_run(&mut self.retained.frames, Run { frame, count: done });
                }
                if !retain || frame.kind != FrameKind::Pub {
                    self.counted.sub_n(&frame, done);
                }
            }
            on_written(Written { frame, count: done });
        }
        if !self.has_in_flight() {
            // Let go of the written chunk: `spent` can reclaim its memory.
            self.in_flight = Bytes::new();
            self.in_flight_pos = 0;
            if self.pending.is_empty() {
                // Idle: a burst's memory is not held for good.
                self.peak = 0;
                if self.spent_cap > IDLE_KEEP {
                    self.spent = BytesMut::new();
                    self.spent_cap = 0;
                }
                if self.pending.capacity() > IDLE_KEEP {
                    self.pending = BytesMut::with_capacity(INITIAL_CAPACITY);
                }
            }
        }
    }

    /// An empty buffer for the next pending stream: the spent chunk's memory when nobody
    /// else holds it any more, else a new one.
    fn reclaim_spent(&mut self) -> BytesMut {
        let mut b = std::mem::take(&mut self.spent);
        let cap = std::mem::take(&mut self.spent_cap);
        b.clear();
        // Succeeds without allocating when no chunk of that buffer is held any more.
        if cap > 0 && b.try_reclaim(cap) {
            b
        } else {
            BytesMut::with_capacity(INITIAL_CAPACITY)
        }
    }

    /// Drop the `msgs` oldest retained frames: a PONG confirmed them.
    pub(crate) fn release_retained(&mut self, msgs: u64) {
        self.retained.release(msgs, &mut self.counted);
    }

    /// Drop every retained frame and return their totals (a closing -ERR our own bytes
    /// caused: never resend them).
    pub(crate) fn discard_retained(&mut self) -> Counts {
        let mut c = Counts::default();
        for r in self.retained.frames.drain(..) {
            c.add_n(&r.frame, r.count);
            if r.frame.kind == FrameKind::Pub {
                self.counted.sub_n(&r.frame, r.count);
            }
        }
        self.retained.bytes.clear();
        c
    }

    /// The link dropped: rebuild the pending stream as retained frames, then the unwritten
    /// in-flight frames (a partly written one whole), then pending, keeping only frames
    /// for which `keep` is true (by default PUB/HPUB). Frames dropped are uncounted.
    pub(crate) fn rewind(&mut self, mut keep: impl FnMut(&Frame) -> bool) {
        let mut out = BytesMut::with_capacity(
            self.retained.bytes.len() + self.in_flight.len() - self.in_flight_pos
                + self.pending.len(),
        );
        let mut frames = VecDeque::with_capacity(
            self.retained.frames.len() + self.in_flight_frames.len() + self.pending_frames.len(),
        );
        let Retained {
            bytes: retained,
            frames: retained_frames,
        } = std::mem::take(&mut self.retained);
        // Retained frames were written; they go first. Retained requests did not count
        // against the bounds; pending again, they do.
        out.extend_from_slice(&retained);
        for r in retained_frames {
            if r.frame.kind != FrameKind::Pub {
                self.counted.add_n(&r.frame, r.count);
            }
            push_run(&mut frames, r);
        }

        let in_flight = std::mem::take(&mut self.in_flight);
        // The first in-flight run starts with the partly written frame, if any.
        let start = self.in_flight_pos - self.front_written;
        let in_flight_frames = std::mem::take(&mut self.in_flight_frames);
        let pending = self.pending.split().freeze();
        let pending_frames = std::mem::take(&mut self.pending_frames);
        let mut sources = [
            (
                in_flight.slice(start.min(in_flight.len())..),
                in_flight_frames,
            ),
            (pending, pending_frames),
        ];
        for (bytes, list) in &mut sources {
            let mut off = 0usize;
            for r in list.drain(..) {
                let end = off + r.bytes();
                // The frames of a run are alike: kept or dropped together.
                if keep(&r.frame) {
                    if let Some(slice) = bytes.get(off..end) {
                        out.extend_from_slice(slice);
                        push_run(&mut frames, r);
                    }
                } else if r.frame.kind.is_publish() {
                    self.counted.sub_n(&r.frame, r.count);
                }
                off = end;
            }
        }
        self.in_flight_pos = 0;
        self.front_written = 0;
        self.pending = out;
        self.pending_frames = frames;
    }

    /// Remove pending publish frames for which `remove` is true (for example those over a
    /// lowered max_payload). The chunk in flight, if any, is left alone (it was handed to
    /// the writer and cannot be recalled). Returns what was removed.
    pub(crate) fn remove_pending(&mut self, mut remove: impl FnMut(&Frame) -> bool) -> Counts {
        let mut removed = Counts::default();
        if !self
            .pending_frames
            .iter()
            .any(|r| r.frame.kind.is_publish() && remove(&r.frame))
        {
            return removed;
        }
        let pending = self.pending.split().freeze();
        let frames = std::mem::take(&mut self.pending_frames);
        let mut off = 0usize;
        for r in frames {
            let end = off + r.bytes();
            // The frames of a run are alike: removed or kept together.
            if r.frame.kind.is_publish() && remove(&r.frame) {
                removed.add_n(&r.frame, r.count);
                self.counted.sub_n(&r.frame, r.count);
            } else if let Some(slice) = pending.get(off..end) {
                self.pending.extend_from_slice(slice);
                push_run(&mut self.pending_frames, r);
            }
            off = end;
        }
        removed
    }

    /// Put `bytes` (whole frames, described by the runs `frames`) before everything
    /// pending (frames retained on a retired link, to be written again). Only call while
    /// nothing is in flight.
    fn prepend(&mut self, bytes: &[u8], frames: VecDeque<Run>) {
        let mut out = BytesMut::with_capacity(bytes.len() + self.pending.len());
        out.extend_from_slice(bytes);
        out.extend_from_slice(&self.pending);
        let mut list = frames;
        for r in &list {
            if r.frame.kind.is_publish() {
                self.counted.add_n(&r.frame, r.count);
            }
        }
        for r in self.pending_frames.drain(..) {
            push_run(&mut list, r);
        }
        self.pending = out;
        self.pending_frames = list;
    }

    /// The in-flight frame whose bytes are partly written, if any.
    pub(crate) fn partial_front(&self) -> Option<Frame> {
        (self.front_written > 0)
            .then(|| self.in_flight_frames.front().map(|r| r.frame))
            .flatten()
    }

    /// Remove the first pending frame (a poison frame put back by a rewind). Only call
    /// while nothing is in flight.
    pub(crate) fn drop_first_pending(&mut self) -> Option<Frame> {
        let front = self.pending_frames.front_mut()?;
        let f = front.frame;
        if front.count > 1 {
            front.count -= 1;
        } else {
            self.pending_frames.pop_front();
        }
        let _ = self
            .pending
            .split_to((f.len as usize).min(self.pending.len()));
        if f.kind.is_publish() {
            self.counted.sub_n(&f, 1);
        }
        Some(f)
    }

    /// Move the retained frames out (a planned switch: they belong to the retired link).
    /// Their counts stay; give them back with [`Self::release_from`] or [`Self::requeue`].
    pub(crate) fn take_retained(&mut self) -> Retained {
        std::mem::take(&mut self.retained)
    }

    /// Drop the `msgs` oldest frames of `r`: a PONG on their link confirmed them.
    pub(crate) fn release_from(&mut self, r: &mut Retained, msgs: u64) {
        r.release(msgs, &mut self.counted);
    }

    /// Put the frames of `r` back at the front of the pending stream, to be written again.
    pub(crate) fn requeue(&mut self, r: Retained) {
        if r.frames.is_empty() {
            return;
        }
        for run in &r.frames {
            if run.frame.kind == FrameKind::Pub {
                self.counted.sub_n(&run.frame, run.count);
            }
        }
        self.prepend(&r.bytes, r.frames);
    }

    /// Request ids whose frames are buffered and not yet fully written.
    pub(crate) fn buffered_requests(&self) -> impl Iterator<Item = u64> + '_ {
        self.in_flight_frames
            .iter()
            .chain(self.pending_frames.iter())
            .filter_map(|r| match r.frame.kind {
                FrameKind::Request(id) => Some(id),
                _ => None,
            })
    }

    /// True when the request's frame is in the chunk handed to the writer and not fully
    /// written.
    pub(crate) fn in_flight_request(&self, id: u64) -> bool {
        self.in_flight_frames
            .iter()
            .any(|r| r.frame.kind == FrameKind::Request(id))
    }

    /// Request ids whose frames are pending (not yet handed to the writer).
    pub(crate) fn pending_requests(&self) -> impl Iterator<Item = u64> + '_ {
        self.pending_frames
            .iter()
            .filter_map(|r| match r.frame.kind {
                FrameKind::Request(id) => Some(id),
                _ => None,
            })
    }

    /// Drop everything (the client is closed); returns the publish frames dropped.
    pub(crate) fn clear(&mut self) -> Counts {
        let c = self.counted;
        self.pending.clear();
        self.pending_frames.clear();
        self.in_flight = Bytes::new();
        self.in_flight_frames.clear();
        self.in_flight_pos = 0;
        self.front_written = 0;
        self.retained = Retained::default();
        self.counted = Counts::default();
        c
    }

    /// Publish frames not yet written (pending and in flight), excluding retained ones.
    pub(crate) fn unsent(&self) -> Counts {
        let mut c = Counts::default();
        for r in self
            .in_flight_frames
            .iter()
            .chain(self.pending_frames.iter())
        {
            if r.frame.kind.is_publish() {
                c.add_n(&r.frame, r.count);
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf() -> OutboundBuffer {
        OutboundBuffer::new(BufferLimits {
            max_bytes: 1000,
            max_msgs: 3,
        })
    }

    fn push(b: &mut OutboundBuffer, bytes: &[u8], kind: FrameKind) {
        b.push(kind, 1, |buf| buf.extend_from_slice(bytes));
    }

    #[test]
    fn bounds_count_publish_frames_only() {
        let mut b = buf();
        push(&mut b, b"PUB a 1\r\nx\r\n", FrameKind::Pub);
        push(&mut b, b"PING\r\n", FrameKind::Ping);
        assert_eq!(b.counted(), Counts { msgs: 1, bytes: 12 });
        push(&mut b, b"PUB a 1\r\nx\r\n", FrameKind::Pub);
        push(&mut b, b"PUB a 1\r\nx\r\n", FrameKind::Pub);
        assert!(!b.has_room(1), "message bound reached");
    }

    #[test]
    fn partial_frame_is_rewound_whole_and_control_dropped() {
        let mut b = buf();
        push(&mut b, b"PUB a 1\r\nx\r\n", FrameKind::Pub);
        push(&mut b, b"SUB b 1\r\n", FrameKind::Control);
        push(&mut b, b"PUB c 1\r\ny\r\n", FrameKind::Pub);
        let chunk = b.take_chunk().unwrap();
        assert_eq!(chunk.len(), 12 + 9 + 12);
        let mut written = Vec::new();
        b.advance(12 + 9 + 5, false, false, |w| written.push(w.frame.kind));
        assert_eq!(written, vec![FrameKind::Pub, FrameKind::Control]);
        push(&mut b, b"PING\r\n", FrameKind::Ping);
        push(&mut b, b"PUB d 1\r\nz\r\n", FrameKind::Pub);
        b.rewind(|f| f.kind.is_publish());
        assert_eq!(&b.pending[..], b"PUB c 1\r\ny\r\nPUB d 1\r\nz\r\n");
        assert_eq!(b.counted(), Counts { msgs: 2, bytes: 24 });
    }

    #[test]
    fn retained_frames_resend_first_and_release_on_confirm() {
        let mut b = buf();
        push(&mut b, b"PUB a 1\r\nx\r\n", FrameKind::Pub);
        push(&mut b, b"PUB b 1\r\nx\r\n", FrameKind::Pub);
        b.take_chunk().unwrap();
        b.advance(24, true, false, |_| {});
        assert_eq!(b.retained.frames.len(), 1, "two PUBs alike: one run");
        assert_eq!(b.retained.frames[0].count, 2);
        assert_eq!(b.counted().msgs, 2, "retained frames still count");
        b.release_retained(1);
        assert_eq!(b.counted().msgs, 1);
        push(&mut b, b"PUB c 1\r\nx\r\n", FrameKind::Pub);
        b.rewind(|f| f.kind.is_publish());
        assert_eq!(&b.pending[..], b"PUB b 1\r\nx\r\nPUB c 1\r\nx\r\n");
    }

    #[test]
    fn written_chunk_memory_is_reused() {
        let mut b = buf();
        // A writer that lets go of each chunk once written: two buffers take turns.
        let mut seen = Vec::new();
        for i in 0..6u8 {
            push(&mut b, &[b'P', b'0' + i], FrameKind::Pub);
            let chunk = b.take_chunk().unwrap();
            assert_eq!(&chunk[..], &[b'P', b'0' + i]);
            if !seen.contains(&chunk.as_ptr()) {
                seen.push(chunk.as_ptr());
            }
            b.advance(chunk.len(), false, false, |_| {});
        }
        assert_eq!(seen.len(), 2, "each chunk in fresh memory");
        // A writer still holding the written chunk: it is not reused under it.
        push(&mut b, b"P7", FrameKind::Pub);
        let held = b.take_chunk().unwrap();
        b.advance(held.len(), false, false, |_| {});
        push(&mut b, b"P8", FrameKind::Pub);
        let next = b.take_chunk().unwrap();
        push(&mut b, b"P9", FrameKind::Pub);
        assert_eq!(&held[..], b"P7");
        assert_eq!(&next[..], b"P8");
    }

    #[test]
    fn a_backlog_fills_memory_already_mapped() {
        let mut b = OutboundBuffer::new(BufferLimits {
            max_bytes: 8 << 20,
            max_msgs: 1 << 20,
        });
        let frame = [b'x'; 1000];
        // 2 MB from a publisher ahead of the socket: it fills the next while a chunk is
        // written, so the buffer is never idle.
        let fill = |b: &mut OutboundBuffer| {
            for _ in 0..2000 {
                push(b, &frame, FrameKind::Pub);
            }
        };
        fill(&mut b);
        let mut starts = Vec::new();
        for _ in 0..8 {
            let chunk = b.take_chunk().unwrap();
            assert_eq!(chunk.len(), 2_000_000);
            assert!(
                b.pending.capacity() >= 8 << 20,
                "after a backlog, room for all the bound allows"
            );
            let start = b.pending.as_ptr();
            fill(&mut b);
            assert_eq!(b.pending.as_ptr(), start, "filled without growing");
            starts.push(start);
            b.advance(chunk.len(), false, false, |_| {});
        }
        // Two buffers take turns.
        let distinct: std::collections::HashSet<_> = starts[1..].iter().collect();
        assert_eq!(distinct.len(), 2, "{starts:?}");
    }

    #[test]
    fn remove_pending_over_limit() {
        let mut b = buf();
        b.push(FrameKind::Pub, 3, |buf| {
            buf.extend_from_slice(b"PUB a 3\r\nxyz\r\n")
        });
        push(&mut b, b"PUB b 1\r\nx\r\n", FrameKind::Pub);
        let removed = b.remove_pending(|f| f.payload_len > 2);
        assert_eq!(removed, Counts { msgs: 1, bytes: 14 });
        assert_eq!(&b.pending[..], b"PUB b 1\r\nx\r\n");
        assert_eq!(b.counted(), Counts { msgs: 1, bytes: 12 });
    }

    /// Many small PUBs alike in a buffer allowing them all.
    fn big() -> OutboundBuffer {
        OutboundBuffer::new(BufferLimits {
            max_bytes: 1 << 20,
            max_msgs: 10_000,
        })
    }

    const A: &[u8] = b"PUB a 1\r\nx\r\n"; // 12 bytes
    const B3: &[u8] = b"PUB b 3\r\nxyz\r\n"; // 14 bytes

    fn push_n(b: &mut OutboundBuffer, bytes: &[u8], n: usize) {
        for _ in 0..n {
            push(b, bytes, FrameKind::Pub);
        }
    }

    /// Advance by `n` bytes, collecting (kind, count) per report.
    fn advance(b: &mut OutboundBuffer, n: usize, retain: bool) -> Vec<(FrameKind, u32)> {
        let mut w = Vec::new();
        b.advance(n, retain, retain, |x| w.push((x.frame.kind, x.count)));
        w
    }

    #[test]
    fn equal_pubs_share_one_run() {
        let mut b = big();
        push_n(&mut b, A, 1000);
        assert_eq!(b.pending_frames.len(), 1);
        assert_eq!(b.pending_frames[0].count, 1000);
        assert_eq!(
            b.counted(),
            Counts {
                msgs: 1000,
                bytes: 12_000
            }
        );
        assert_eq!(
            b.unsent(),
            Counts {
                msgs: 1000,
                bytes: 12_000
            }
        );
        // A different size, a request, a PING and an HPUB-like frame of another payload
        // length: none of them joins the run, and the request is one entry.
        push(&mut b, B3, FrameKind::Pub);
        push(&mut b, A, FrameKind::Request(7));
        push(&mut b, A, FrameKind::Request(8));
        push(&mut b, b"PING\r\n", FrameKind::Ping);
        push(&mut b, b"PING\r\n", FrameKind::Ping);
        b.push(FrameKind::Pub, 2, |buf| buf.extend_from_slice(A));
        push(&mut b, A, FrameKind::Pub);
        let kinds: Vec<_> = b
            .pending_frames
            .iter()
            .map(|r| (r.frame.kind, r.frame.payload_len, r.count))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (FrameKind::Pub, 1, 1000),
                (FrameKind::Pub, 1, 1),
                (FrameKind::Request(7), 1, 1),
                (FrameKind::Request(8), 1, 1),
                (FrameKind::Ping, 1, 1),
                (FrameKind::Ping, 1, 1),
                (FrameKind::Pub, 2, 1),
                (FrameKind::Pub, 1, 1),
            ]
        );
        assert_eq!(b.pending_requests().collect::<Vec<_>>(), vec![7, 8]);
    }

    #[test]
    fn partial_write_inside_a_run_then_the_rest() {
        let mut b = big();
        push_n(&mut b, A, 10);
        b.take_chunk().unwrap();
        // 3 frames and 5 bytes of the 4th.
        assert_eq!(
            advance(&mut b, 3 * 12 + 5, false),
            vec![(FrameKind::Pub, 3)]
        );
        assert_eq!(b.partial_front().map(|f| f.kind), Some(FrameKind::Pub));
        assert_eq!(b.counted(), Counts { msgs: 7, bytes: 84 });
        assert_eq!(b.unsent().msgs, 7, "the partly written frame is unsent");
        // 6 more bytes: the 4th frame still lacks its last byte.
        assert_eq!(advance(&mut b, 6, false), vec![]);
        // Its last byte, then 2 whole frames and a byte.
        assert_eq!(
            advance(&mut b, 1 + 24 + 1, false),
            vec![(FrameKind::Pub, 3)]
        );
        assert_eq!(b.counted().msgs, 4);
        // The rest, exactly.
        assert_eq!(advance(&mut b, 11 + 36, false), vec![(FrameKind::Pub, 4)]);
        assert!(!b.has_in_flight());
        assert_eq!(b.counted(), Counts::default());
        assert!(b.in_flight_frames.is_empty());
    }

    #[test]
    fn write_ending_on_a_frame_boundary_inside_a_run() {
        let mut b = big();
        push_n(&mut b, A, 5);
        push(&mut b, B3, FrameKind::Pub);
        b.take_chunk().unwrap();
        assert_eq!(advance(&mut b, 24, false), vec![(FrameKind::Pub, 2)]);
        assert_eq!(b.partial_front(), None, "no frame cut in half");
        assert_eq!(b.in_flight_frames[0].count, 3);
        assert_eq!(
            b.counted(),
            Counts {
                msgs: 4,
                bytes: 36 + 14
            }
        );
        // The run's end and the next frame in one write.
        let w = advance(&mut b, 36 + 14, false);
        assert_eq!(w, vec![(FrameKind::Pub, 3), (FrameKind::Pub, 1)]);
        assert!(b.is_idle());
    }

    #[test]
    fn run_then_other_size_then_request() {
        let mut b = big();
        push_n(&mut b, A, 4);
        push(&mut b, B3, FrameKind::Pub);
        push(&mut b, A, FrameKind::Request(9));
        push_n(&mut b, A, 2);
        b.take_chunk().unwrap();
        assert!(b.in_flight_request(9));
        assert_eq!(b.buffered_requests().collect::<Vec<_>>(), vec![9]);
        // Everything but the last PUB's last byte.
        let total = 4 * 12 + 14 + 12 + 2 * 12;
        let w = advance(&mut b, total - 1, true);
        assert_eq!(
            w,
            vec![
                (FrameKind::Pub, 4),
                (FrameKind::Pub, 1),
                (FrameKind::Request(9), 1),
                (FrameKind::Pub, 1),
            ]
        );
        assert!(!b.in_flight_request(9));
        // Retained as runs too, requests alone; retained requests do not count.
        let kinds: Vec<_> = b
            .retained
            .frames
            .iter()
            .map(|r| (r.frame.kind, r.count))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (FrameKind::Pub, 4),
                (FrameKind::Pub, 1),
                (FrameKind::Request(9), 1),
                (FrameKind::Pub, 1),
            ]
        );
        assert_eq!(b.retained.bytes.len(), total - 12);
        assert_eq!(b.counted().msgs, 4 + 1 + 1 + 1);
        assert_eq!(advance(&mut b, 1, true), vec![(FrameKind::Pub, 1)]);
        assert_eq!(b.retained.frames.back().unwrap().count, 2, "joins the run");
    }

    #[test]
    fn rewind_inside_a_run() {
        let mut b = big();
        push_n(&mut b, A, 6);
        b.take_chunk().unwrap();
        push_n(&mut b, A, 2);
        push(&mut b, b"PING\r\n", FrameKind::Ping);
        // 2 frames and half of the 3rd written, not retained.
        assert_eq!(
            advance(&mut b, 2 * 12 + 6, false),
            vec![(FrameKind::Pub, 2)]
        );
        b.rewind(|f| f.kind.is_publish());
        // The partly written frame whole, the 3 unwritten after it, the 2 pending: one
        // run of 6, the PING dropped.
        assert_eq!(&b.pending[..], A.repeat(6).as_slice());
        assert_eq!(b.pending_frames.len(), 1);
        assert_eq!(b.pending_frames[0].count, 6);
        assert_eq!(b.counted(), Counts { msgs: 6, bytes: 72 });
        assert_eq!(b.partial_front(), None);
        // Written again from the start.
        let chunk = b.take_chunk().unwrap();
        assert_eq!(chunk.len(), 72);
        assert_eq!(advance(&mut b, 72, false), vec![(FrameKind::Pub, 6)]);
        assert_eq!(b.counted(), Counts::default());
    }

    #[test]
    fn rewind_inside_a_run_with_retained_frames() {
        let mut b = big();
        push_n(&mut b, A, 5);
        b.take_chunk().unwrap();
        assert_eq!(advance(&mut b, 2 * 12 + 3, true), vec![(FrameKind::Pub, 2)]);
        b.rewind(|f| f.kind.is_publish());
        // The 2 retained, the partly written, the 2 unwritten: all 5 again, one run.
        assert_eq!(&b.pending[..], A.repeat(5).as_slice());
        assert_eq!(b.pending_frames.len(), 1);
        assert_eq!(b.counted(), Counts { msgs: 5, bytes: 60 });
        // A poison frame at the front: only it goes, the run stays.
        assert_eq!(b.drop_first_pending().map(|f| f.len), Some(12));
        assert_eq!(b.pending_frames[0].count, 4);
        assert_eq!(&b.pending[..], A.repeat(4).as_slice());
        assert_eq!(b.counted(), Counts { msgs: 4, bytes: 48 });
    }

    #[test]
    fn retained_run_released_in_part() {
        let mut b = big();
        push_n(&mut b, A, 6);
        push(&mut b, B3, FrameKind::Pub);
        b.take_chunk().unwrap();
        advance(&mut b, 6 * 12 + 14, true);
        assert_eq!(b.retained.frames.len(), 2);
        assert_eq!(b.counted().msgs, 7);
        // A PONG confirms 4 of the run.
        b.release_retained(4);
        assert_eq!(b.retained.frames[0].count, 2);
        assert_eq!(b.retained.bytes.len(), 2 * 12 + 14);
        assert_eq!(
            b.counted(),
            Counts {
                msgs: 3,
                bytes: 24 + 14
            }
        );
        // The next confirms the run's end and the frame after it.
        b.release_retained(3);
        assert!(b.retained.frames.is_empty());
        assert!(b.retained.bytes.is_empty());
        assert_eq!(b.counted(), Counts::default());
    }

    #[test]
    fn retained_run_moved_out_released_and_requeued() {
        let mut b = big();
        push_n(&mut b, A, 5);
        b.take_chunk().unwrap();
        advance(&mut b, 60, true);
        let mut r = b.take_retained();
        assert_eq!(b.counted().msgs, 5, "moved out, still counted");
        b.release_from(&mut r, 2);
        assert_eq!(b.counted(), Counts { msgs: 3, bytes: 36 });
        push_n(&mut b, A, 2);
        b.requeue(r);
        // The 3 unconfirmed before the 2 pending: one run of 5.
        assert_eq!(&b.pending[..], A.repeat(5).as_slice());
        assert_eq!(b.pending_frames.len(), 1);
        assert_eq!(b.pending_frames[0].count, 5);
        assert_eq!(b.counted(), Counts { msgs: 5, bytes: 60 });
        assert_eq!(b.discard_retained(), Counts::default());
    }

    #[test]
    fn remove_pending_request_between_runs() {
        let mut b = big();
        push_n(&mut b, A, 3);
        push(&mut b, A, FrameKind::Request(5));
        push_n(&mut b, A, 4);
        assert_eq!(b.pending_frames.len(), 3);
        let removed = b.remove_pending(|f| f.kind == FrameKind::Request(5));
        assert_eq!(removed, Counts { msgs: 1, bytes: 12 });
        // The runs either side are alike: now one.
        assert_eq!(b.pending_frames.len(), 1);
        assert_eq!(b.pending_frames[0].count, 7);
        assert_eq!(&b.pending[..], A.repeat(7).as_slice());
        assert_eq!(b.counted(), Counts { msgs: 7, bytes: 84 });
        assert_eq!(b.pending_requests().count(), 0);
        // Removing by payload length takes a whole run.
        for _ in 0..2 {
            b.push(FrameKind::Pub, 3, |buf| buf.extend_from_slice(B3));
        }
        assert_eq!(b.pending_frames.len(), 2);
        let removed = b.remove_pending(|f| f.payload_len > 1);
        assert_eq!(removed, Counts { msgs: 2, bytes: 28 });
        assert_eq!(b.counted(), Counts { msgs: 7, bytes: 84 });
    }

    #[test]
    fn run_length_is_not_the_bound() {
        // Runs change the bookkeeping, not the bounds: the message bound still refuses.
        let mut b = buf();
        push_n(&mut b, A, 3);
        assert_eq!(b.pending_frames.len(), 1);
        assert!(!b.has_room(12));
        b.take_chunk().unwrap();
        advance(&mut b, 12, false);
        assert!(b.has_room(12));
    }
}
