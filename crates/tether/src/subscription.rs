//! Subscriptions: a bounded delivery queue per subscription with slow-consumer episodes.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use crate::error::SubscribeError;
use crate::events::{EventHub, EventKind};
use crate::message::Message;
use crate::Client;

/// Why a subscription's stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Unsubscribed, auto-unsubscribe count reached, drained or the client closed.
    Done,
    /// The server ended it.
    Error(SubscribeError),
}

/// What a [`SubQueue`] holds, under its lock.
#[derive(Debug)]
struct QueueContents {
    msgs: VecDeque<Message>,
    bytes: usize,
    ended: Option<Ended>,
    /// In a slow-consumer episode: the drops since its start event.
    slow_episode: Option<u64>,
}

/// The queue between the driver and a [`Subscriber`].
#[derive(Debug)]
pub(crate) struct SubQueue {
    pub(crate) sid: u64,
    pub(crate) subject: String,
    max_msgs: usize,
    max_bytes: usize,
    q: Mutex<QueueContents>,
    waker: AtomicWaker,
    hub: Arc<EventHub>,
    slow_total: Arc<AtomicU64>,
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    /// Messages queued for this subscription (taken or not yet).
    pub(crate) received: AtomicU64,
    /// unsubscribe_after(n): the stream ends once n messages in all were taken (0: none).
    pub(crate) limit: AtomicU64,
}

impl SubQueue {
    pub(crate) fn new(
        sid: u64,
        subject: String,
        max_msgs: usize,
        max_bytes: usize,
        hub: Arc<EventHub>,
        slow_total: Arc<AtomicU64>,
    ) -> Self {
        Self {
            sid,
            subject,
            max_msgs,
            max_bytes,
            q: Mutex::new(QueueContents {
                msgs: VecDeque::new(),
                bytes: 0,
                ended: None,
                slow_episode: None,
            }),
            waker: AtomicWaker::new(),
            hub,
            slow_total,
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            received: AtomicU64::new(0),
            limit: AtomicU64::new(0),
        }
    }

    /// Queue a message from the driver, or drop it when over the pending limits.
    pub(crate) fn push(&self, msg: Message) {
        let mut q = self.q.lock();
        if q.ended.is_some() {
            return;
        }
        if q.msgs.len() >= self.max_msgs || q.bytes.saturating_add(msg.size) > self.max_bytes {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.slow_total.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tether_slow_consumer_dropped_total").increment(1);
            if let Some(dropped) = q.slow_episode.as_mut() {
                *dropped += 1;
            } else {
                // One event when an episode starts; the rest are counted into its end.
                q.slow_episode = Some(0);
                self.hub.emit(EventKind::SlowConsumer {
                    subject: self.subject.clone(),
                    sid: self.sid,
                    dropped: 1,
                });
            }
            return;
        }
        let was_empty = q.msgs.is_empty();
        self.received.fetch_add(1, Ordering::Relaxed);
        q.bytes += msg.size;
        q.msgs.push_back(msg);
        drop(q);
        if was_empty {
            self.waker.wake();
        }
    }

    /// End the stream after what it already holds.
    pub(crate) fn end(&self, why: Ended) {
        let mut q = self.q.lock();
        if q.ended.is_none() {
            q.ended = Some(why);
        }
        drop(q);
        self.waker.wake();
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.q.lock().ended.is_some()
    }

    pub(crate) fn pending(&self) -> usize {
        self.q.lock().msgs.len()
    }

    fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit > 0 && self.delivered.load(Ordering::Relaxed) >= limit {
            return Poll::Ready(None);
        }
        let mut q = self.q.lock();
        if let Some(m) = q.msgs.pop_front() {
            q.bytes -= m.size;
            let drained = q.msgs.len() < self.max_msgs / 2 && q.bytes < self.max_bytes / 2;
            if let Some(dropped) = q.slow_episode.take_if(|_| drained) {
                self.hub.emit(EventKind::SlowConsumerEnded {
                    subject: self.subject.clone(),
                    sid: self.sid,
                    dropped,
                });
            }
            self.delivered.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Some(m));
        }
        if q.ended.is_some() {
            return Poll::Ready(None);
        }
        self.waker.register(cx.waker());
        Poll::Pending
    }

    fn error(&self) -> Option<SubscribeError> {
        match &self.q.lock().ended {
            Some(Ended::Error(e)) => Some(e.clone()),
            _ => None,
        }
    }
}

/// Options of one subscription, for [`Client::subscribe_with`].
///
/// ```
/// let opts = tether::SubscribeOptions::new()
///     .queue("workers")
///     .pending_limits(1_000, 8 * 1024 * 1024);
/// let firehose = tether::SubscribeOptions::new().unlimited_pending();
/// # let _ = (opts, firehose);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    pub(crate) queue: Option<String>,
    pub(crate) pending: Option<(usize, usize)>,
}

impl SubscribeOptions {
    /// No queue group, the client's pending limits
    /// ([`ConnectOptions::pending_limits`](crate::ConnectOptions::pending_limits)).
    pub fn new() -> Self {
        Self::default()
    }

    /// Join queue group `queue`: each message goes to one member of the group.
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Pending limits of this subscription: messages and bytes queued for its stream;
    /// beyond either, messages are dropped and counted (slow consumer). Each must be at
    /// least 1; `usize::MAX` means no bound.
    #[must_use]
    pub fn pending_limits(mut self, msgs: usize, bytes: usize) -> Self {
        self.pending = Some((msgs, bytes));
        self
    }

    /// No pending limits: every message is queued, however slow the consumer. Memory
    /// then grows with the backlog; use it for streams that are always read promptly.
    #[must_use]
    pub fn unlimited_pending(self) -> Self {
        self.pending_limits(usize::MAX, usize::MAX)
    }
}

/// A subscription: a [`Stream`](futures_core::Stream) of [`Message`]s.
///
/// # Behavior
/// - Messages queue up to the pending limits (65,536 messages / 64 MiB by default);
///   beyond them they are dropped and counted, with one `SlowConsumer` event when an
///   episode starts and one `SlowConsumerEnded` when the queue falls below half its limit.
/// - The stream ends after an unsubscribe, when an auto-unsubscribe count is reached,
///   after `drain()` (once it has yielded what it held), when the server denies the
///   subscription ([`Subscriber::error`] tells why), or when the client closes.
/// - Dropping it unsubscribes; it keeps the connection alive while it lives.
#[derive(Debug)]
pub struct Subscriber {
    pub(crate) queue: Arc<SubQueue>,
    pub(crate) client: Client,
}

impl Subscriber {
    /// The subscription id.
    pub fn sid(&self) -> u64 {
        self.queue.sid
    }

    /// The subject subscribed to.
    pub fn subject(&self) -> &str {
        &self.queue.subject
    }

    /// Messages handed to this stream so far.
    pub fn delivered(&self) -> u64 {
        self.queue.delivered.load(Ordering::Relaxed)
    }

    /// Messages dropped for exceeding the pending limits.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped.load(Ordering::Relaxed)
    }

    /// Messages queued and not yet taken.
    pub fn pending(&self) -> usize {
        self.queue.pending()
    }

    /// Why the server ended this subscription, if it did.
    pub fn error(&self) -> Option<SubscribeError> {
        self.queue.error()
    }

    /// Unsubscribe now. Messages already queued are still yielded, then the stream ends.
    pub fn unsubscribe(&mut self) {
        self.client.unsubscribe_sid(self.queue.sid, None);
        self.queue.end(Ended::Done);
    }

    /// Unsubscribe after `n` messages in all (counted from the start of the subscription).
    pub fn unsubscribe_after(&mut self, n: u64) {
        if n > 0 {
            self.queue.limit.store(n, Ordering::Relaxed);
        }
        self.client.unsubscribe_sid(self.queue.sid, Some(n));
        if n <= self.queue.delivered.load(Ordering::Relaxed) {
            self.queue.end(Ended::Done);
        }
    }
}

impl futures_core::Stream for Subscriber {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.queue.poll_pop(cx)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // Never spawns or blocks: marks state, queues an UNSUB and writes it at once when
        // the driver idles (a non-blocking write), else leaves it to the driver.
        if self.queue.is_ended() {
            self.client.forget_sid(self.queue.sid);
        } else {
            self.client.unsubscribe_sid(self.queue.sid, None);
        }
    }
}
