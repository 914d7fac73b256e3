//! Pull requests: `fetch` a batch, or a continuous `messages()` stream with heartbeats.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::consumer::{Consumer, ConsumerInfo};
use super::context::Context;
use super::error::JetStreamError;
use super::message::JsMessage;
use crate::{State, Subscriber};

/// Default messages asked for per pull request.
pub const DEFAULT_BATCH: usize = 500;
/// Default expiry of a pull request.
pub const DEFAULT_EXPIRES: Duration = Duration::from_secs(30);
/// The longest expiry a pull may ask for.
pub const MAX_EXPIRES: Duration = Duration::from_secs(24 * 3600);
/// Default idle heartbeat of a pull request (under half of [`DEFAULT_EXPIRES`]).
pub const DEFAULT_IDLE_HEARTBEAT: Duration = Duration::from_secs(10);

/// A pull request's shape: how many messages, how long it waits, its heartbeat.
///
/// The idle heartbeat belongs to the pull, not to the connection: the server sends one
/// when it has had nothing to deliver on this pull for that long, and it must be under
/// half of `expires` (checked when the pull is built). Two heartbeat intervals without
/// a message or heartbeat is a missed heartbeat (see [`PullError::MissedHeartbeat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullOptions {
    pub(crate) batch: usize,
    pub(crate) max_bytes: usize,
    pub(crate) expires: Duration,
    pub(crate) idle_heartbeat: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            batch: DEFAULT_BATCH,
            max_bytes: 0,
            expires: DEFAULT_EXPIRES,
            idle_heartbeat: DEFAULT_IDLE_HEARTBEAT,
        }
    }
}

impl PullOptions {
    /// The defaults: batch 500, expires 30 s, idle heartbeat 10 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages per pull request (at least 1).
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }

    /// Bytes per pull request at most (0: no limit).
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }

    /// How long a pull request waits on the server.
    pub fn expires(mut self, d: Duration) -> Self {
        self.expires = d;
        self
    }

    /// The pull's idle heartbeat: under half of `expires`; zero turns heartbeats off
    /// (a dead link is then found only by the connection's own pings).
    pub fn idle_heartbeat(mut self, d: Duration) -> Self {
        self.idle_heartbeat = d;
        self
    }

    /// Check the options as the server and tether need them.
    pub fn validate(&self) -> Result<(), JetStreamError> {
        if self.batch == 0 {
            return Err(JetStreamError::InvalidOption {
                option: "batch",
                reason: "a batch of 0 asks for nothing; ask for at least 1 message".to_owned(),
            });
        }
        if self.expires < Duration::from_millis(1) {
            return Err(JetStreamError::InvalidOption {
                option: "expires",
                reason: format!(
                    "expires {:?} is too short; give the pull at least 1 ms (seconds are usual)",
                    self.expires
                ),
            });
        }
        if self.expires > MAX_EXPIRES {
            return Err(JetStreamError::InvalidOption {
                option: "expires",
                reason: format!(
                    "expires {:?} is too long; a pull waits at most {:?} (pulls are re-issued \
                     as they expire, so a shorter one loses nothing)",
                    self.expires, MAX_EXPIRES
                ),
            });
        }
        if !self.idle_heartbeat.is_zero() && self.idle_heartbeat.saturating_mul(2) >= self.expires {
            return Err(JetStreamError::InvalidOption {
                option: "idle_heartbeat",
                reason: format!(
                    "idle_heartbeat {:?} must be under half of expires {:?} (a pull must see \
                     two heartbeats before it expires); lower it below {:?} or raise expires",
                    self.idle_heartbeat,
                    self.expires,
                    self.expires / 2
                ),
            });
        }
        Ok(())
    }
}

/// Something other than a message on a pull consumer's stream. The stream goes on after
/// it, except after [`PullError::ConsumerDeleted`] and after a [`PullError::Status`] for a
/// pull that can never succeed (the consumer's max_batch, max_expires or max_bytes is
/// below the pull's, a 400, a message larger than max_bytes, a push consumer), which
/// end it; a closed client ends it too.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// No message or heartbeat for two idle_heartbeat intervals: tether sent a PING to
    /// test the link and re-issued the pull.
    #[error("missed idle heartbeat on consumer {consumer:?} of stream {stream:?} (nothing for {silent_for:?}): link probed, pull re-issued")]
    MissedHeartbeat {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
        /// How long nothing arrived.
        silent_for: Duration,
    },
    /// The consumer's leader changed; the pull was re-issued.
    #[error("the leader of consumer {consumer:?} changed; pull re-issued")]
    LeadershipChange {
        /// The consumer.
        consumer: String,
    },
    /// The consumer was deleted: the stream ends.
    #[error("consumer {consumer:?} of stream {stream:?} was deleted: {reason}")]
    ConsumerDeleted {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
        /// The server's status text, or how it was found.
        reason: String,
    },
    /// Another status the server sent for the pull (409 Exceeded MaxWaiting, ...).
    #[error("pull status {code} on consumer {consumer:?}: {description}")]
    Status {
        /// The consumer.
        consumer: String,
        /// The status code.
        code: u16,
        /// The server's description.
        description: String,
    },
    /// Issuing a pull failed (the link is down, say); it is retried.
    #[error("pull request on consumer {consumer:?} failed: {error}")]
    Request {
        /// The consumer.
        consumer: String,
        /// Why.
        error: String,
    },
}

/// How long `fetch` waits past its expiry for the server's 408 before it returns what
/// came; and the expiry grace of a `messages()` pull without heartbeats.
const EXPIRY_GRACE: Duration = Duration::from_secs(1);

/// How long a pull waits before it is sent again after the server refused one (409
/// Exceeded MaxWaiting, 400...) or nobody answered it.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// The longest idle heartbeat `fetch` asks for.
const FETCH_MAX_HEARTBEAT: Duration = Duration::from_secs(5);

/// A fetch of `expires` gets a heartbeat of a quarter of it (at most 5 s), so a dead
/// link is found long before the fetch would time out; under 2 s, none.
fn fetch_heartbeat(expires: Duration) -> Duration {
    if expires < Duration::from_secs(2) {
        Duration::ZERO
    } else {
        (expires / 4).min(FETCH_MAX_HEARTBEAT)
    }
}

/// The JSON body of `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
fn pull_body(batch: usize, max_bytes: usize, expires: Duration, heartbeat: Duration) -> Vec<u8> {
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let mut body = format!("{{\"batch\":{batch},\"expires\":{}", nanos(expires));
    if max_bytes > 0 {
        let _ = write!(body, ",\"max_bytes\":{max_bytes}");
    }
    if !heartbeat.is_zero() {
        let _ = write!(body, ",\"idle_heartbeat\":{}", nanos(heartbeat));
    }
    body.push('}');
    body.into_bytes()
}

/// What arrived on a pull's inbox.
#[derive(Debug, PartialEq)]
enum Arrival {
    /// A stream message.
    Message,
    /// 100 Idle Heartbeat.
    Heartbeat,
    /// A pull request ended (408 Request Timeout, 409 Batch Completed, ...) with this
    /// much of it unfilled.
    Ended { msgs: usize, bytes: usize },
    /// 409 Message Size Exceeds MaxBytes: the next message is larger than what the pull
    /// had left (`bytes`); the pull ended.
    TooBig { msgs: usize, bytes: usize },
    /// 404 No Messages (a no_wait pull).
    NoMessages,
    /// 409 Leadership Change: every waiting pull is gone.
    LeadershipChange,
    /// 409 Consumer Deleted (also sent when the consumer moved off this server).
    Deleted,
    /// 503: nobody serves the consumer's pull subject.
    NoResponders,
    /// Any other status: the pull was refused (400, 409 Exceeded MaxWaiting, ...);
    /// `permanent` when asking again the same way cannot succeed (the consumer's limits
    /// or the request itself are at fault).
    Refused {
        code: u16,
        description: String,
        permanent: bool,
    },
}

fn classify(msg: &crate::Message) -> Arrival {
    let Some(headers) = msg.headers.as_ref() else {
        return Arrival::Message;
    };
    let Some(status) = headers.status() else {
        return Arrival::Message;
    };
    if msg.reply.is_some() {
        // A stream message whose publisher set a status line of its own.
        return Arrival::Message;
    }
    let description = headers.description().unwrap_or_default();
    let count = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    let unfilled = (count("Nats-Pending-Messages"), count("Nats-Pending-Bytes"));
    match (status.0, unfilled) {
        (100, _) => Arrival::Heartbeat,
        (404, _) => Arrival::NoMessages,
        (503, _) => Arrival::NoResponders,
        (409, _) if description.eq_ignore_ascii_case("Leadership Change") => {
            Arrival::LeadershipChange
        }
        (409, _) if description.eq_ignore_ascii_case("Consumer Deleted") => Arrival::Deleted,
        (409, (Some(msgs), bytes))
            if description.eq_ignore_ascii_case("Message Size Exceeds MaxBytes") =>
        {
            Arrival::TooBig {
                msgs,
                bytes: bytes.unwrap_or(0),
            }
        }
        (408 | 409, (Some(msgs), bytes)) => Arrival::Ended {
            msgs,
            bytes: bytes.unwrap_or(0),
        },
        (code, _) => Arrival::Refused {
            code,
            permanent: code == 400
                || description.starts_with("Exceeded MaxRequest")
                || description.eq_ignore_ascii_case("Consumer is push based"),
            description: description.to_owned(),
        },
    }
}

fn new_inbox(client: &crate::Client) -> String {
    format!(
        "{}.{}",
        client.shared().opts.inbox_prefix,
        crate::client::nuid()
    )
}

/// A boxed future, as the stream keeps them between polls.
type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn state_change(mut rx: watch::Receiver<State>) -> Pending<(watch::Receiver<State>, bool)> {
    Box::pin(async move {
        let alive = rx.changed().await.is_ok();
        (rx, alive)
    })
}

/// A consumer's continuous stream of messages (see [`Consumer::messages`]).
///
/// Items are messages, or [`PullError`]s that report what happened to the pulls (a
/// missed heartbeat, a leadership change, a refused pull); the stream goes on after
/// them. It ends when the consumer is deleted (after a
/// [`PullError::ConsumerDeleted`] item), when the client closes or drains, or when it
/// is dropped (which unsubscribes its inbox; messages delivered and not acked are
/// redelivered after the consumer's ack_wait).
pub struct Messages {
    sub: Subscriber,
    ctx: Context,
    stream: String,
    consumer: String,
    pull_subject: String,
    inbox: String,
    opts: PullOptions,
    /// Messages and bytes asked for and not yet delivered (as far as tether knows).
    pending_msgs: usize,
    pending_bytes: usize,
    /// When the inbox last received anything (message or status).
    last_activity: Instant,
    /// When the last pull was sent.
    last_pull: Instant,
    /// A pull is due but waits until then (after a refusal or a failed send).
    retry_at: Option<Instant>,
    timer: Pin<Box<tokio::time::Sleep>>,
    connected: bool,
    state: Option<Pending<(watch::Receiver<State>, bool)>>,
    /// After no responders: does the consumer still exist?
    check: Option<Pending<Result<ConsumerInfo, JetStreamError>>>,
    queued: VecDeque<PullError>,
    done: bool,
    /// Counted in `Inner::pull_streams` (until it ends or is dropped).
    counted: bool,
}

impl std::fmt::Debug for Messages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messages")
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .field("inbox", &self.inbox)
            .field("opts", &self.opts)
            .field("pending_msgs", &self.pending_msgs)
            .field("pending_bytes", &self.pending_bytes)
            .field("connected", &self.connected)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// Far enough to mean "no deadline" for the timer.
const NEVER: Duration = Duration::from_secs(86_400);

impl Messages {
    /// When the timer must fire next: a heartbeat check (or, without heartbeats, a pull's
    /// expiry), or a delayed pull.
    fn next_deadline(&self, now: Instant) -> Instant {
        // Nothing is due while no link is up or the consumer is being checked: a link
        // coming up or the check's answer wakes the stream instead.
        if !self.connected || self.check.is_some() {
            return now + NEVER;
        }
        let hb = self.opts.idle_heartbeat;
        let at = if hb.is_zero() {
            self.last_pull + self.opts.expires + EXPIRY_GRACE
        } else {
            self.last_activity + hb * 2
        };
        self.retry_at.map_or(at, |r| at.min(r))
    }

    /// Re-arm the timer if something made its deadline earlier.
    fn arm_if_earlier(&mut self, now: Instant) {
        let at = self.next_deadline(now);
        if at < self.timer.deadline() {
            self.timer.as_mut().reset(at);
        }
    }

    /// Every pull is assumed gone (reconnect, leadership change, missed heartbeat): ask
    /// again from scratch.
    fn restart_pulls(&mut self, now: Instant) {
        self.pending_msgs = 0;
        self.pending_bytes = 0;
        self.last_activity = now;
        self.top_up(now);
    }

    /// Send a pull when less than half of the batch (or of max_bytes) is outstanding.
    fn top_up(&mut self, now: Instant) {
        if !self.connected || self.check.is_some() || self.done {
            return;
        }
        if self.retry_at.is_some_and(|r| r > now) {
            return;
        }
        self.retry_at = None;
        let batch = self.opts.batch;
        let max_bytes = self.opts.max_bytes;
        // With max_bytes, bytes are the limit that binds: a pull goes out when half of
        // them are free and asks for the full batch (the server ends a pull whose bytes
        // run out without saying how many messages it had left, so a message count
        // would drift). Without, half of the batch.
        let (n, b) = if max_bytes > 0 {
            if self.pending_bytes > max_bytes / 2 {
                return;
            }
            (batch, max_bytes - self.pending_bytes)
        } else {
            if self.pending_msgs > batch / 2 {
                return;
            }
            (batch - self.pending_msgs, 0)
        };
        let body = pull_body(n, b, self.opts.expires, self.opts.idle_heartbeat);
        match self
            .ctx
            .client
            .try_publish_full(&self.pull_subject, Some(&self.inbox), None, &body)
        {
            Ok(()) => {
                self.pending_msgs += n;
                self.pending_bytes += b;
                if self.pending_msgs == n {
                    // Nothing was outstanding: the heartbeat clock starts with this pull.
                    self.last_activity = now;
                }
                self.last_pull = now;
            }
            Err(e) => {
                // Counted as an attempt: without heartbeats the expiry clock restarts, so
                // the timer does not fall due again before the retry.
                self.last_pull = now;
                tracing::debug!(consumer = %self.consumer, error = %e, "pull request not sent");
                self.queued.push_back(PullError::Request {
                    consumer: self.consumer.clone(),
                    error: e.to_string(),
                });
                self.retry_at = Some(now + RETRY_DELAY);
                self.arm_if_earlier(now);
            }
        }
    }

    /// The client's state changed (the watch only fires on a real transition). Connected
    /// again, even when it read Connected at the last look, means a link came up since:
    /// the old link's pulls are gone with it.
    fn on_state(&mut self, state: State, now: Instant) {
        let up = state == State::Connected;
        if up {
            self.connected = true;
            // A new link: whatever waited for a retry is asked for now.
            self.retry_at = None;
            tracing::debug!(consumer = %self.consumer, "link up: pulls re-issued");
            self.restart_pulls(now);
            self.arm_if_earlier(now);
        } else if !up {
            // Heartbeats cannot come while no link is up: the clock stops.
            self.connected = false;
        }
    }

    /// Ask the server whether the consumer still exists (after no responders or a 409
    /// Consumer Deleted); pulls wait for the answer.
    fn check_consumer(&mut self) {
        if self.check.is_none() {
            let ctx = self.ctx.clone();
            let (stream, consumer) = (self.stream.clone(), self.consumer.clone());
            self.check = Some(Box::pin(async move {
                ctx.consumer_info(&stream, &consumer).await
            }));
        }
    }

    fn on_timer(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|r| r <= now) {
            self.top_up(now);
        }
        if self.connected && self.check.is_none() {
            let hb = self.opts.idle_heartbeat;
            if !hb.is_zero() && now >= self.last_activity + hb * 2 {
                let silent_for = now - self.last_activity;
                tracing::warn!(
                    stream = %self.stream,
                    consumer = %self.consumer,
                    silent_for = ?silent_for,
                    "missed idle heartbeat: probing the link and re-issuing the pull"
                );
                metrics::counter!("tether_js_missed_heartbeats_total").increment(1);
                // A PING now: a dead link is found within pong_timeout.
                self.ctx.client.probe_link();
                self.queued.push_back(PullError::MissedHeartbeat {
                    stream: self.stream.clone(),
                    consumer: self.consumer.clone(),
                    silent_for,
                });
                self.restart_pulls(now);
            } else if hb.is_zero() && now >= self.last_pull + self.opts.expires + EXPIRY_GRACE {
                // The pull expired and its 408 never came: ask again.
                self.restart_pulls(now);
            }
        }
        let at = self.next_deadline(now);
        self.timer.as_mut().reset(at);
    }

    fn on_status(&mut self, arrival: Arrival, now: Instant) {
        match arrival {
            Arrival::Message | Arrival::Heartbeat | Arrival::NoMessages => {}
            Arrival::Ended { msgs, bytes } => {
                self.pending_msgs = self.pending_msgs.saturating_sub(msgs);
                self.pending_bytes = self.pending_bytes.saturating_sub(bytes);
                self.top_up(now);
            }
            Arrival::TooBig { msgs, bytes } => {
                if bytes >= self.opts.max_bytes {
                    // A pull of the full max_bytes got nothing: the next message can never
                    // fit, and every pull would end the same way.
                    self.queued.push_back(PullError::Status {
                        consumer: self.consumer.clone(),
                        code: 409,
                        description: format!(
                            "Message Size Exceeds MaxBytes: the next message is larger than \
                             max_bytes ({}); raise max_bytes to consume it",
                            self.opts.max_bytes
                        ),
                    });
                    self.done = true;
                    return;
                }
                // Routine: a partly filled pull met a message larger than its rest.
                self.pending_msgs = self.pending_msgs.saturating_sub(msgs);
                self.pending_bytes = self.pending_bytes.saturating_sub(bytes);
                self.top_up(now);
            }
            Arrival::LeadershipChange => {
                self.queued.push_back(PullError::LeadershipChange {
                    consumer: self.consumer.clone(),
                });
                self.restart_pulls(now);
            }
            // Sent on a delete, and also to a server the consumer moved off: ask.
            Arrival::Deleted | Arrival::NoResponders => self.check_consumer(),
            Arrival::Refused {
                code,
                description,
                permanent,
            } => {
                tracing::warn!(consumer = %self.consumer, code, %description, permanent, "pull refused");
                self.queued.push_back(PullError::Status {
                    consumer: self.consumer.clone(),
                    code,
                    description,
                });
                if permanent {
                    // The consumer's limits (max_batch, max_expires, max_bytes) or the
                    // request: the same pull would be refused forever.
                    self.done = true;
                    return;
                }
                // Which pull was refused is unknown: count none as outstanding, and ask
                // again a little later (asking at once could be refused the same way).
                self.pending_msgs = 0;
                self.pending_bytes = 0;
                self.retry_at = Some(now + RETRY_DELAY);
                self.arm_if_earlier(now);
            }
        }
    }

    fn on_check(&mut self, r: Result<ConsumerInfo, JetStreamError>, now: Instant) {
        match r {
            Err(
                e @ (JetStreamError::ConsumerNotFound { .. }
                | JetStreamError::StreamNotFound { .. }),
            ) => self.end_deleted(e.to_string()),
            Ok(_) => {
                self.queued.push_back(PullError::Request {
                    consumer: self.consumer.clone(),
                    error: "the pull went unanswered although the consumer exists (its \
                            leader is being elected, or it moved?); asking again"
                        .to_owned(),
                });
                self.retry_at = Some(now + RETRY_DELAY);
                self.restart_pulls(now);
                self.arm_if_earlier(now);
            }
            Err(e) => {
                self.queued.push_back(PullError::Request {
                    consumer: self.consumer.clone(),
                    error: format!(
                        "no responders for the pull, and the consumer check failed: {e}"
                    ),
                });
                self.retry_at = Some(now + RETRY_DELAY);
                self.restart_pulls(now);
                self.arm_if_earlier(now);
            }
        }
    }

    fn end_deleted(&mut self, reason: String) {
        tracing::warn!(stream = %self.stream, consumer = %self.consumer, %reason, "consumer gone: stream ends");
        self.queued.push_back(PullError::ConsumerDeleted {
            stream: self.stream.clone(),
            consumer: self.consumer.clone(),
            reason,
        });
        self.done = true;
    }
}

impl Messages {
    /// The stream ended or is dropped: no more of its messages are on their way, so the
    /// driver need not hold for them; the acks of its last messages go out now.
    fn uncount(&mut self) {
        let shared = self.ctx.client.shared();
        if std::mem::take(&mut self.counted) {
            let mut inner = shared.lock("messages ended");
            inner.pull_streams = inner.pull_streams.saturating_sub(1);
        }
        shared.write_held();
    }
}

impl Drop for Messages {
    fn drop(&mut self) {
        self.uncount();
    }
}

impl futures_core::Stream for Messages {
    type Item = Result<JsMessage, PullError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(e) = this.queued.pop_front() {
                return Poll::Ready(Some(Err(e)));
            }
            if this.done {
                this.uncount();
                return Poll::Ready(None);
            }
            if let Some(f) = this.state.as_mut() {
                if let Poll::Ready((rx, alive)) = f.as_mut().poll(cx) {
                    let state = *rx.borrow();
                    if !alive || state == State::Closed {
                        this.state = None;
                        this.done = true;
                        continue;
                    }
                    this.state = Some(state_change(rx));
                    this.on_state(state, Instant::now());
                    continue;
                }
            }
            if let Some(f) = this.check.as_mut() {
                if let Poll::Ready(r) = f.as_mut().poll(cx) {
                    this.check = None;
                    this.on_check(r, Instant::now());
                    continue;
                }
            }
            match Pin::new(&mut this.sub).poll_next(cx) {
                Poll::Ready(Some(msg)) => {
                    let now = Instant::now();
                    this.last_activity = now;
                    match classify(&msg) {
                        Arrival::Message => {
                            this.pending_msgs = this.pending_msgs.saturating_sub(1);
                            // The server counts subject and reply too.
                            let size = msg.size
                                + msg.subject.as_str().len()
                                + msg.reply.as_ref().map_or(0, |r| r.as_str().len());
                            this.pending_bytes = this.pending_bytes.saturating_sub(size);
                            this.top_up(now);
                            let client = this.ctx.client.clone();
                            return Poll::Ready(Some(Ok(JsMessage::new(
                                msg,
                                client,
                                this.ctx.settings.timeout,
                            ))));
                        }
                        other => this.on_status(other, now),
                    }
                    continue;
                }
                Poll::Ready(None) => {
                    // The client closed or drained, or the server refused the inbox.
                    if let Some(e) = this.sub.error() {
                        this.queued.push_back(PullError::Request {
                            consumer: this.consumer.clone(),
                            error: e.to_string(),
                        });
                    }
                    this.done = true;
                    continue;
                }
                Poll::Pending => {}
            }
            if this.timer.as_mut().poll(cx).is_ready() {
                this.on_timer(Instant::now());
                continue;
            }
            // Run dry: the acks held since the last read go out now, from this thread.
            this.ctx.client.shared().write_held();
            return Poll::Pending;
        }
    }
}

impl Consumer {
    fn pull_subject(&self) -> String {
        self.ctx
            .api_subject(&format!("CONSUMER.MSG.NEXT.{}.{}", self.stream, self.name))
    }

    /// One pull request for up to `batch` messages, waiting at most `expires` on the
    /// server; returns what came, possibly nothing (the server had no more before the
    /// pull expired).
    ///
    /// A fetch of 2 s or more asks for an idle heartbeat of a quarter of `expires` (at
    /// most 5 s): when two are missed, the link is probed with a PING at once and the
    /// fetch returns what it has, or [`PullError::MissedHeartbeat`] if nothing came.
    pub async fn fetch(
        &self,
        batch: usize,
        expires: Duration,
    ) -> Result<Vec<JsMessage>, JetStreamError> {
        let heartbeat = fetch_heartbeat(expires);
        let opts = PullOptions::new()
            .batch(batch)
            .expires(expires)
            .idle_heartbeat(heartbeat);
        opts.validate()?;
        let client = &self.ctx.client;
        let inbox = new_inbox(client);
        let mut sub = client
            .subscribe(&inbox)
            .await
            .map_err(|e| self.pull_failed(e.to_string()))?;
        let body = pull_body(batch, 0, expires, heartbeat);
        client
            .publish_full(&self.pull_subject(), Some(&inbox), None, &body)
            .await
            .map_err(|e| self.pull_failed(e.to_string()))?;
        let started = Instant::now();
        let end = started + expires + EXPIRY_GRACE;
        let mut last = started;
        let mut out = Vec::with_capacity(batch.min(1024));
        loop {
            let wake = if heartbeat.is_zero() {
                end
            } else {
                (last + heartbeat * 2).min(end)
            };
            let msg = match tokio::time::timeout_at(wake, sub.next()).await {
                Ok(Some(msg)) => msg,
                Ok(None) if out.is_empty() => {
                    return Err(self.pull_failed(
                        sub.error()
                            .map_or_else(|| "the client closed".to_owned(), |e| e.to_string()),
                    ))
                }
                Ok(None) => break,
                Err(_) if wake >= end => break,
                Err(_) => {
                    let silent_for = last.elapsed();
                    tracing::warn!(stream = %self.stream, consumer = %self.name, silent_for = ?silent_for, "fetch: missed idle heartbeat; probing the link");
                    metrics::counter!("tether_js_missed_heartbeats_total").increment(1);
                    client.probe_link();
                    if out.is_empty() {
                        return Err(JetStreamError::Pull(PullError::MissedHeartbeat {
                            stream: self.stream.clone(),
                            consumer: self.name.clone(),
                            silent_for,
                        }));
                    }
                    break;
                }
            };
            last = Instant::now();
            match classify(&msg) {
                Arrival::Message => {
                    out.push(JsMessage::new(
                        msg,
                        client.clone(),
                        self.ctx.settings.timeout,
                    ));
                    if out.len() >= batch {
                        break;
                    }
                }
                Arrival::Heartbeat => {}
                Arrival::Ended { .. } | Arrival::NoMessages | Arrival::TooBig { .. } => break,
                Arrival::LeadershipChange if !out.is_empty() => break,
                Arrival::LeadershipChange => {
                    return Err(JetStreamError::Pull(PullError::LeadershipChange {
                        consumer: self.name.clone(),
                    }))
                }
                Arrival::Deleted | Arrival::NoResponders => {
                    // Gone, or its leader is being elected: the info call tells which.
                    return Err(
                        match self.ctx.consumer_info(&self.stream, &self.name).await {
                            Err(e) => e,
                            Ok(_) => self.pull_failed(
                                "no responders for the pull although the consumer exists (its \
                             leader is being elected?); fetch again"
                                    .to_owned(),
                            ),
                        },
                    );
                }
                Arrival::Refused {
                    code, description, ..
                } => {
                    return Err(JetStreamError::Pull(PullError::Status {
                        consumer: self.name.clone(),
                        code,
                        description,
                    }))
                }
            }
        }
        Ok(out)
    }

    fn pull_failed(&self, error: String) -> JetStreamError {
        JetStreamError::Pull(PullError::Request {
            consumer: self.name.clone(),
            error,
        })
    }

    /// A continuous stream of this consumer's messages: pull requests are kept topped up
    /// (a new one when less than half of `batch` is outstanding) and re-issued after a
    /// reconnect, a leadership change or a missed heartbeat. See [`Messages`] for when it
    /// ends and [`PullOptions`] for the heartbeat.
    #[allow(clippy::unused_async)] // async so that future checks (consumer info) can wait
    pub async fn messages(&self, opts: PullOptions) -> Result<Messages, JetStreamError> {
        opts.validate()?;
        let client = self.ctx.client.clone();
        let inbox = new_inbox(&client);
        // Room for what the pulls can bring (an asking-again after a reconnect may overlap
        // an earlier pull): messages dropped here would only come back after ack_wait.
        let defaults = &client.shared().opts;
        let limits = crate::SubscribeOptions::new().pending_limits(
            defaults.pending_msgs.max(opts.batch.saturating_mul(4)),
            defaults.pending_bytes.max(opts.max_bytes.saturating_mul(4)),
        );
        let sub = client
            .subscribe_with(&inbox, limits)
            .await
            .map_err(|e| self.pull_failed(e.to_string()))?;
        let mut rx = client.status_watch();
        let state = *rx.borrow_and_update();
        let now = Instant::now();
        client.shared().lock("messages").pull_streams += 1;
        let mut messages = Messages {
            sub,
            ctx: self.ctx.clone(),
            stream: self.stream.clone(),
            consumer: self.name.clone(),
            pull_subject: self.pull_subject(),
            inbox,
            opts,
            pending_msgs: 0,
            pending_bytes: 0,
            last_activity: now,
            last_pull: now,
            retry_at: None,
            timer: Box::pin(tokio::time::sleep_until(now + NEVER)),
            connected: false,
            state: Some(state_change(rx)),
            check: None,
            queued: VecDeque::new(),
            done: false,
            counted: true,
        };
        if state == State::Closed {
            return Err(self.pull_failed("the client is closed".to_owned()));
        }
        messages.on_state(state, now);
        Ok(messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::{HeaderMap, StatusCode, Subject};

    fn status(code: u16, description: &str, pending: Option<(usize, usize)>) -> crate::Message {
        let mut h = HeaderMap::new();
        h.set_status(StatusCode(code), Some(description.to_owned()));
        if let Some((m, b)) = pending {
            h.insert("Nats-Pending-Messages", m.to_string());
            h.insert("Nats-Pending-Bytes", b.to_string());
        }
        crate::Message {
            subject: Subject::from_static("_INBOX.x"),
            reply: None,
            headers: Some(h),
            payload: bytes::Bytes::new(),
            size: 0,
            malformed_headers: false,
        }
    }

    #[test]
    fn statuses_are_told_apart() {
        assert_eq!(
            classify(&status(100, "Idle Heartbeat", None)),
            Arrival::Heartbeat
        );
        assert_eq!(
            classify(&status(408, "Request Timeout", Some((7, 0)))),
            Arrival::Ended { msgs: 7, bytes: 0 }
        );
        assert_eq!(
            classify(&status(409, "Batch Completed", Some((0, 10)))),
            Arrival::Ended { msgs: 0, bytes: 10 }
        );
        assert_eq!(
            classify(&status(409, "Message Size Exceeds MaxBytes", Some((3, 5)))),
            Arrival::TooBig { msgs: 3, bytes: 5 }
        );
        assert_eq!(
            classify(&status(409, "Leadership Change", None)),
            Arrival::LeadershipChange
        );
        assert_eq!(
            classify(&status(409, "Consumer Deleted", None)),
            Arrival::Deleted
        );
        assert_eq!(classify(&status(503, "", None)), Arrival::NoResponders);
        assert_eq!(
            classify(&status(409, "Exceeded MaxWaiting", None)),
            Arrival::Refused {
                code: 409,
                description: "Exceeded MaxWaiting".to_owned(),
                permanent: false,
            }
        );
        for (code, d) in [
            (409, "Exceeded MaxRequestBatch of 100"),
            (409, "Exceeded MaxRequestExpires of 1s"),
            (400, "Bad Request - invalid json"),
            (409, "Consumer is push based"),
        ] {
            assert!(
                matches!(
                    classify(&status(code, d, None)),
                    Arrival::Refused {
                        permanent: true,
                        ..
                    }
                ),
                "{d}"
            );
        }
    }

    #[test]
    fn pull_body_is_the_servers_json() {
        let b = pull_body(10, 0, Duration::from_secs(1), Duration::ZERO);
        assert_eq!(b, br#"{"batch":10,"expires":1000000000}"#);
        let b = pull_body(5, 100, Duration::from_secs(2), Duration::from_millis(500));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["max_bytes"], 100);
        assert_eq!(v["idle_heartbeat"], 500_000_000);
    }

    #[test]
    fn an_expiry_over_a_day_is_refused_by_name() {
        let long = PullOptions::new().expires(MAX_EXPIRES + Duration::from_secs(1));
        let err = long.validate().unwrap_err();
        assert!(
            matches!(
                err,
                JetStreamError::InvalidOption {
                    option: "expires",
                    ..
                }
            ),
            "{err}"
        );
        assert!(PullOptions::new().expires(MAX_EXPIRES).validate().is_ok());
    }

    #[test]
    fn fetch_heartbeat_stays_under_half_the_expiry() {
        assert_eq!(fetch_heartbeat(Duration::from_millis(1500)), Duration::ZERO);
        for secs in [2, 5, 30, 120] {
            let e = Duration::from_secs(secs);
            let hb = fetch_heartbeat(e);
            assert!(hb * 2 < e && hb <= FETCH_MAX_HEARTBEAT, "{e:?} -> {hb:?}");
        }
    }
}
