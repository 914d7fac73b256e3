//! The cloneable [`Client`] handle.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use rand::distributions::Alphanumeric;
use rand::Rng;
use tether_proto::conn::{Connection, PublishRefused};
use tether_proto::outbound::FrameKind;
use tether_proto::subject;
use tether_proto::{HeaderMap, ServerInfo};
use tokio::sync::{oneshot, watch, Notify};

use crate::buffer_watch::{self, Change};
use crate::connection::driver::{self, establish};
use crate::connection::reconnect;
use crate::connection::{CloseMode, Counters, Inner, Repick, Shared, Startup, WaitersFail};
use crate::error::{
    ConnectError, DrainError, FlushError, PublishError, RequestError, SubscribeError,
};
use crate::events::{ClosedReason, EventHub, EventKind, Events, State};
use crate::message::Message;
use crate::options::{ConnectOptions, ConnectPolicy, OverflowPolicy};
use crate::request::{self, PendingReply, PendingRequest, RequestGuard};
use crate::server_pool::{ServerAddr, ServerPool};
use crate::stats::Statistics;
use crate::subscription::{Ended, SubQueue, SubscribeOptions, Subscriber};

/// Buffer a frame (`Client::publish_now`), waiting for room up to block_deadline (or the
/// given deadline, if earlier) only when the buffer is full (`Client::publish_wait`);
/// `request` is registered when the frame is buffered. Inline in each caller rather than
/// an `async fn`: one more future layer on every publish cost ~20 % of a 16 B publish's
/// CPU (`perf stat` of `tether bench pub`), and so did returning `impl Future`.
macro_rules! buffer_frame {
    ($client:expr, $frame:expr, $deadline:expr, $request:expr) => {
        match $client.publish_now($frame, $request) {
            Ok(()) => Ok(()),
            Err(Some(e)) => Err(e),
            Err(None) => $client.publish_wait($frame, $deadline, $request).await,
        }
    };
}

/// What `close()` left behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloseReport {
    /// Messages never written.
    pub unsent_msgs: u64,
    /// Their encoded bytes.
    pub unsent_bytes: u64,
    /// Messages written but not confirmed by a PONG.
    pub unconfirmed_msgs: u64,
    /// Their encoded bytes.
    pub unconfirmed_bytes: u64,
}

/// What `drain()` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Messages the drained subscriptions received in all (queued for their streams; the
    /// streams yield them before they end).
    pub delivered: u64,
    /// Messages the drained subscriptions dropped (slow consumer) in all.
    pub dropped: u64,
    /// Publishes never written when the connection closed.
    pub unsent_msgs: u64,
    /// Publishes written but not confirmed by a PONG when the connection closed (possibly
    /// lost), plus those a link lost during the drain reported as unconfirmed.
    pub unconfirmed_msgs: u64,
    /// True when drain_timeout ended a phase early.
    pub timed_out: bool,
}

/// Dropping the last handle closes the connection (as `close()` would, without waiting).
#[derive(Debug)]
struct ClientRef {
    shared: Arc<Shared>,
}

impl Drop for ClientRef {
    fn drop(&mut self) {
        self.shared.request_close(CloseMode::Graceful);
    }
}

/// `t + d`, never overflowing (a caller may pass `Duration::MAX` for "no timeout").
fn later_tokio(t: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    tether_proto::time::saturating_add(t.into_std(), d).into()
}

/// A NATS client: a cheap, cloneable handle to one connection.
///
/// # Behavior
/// - `publish` and `try_publish` return Ok only when the frame sits in the outbound
///   buffer; the buffer is bounded in bytes and messages and survives reconnects.
/// - On a live link a full buffer makes `publish().await` wait up to block_deadline, then
///   fail with `BufferFull`; `try_publish` never waits.
/// - `flush()` returns Ok only when a PONG confirms every frame buffered before it.
/// - `request()` fails at once with `NoResponders` when nobody listens.
/// - The connection lives while any clone or [`Subscriber`] lives. Await `close()` or
///   `drain()` before the runtime shuts down: a cancelled driver loses what it buffered.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<ClientRef>,
}

pub(crate) fn nuid() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(22)
        .map(char::from)
        .collect()
}

pub(crate) fn refused_to_publish(r: PublishRefused) -> PublishError {
    match r {
        PublishRefused::BufferFull {
            bytes,
            msgs,
            connected,
        } => PublishError::BufferFull {
            bytes,
            msgs,
            connected,
        },
        PublishRefused::TooLargeForBuffer { frame, limit } => {
            PublishError::TooLargeForBuffer { frame, limit }
        }
        PublishRefused::MaxPayload { size, limit } => PublishError::MaxPayload { size, limit },
        PublishRefused::ControlLineTooLong { len, limit } => {
            PublishError::ControlLineTooLong { len, limit }
        }
        PublishRefused::HeadersNotSupported => PublishError::HeadersNotSupported,
        PublishRefused::Disconnected => PublishError::Disconnected,
    }
}

impl Client {
    pub(crate) async fn connect_with(
        opts: ConnectOptions,
        servers: Vec<ServerAddr>,
    ) -> Result<Client, ConnectError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConnectError::NoRuntime)?;
        let now = Instant::now();
        // The thread's RNG is not Send: it must not live across an await, or the connect
        // future could not be spawned (tests/send.rs).
        let pool = ServerPool::new(
            servers,
            opts.no_randomize,
            opts.max_reconnects,
            now,
            &mut rand::thread_rng(),
        );
        let conn = Connection::new(opts.core_config(), now);
        let hub = Arc::new(EventHub::new(opts.event_queue));
        let initial = match opts.connect_policy {
            ConnectPolicy::Lazy => State::Idle,
            _ => State::Connecting,
        };
        let (state_tx, _) = watch::channel(initial);
        if let Some(cb) = opts.event_callback.clone() {
            let mut events = hub.subscribe(EventKind::CurrentState {
                state: initial,
                server: None,
            });
            // On a task, never an OS thread per client. The connection only pushes into
            // this stream's bounded queue (loss counts merge, state changes collapse,
            // other events are counted by EventsLagged), so it never waits for the
            // callback. The task ends after Closed, or when the client is dropped.
            tokio::spawn(async move {
                while let Some(e) = events.next().await {
                    let kind = std::mem::discriminant(&e.kind);
                    let call = std::panic::AssertUnwindSafe(|| cb(e));
                    if std::panic::catch_unwind(call).is_err() {
                        // The user's bug, not the connection's: say so, keep delivering.
                        tracing::error!(event = ?kind, "the event callback panicked; later events are still delivered");
                    }
                    // Let the connection's own tasks run between callbacks, even on a
                    // current-thread runtime.
                    tokio::task::yield_now().await;
                }
            });
        }
        let counters = Counters::default();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::new(conn, initial, pool)),
            wake: Notify::new(),
            space: Notify::new(),
            connected: Notify::new(),
            state_tx,
            events: hub,
            opts,
            counters,
            held: std::sync::atomic::AtomicBool::new(false),
            runtime,
            tls: crate::tls::TlsContext::default(),
        });
        let client = Client {
            inner: Arc::new(ClientRef { shared }),
        };
        match client.shared().opts.connect_policy {
            ConnectPolicy::FailFast => client.first_connect().await?,
            ConnectPolicy::Retry => {
                let shared = client.shared().clone();
                shared.lock("connect").startup = Startup::Running;
                reconnect::spawn(shared, None);
            }
            ConnectPolicy::Lazy => {}
        }
        Ok(client)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Try every server once in pool order; on success start the driver.
    async fn first_connect(&self) -> Result<(), ConnectError> {
        let shared = self.shared();
        let order: Vec<ServerAddr> = shared
            .lock("connect")
            .pool
            .entries()
            .iter()
            .map(|e| e.addr.clone())
            .collect();
        let mut attempts = Vec::new();
        for addr in order {
            match establish(shared, &addr).await {
                Ok(mut est) => {
                    let mut inner = shared.lock("connect");
                    if inner.close.is_some() || inner.state == State::Closed {
                        return Err(ConnectError::Closed);
                    }
                    if let Some(reason) = driver::adopt(shared, &mut inner, &addr, &mut est) {
                        let cause = crate::error::AttemptCause::LinkLost(reason);
                        attempts.push(reconnect::Failure::new(&addr, None, cause).attempt);
                        continue;
                    }
                    inner.startup = Startup::Running;
                    reconnect::on_connected(shared, &mut inner, &addr, None);
                    drop(inner);
                    reconnect::spawn(shared.clone(), Some(est));
                    return Ok(());
                }
                Err(f) => {
                    tracing::debug!(server = %addr, error = %f.attempt.error, "connect attempt failed");
                    attempts.push(f.attempt);
                }
            }
        }
        Err(ConnectError::AllFailed { attempts })
    }

    /// Lazy policy: start the first attempt if none is running (concurrent first users
    /// share one attempt). A failed attempt returns to Idle.
    fn start_lazy(&self) {
        let shared = self.shared();
        let mut inner = shared.lock("lazy");
        if inner.state != State::Idle || inner.startup == Startup::LazyAttempt {
            return;
        }
        inner.startup = Startup::LazyAttempt;
        shared.set_state(&mut inner, State::Connecting);
        drop(inner);
        let client = self.clone();
        // On the runtime the client was created on: try_publish may be called from any
        // thread, inside a runtime or not (B13).
        shared.runtime.spawn(async move {
            use futures_util::FutureExt;
            let attempt = std::panic::AssertUnwindSafe(client.first_connect());
            let result = attempt.catch_unwind().await.unwrap_or_else(|_| {
                tracing::error!("the lazy connect attempt panicked; treated as failed");
                Err(ConnectError::AllFailed {
                    attempts: Vec::new(),
                })
            });
            let shared = client.shared();
            let mut inner = shared.lock("lazy");
            if inner.startup == Startup::LazyAttempt {
                // Failed (a success left the driver running).
                inner.startup = Startup::NotStarted;
            }
            if let Err(e) = result {
                tracing::warn!(error = %e, "lazy connect failed; the next use tries again");
                if inner.state == State::Connecting {
                    shared.set_state(&mut inner, State::Idle);
                }
                // Waiters blocked on this attempt fail now rather than at their timeouts.
                inner.fail_waiters(WaitersFail::Connect(&e));
                drop(inner);
                shared.connected.notify_waiters();
            }
        });
    }

    /// Lazy policy: every use while Idle starts an attempt. Called before an operation
    /// (so a publish refused while disconnected still starts one) and again once it is
    /// queued: an attempt that failed in between returned to Idle, and the operation
    /// must not wait out its timeout for an attempt nobody starts.
    fn ensure_started(&self) {
        let shared = self.shared();
        // The watch is read without the connection lock: a connected lazy client pays no
        // lock for this check on every publish.
        if shared.opts.connect_policy == ConnectPolicy::Lazy
            && *shared.state_tx.borrow() == State::Idle
        {
            self.start_lazy();
        }
    }

    // ===== publish =====

    /// Publish `payload` to `subject`. Waits for room in the outbound buffer on a live
    /// link (up to block_deadline) or while disconnected under the Block policy.
    pub async fn publish(
        &self,
        subject: impl AsRef<str>,
        payload: impl AsRef<[u8]>,
    ) -> Result<(), PublishError> {
        let f = Frame::publish(subject.as_ref(), None, None, payload.as_ref());
        buffer_frame!(self, f, None, &mut None)
    }

    /// Publish with a reply subject.
    pub async fn publish_with_reply(
        &self,
        subject: impl AsRef<str>,
        reply: impl AsRef<str>,
        payload: impl AsRef<[u8]>,
    ) -> Result<(), PublishError> {
        let f = Frame::publish(
            subject.as_ref(),
            Some(reply.as_ref()),
            None,
            payload.as_ref(),
        );
        buffer_frame!(self, f, None, &mut None)
    }

    /// Publish with headers (HPUB).
    pub async fn publish_with_headers(
        &self,
        subject: impl AsRef<str>,
        headers: &HeaderMap,
        payload: impl AsRef<[u8]>,
    ) -> Result<(), PublishError> {
        let f = Frame::publish(subject.as_ref(), None, Some(headers), payload.as_ref());
        buffer_frame!(self, f, None, &mut None)
    }

    /// Publish with an optional reply subject and optional headers.
    pub async fn publish_full(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<(), PublishError> {
        let f = Frame::publish(subject, reply, headers, payload);
        buffer_frame!(self, f, None, &mut None)
    }

    /// A JetStream ack (`+ACK`, `-NAK`, `+WPI`, `+TERM`) to `reply`: published like
    /// [`Client::publish_full`], except that a driver holding for a read soon to come
    /// (see `buffer_publish`) is not woken for it.
    pub(crate) async fn publish_ack(&self, reply: &str, body: &[u8]) -> Result<(), PublishError> {
        let mut f = Frame::publish(reply, None, None, body);
        f.hold = true;
        buffer_frame!(self, f, None, &mut None)
    }

    /// Publish without ever waiting: Ok when buffered, else the reason at once.
    pub fn try_publish(
        &self,
        subject: impl AsRef<str>,
        payload: impl AsRef<[u8]>,
    ) -> Result<(), PublishError> {
        self.try_publish_full(subject.as_ref(), None, None, payload.as_ref())
    }

    /// [`Client::try_publish`] with an optional reply subject and optional headers.
    pub fn try_publish_full(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<(), PublishError> {
        let f = Frame::publish(subject, reply, headers, payload);
        f.validate()?;
        self.ensure_started();
        let shared = self.shared();
        let mut inner = shared.lock("try_publish");
        let r = self
            .buffer_publish(&mut inner, f, &mut None)
            .map_err(|(e, _)| self.give_up(&mut inner, f, e));
        drop(inner);
        if r.is_ok() {
            self.ensure_started();
        }
        r
    }

    /// Encode into the buffer, or say why not (and whether waiting could help). A request
    /// is registered in the same lock section as its frame is buffered, so a link that
    /// drops in between cannot fail a request that was never buffered (B11).
    fn buffer_publish(
        &self,
        inner: &mut Inner,
        f: Frame<'_>,
        request: &mut Option<PendingRequest>,
    ) -> Result<(), (PublishError, bool)> {
        let shared = self.shared();
        match inner.state {
            State::Closed => return Err((PublishError::Closed, false)),
            State::DrainingPubs => return Err((PublishError::Draining, false)),
            _ => {}
        }
        // A JetStream ack, or a publish holding a slot of its window: either may wait for
        // a holding driver's next read.
        let hold = f.hold || request.as_ref().is_some_and(|r| r.slot.is_some());
        if matches!(f.kind, FrameKind::Request(_)) && !request::inbox_still_valid(inner, request) {
            // Never sent; the caller hears it at once.
            return Ok(());
        }
        match inner
            .conn
            .publish(f.subject, f.reply, f.headers, f.payload, f.kind)
        {
            Ok(()) => {
                buffer_watch::on_level(shared, inner, Change::Filled);
                let lone = if let FrameKind::Request(token) = f.kind {
                    if let Some(r) = request.take() {
                        inner.requests.insert(token, r);
                    }
                    inner.requests.len() == 1
                } else {
                    false
                };
                if lone {
                    // Latency path: put a lone request on the wire from this thread; the
                    // driver sleeps on unless the write left it something to do. With
                    // others in flight (a JetStream publish window, say) the driver
                    // writes them together: one write for many, not a syscall each.
                    if !crate::connection::link::try_direct_write(shared, inner) {
                        return Ok(());
                    }
                    // The write left the driver something to do: wake it below.
                } else if hold && inner.driver_waiting && inner.driver_holds {
                    // A window's publish while its earlier acks are on their way, or an
                    // ack while a pull's messages are: the driver writes it after the next
                    // read (acks free the slots being refilled; a read's messages bring
                    // their acks), the publisher or the consumer's stream when it waits,
                    // or at most `HOLD` later. One write per read, not one per frame.
                    shared
                        .held
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    return Ok(());
                }
                shared.wake_driver(inner);
                Ok(())
            }
            Err(PublishRefused::BufferFull {
                bytes,
                msgs,
                connected,
            }) => {
                let can_wait = connected || shared.opts.overflow == OverflowPolicy::Block;
                Err((
                    PublishError::BufferFull {
                        bytes,
                        msgs,
                        connected,
                    },
                    can_wait,
                ))
            }
            Err(other) => Err((refused_to_publish(other), false)),
        }
    }

    /// A publish fails with `e`: a full buffer counts it as refused (`BufferOverflow`).
    fn give_up(&self, inner: &mut Inner, f: Frame<'_>, e: PublishError) -> PublishError {
        if matches!(e, PublishError::BufferFull { .. }) {
            let len = tether_proto::encode::pub_frame_len(
                f.subject,
                f.reply,
                f.headers.map(HeaderMap::encoded_len),
                f.payload.len(),
            );
            buffer_watch::note_refused(self.shared(), inner, len as u64);
        }
        e
    }

    /// The fast path, without an await: validate and buffer at once. `Err(None)`: the
    /// buffer is full and waiting for room may help ([`Self::publish_wait`]).
    #[inline]
    fn publish_now(
        &self,
        f: Frame<'_>,
        request: &mut Option<PendingRequest>,
    ) -> Result<(), Option<PublishError>> {
        f.validate().map_err(Some)?;
        self.ensure_started();
        let shared = self.shared();
        let mut inner = shared.lock("publish");
        match self.buffer_publish(&mut inner, f, request) {
            Ok(()) => {
                drop(inner);
                self.ensure_started();
                Ok(())
            }
            Err((e, false)) => Err(Some(self.give_up(&mut inner, f, e))),
            Err(_) => Err(None),
        }
    }

    /// The slow path: the buffer was full; wait for room (registered before each retry,
    /// so a wake-up between the check and the wait is not missed).
    async fn publish_wait(
        &self,
        f: Frame<'_>,
        deadline: Option<tokio::time::Instant>,
        request: &mut Option<PendingRequest>,
    ) -> Result<(), PublishError> {
        let shared = self.shared();
        let limit = deadline;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let notified = shared.space.notified();
            let mut notified = pin!(notified);
            {
                let mut inner = shared.lock("publish");
                match self.buffer_publish(&mut inner, f, request) {
                    Ok(()) => {
                        drop(inner);
                        self.ensure_started();
                        return Ok(());
                    }
                    Err((e, can_wait)) => {
                        let expired = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
                        if !can_wait || expired {
                            return Err(self.give_up(&mut inner, f, e));
                        }
                        notified.as_mut().enable();
                        // Make sure the writer is running while we wait for it.
                        inner.driver_waiting = false;
                        shared.wake.notify_one();
                    }
                }
            }
            let d = *deadline.get_or_insert_with(|| {
                let block = later_tokio(tokio::time::Instant::now(), shared.opts.block_deadline);
                limit.map_or(block, |l| l.min(block))
            });
            let _ = tokio::time::timeout_at(d, notified).await;
        }
    }

    // ===== subscribe =====

    /// Subscribe to `subject` (wildcards `*` and `>` allowed as whole tokens).
    #[allow(clippy::unused_async)] // async so that Lazy connects and future checks can wait
    pub async fn subscribe(&self, subject: impl AsRef<str>) -> Result<Subscriber, SubscribeError> {
        self.subscribe_inner(subject.as_ref(), &SubscribeOptions::new())
    }

    /// Subscribe with options: a queue group and pending limits of its own (see
    /// [`SubscribeOptions`]).
    #[allow(clippy::unused_async)] // async so that Lazy connects and future checks can wait
    pub async fn subscribe_with(
        &self,
        subject: impl AsRef<str>,
        options: SubscribeOptions,
    ) -> Result<Subscriber, SubscribeError> {
        self.subscribe_inner(subject.as_ref(), &options)
    }

    /// Subscribe as a member of queue group `queue`.
    #[allow(clippy::unused_async)] // async so that Lazy connects and future checks can wait
    pub async fn queue_subscribe(
        &self,
        subject: impl AsRef<str>,
        queue: impl AsRef<str>,
    ) -> Result<Subscriber, SubscribeError> {
        self.subscribe_inner(
            subject.as_ref(),
            &SubscribeOptions::new().queue(queue.as_ref()),
        )
    }

    fn subscribe_inner(
        &self,
        subj: &str,
        options: &SubscribeOptions,
    ) -> Result<Subscriber, SubscribeError> {
        let queue = options.queue.as_deref();
        let (pending_msgs, pending_bytes) = options.pending.unwrap_or((
            self.shared().opts.pending_msgs,
            self.shared().opts.pending_bytes,
        ));
        if pending_msgs == 0 || pending_bytes == 0 {
            return Err(SubscribeError::InvalidPendingLimits {
                msgs: pending_msgs,
                bytes: pending_bytes,
            });
        }
        subject::validate_subscribe_subject(subj)?;
        if let Some(q) = queue {
            subject::validate_queue_group(q)?;
        }
        self.ensure_started();
        let shared = self.shared();
        let mut inner = shared.lock("subscribe");
        if matches!(
            inner.state,
            State::Closed | State::DrainingSubs | State::DrainingPubs
        ) {
            return Err(SubscribeError::Closed);
        }
        let sid =
            inner
                .conn
                .subscribe(subj, queue)
                .map_err(|r| SubscribeError::ControlLineTooLong {
                    len: r.len,
                    limit: r.limit,
                })?;
        let q = Arc::new(SubQueue::new(
            sid,
            subj.to_owned(),
            pending_msgs,
            pending_bytes,
            shared.events.clone(),
            shared.counters.slow_consumer_dropped.clone(),
        ));
        inner.subs.insert(sid, q.clone());
        // Like a request: the SUB goes on the wire from this thread when the driver idles,
        // so a flush right after it writes its PING the same way and waits only for the
        // PONG, not for the driver to be scheduled first.
        if crate::connection::link::try_direct_write(shared, &mut inner) {
            shared.wake_driver(&mut inner);
        }
        drop(inner);
        self.ensure_started();
        Ok(Subscriber {
            queue: q,
            client: self.clone(),
        })
    }

    pub(crate) fn unsubscribe_sid(&self, sid: u64, max: Option<u64>) {
        let shared = self.shared();
        let mut inner = shared.lock("unsubscribe");
        if inner.state == State::Closed {
            return;
        }
        inner.conn.unsubscribe(sid, max);
        if max.is_none() {
            inner.subs.remove(&sid);
        }
        if crate::connection::link::try_direct_write(shared, &mut inner) {
            shared.wake_driver(&mut inner);
        }
    }

    pub(crate) fn forget_sid(&self, sid: u64) {
        let shared = self.shared();
        let mut inner = shared.lock("unsubscribe");
        inner.subs.remove(&sid);
    }

    // ===== request =====

    /// Send a request and wait for one reply, up to the default request_timeout.
    pub async fn request(
        &self,
        subject: impl AsRef<str>,
        payload: impl AsRef<[u8]>,
    ) -> Result<Message, RequestError> {
        let timeout = self.shared().opts.request_timeout;
        self.request_with(subject.as_ref(), None, payload.as_ref(), timeout)
            .await
    }

    /// Send a request with optional headers and an explicit timeout.
    ///
    /// A reply with status 503 and an empty body is [`RequestError::NoResponders`] at
    /// once. A request that times out may still be delivered to a responder later.
    pub async fn request_with(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        let start = tokio::time::Instant::now();
        let deadline = later_tokio(start, timeout);
        self.request_send(
            &Arc::from(subject),
            headers,
            payload,
            (start, deadline),
            None,
        )
        .await?
        .reply(subject)
        .await
    }

    /// The first half of a request: buffer it and register its reply, waiting for buffer
    /// room at most until `deadline`. The returned [`PendingReply`] waits for the reply
    /// up to the same deadline; dropping it removes the request (and its frame if still
    /// unsent). JetStream's publish acks are built on this: many replies outstanding at
    /// once, each awaited later; `slot` (a publish window's) is held by the request's
    /// entry and freed when the entry goes.
    pub(crate) async fn request_send(
        &self,
        subject: &Arc<str>,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        (start, deadline): (tokio::time::Instant, tokio::time::Instant),
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<PendingReply, RequestError> {
        validate_publish(subject, None, headers)?;
        self.ensure_started();
        let shared = self.shared();
        let (tx, rx) = oneshot::channel();
        let mut pending = Some(PendingRequest {
            slot,
            subject: Arc::clone(subject),
            mux_sid: 0,
            tx,
        });
        // The request timeout bounds the wait for buffer room too (B12).
        let failed = |e: PublishError| {
            if matches!(e, PublishError::BufferFull { .. })
                && tokio::time::Instant::now() >= deadline
            {
                RequestError::Timeout {
                    subject: subject.to_string(),
                    elapsed: start.elapsed(),
                }
            } else {
                RequestError::Publish(e)
            }
        };
        // The common case in one lock section: register the request, buffer its frame.
        let (token, full) = {
            let mut inner = shared.lock("request");
            if inner.state == State::Closed {
                return Err(RequestError::Closed);
            }
            let mut reply = std::mem::take(&mut inner.reply_scratch);
            let (token, mux_sid) = request::start(shared, &mut inner, &mut reply)?;
            if let Some(p) = pending.as_mut() {
                p.mux_sid = mux_sid;
            }
            let f = Frame {
                kind: FrameKind::Request(token),
                ..Frame::publish(subject, Some(&reply), headers, payload)
            };
            let full = match self.buffer_publish(&mut inner, f, &mut pending) {
                Ok(()) => None,
                Err((e, false)) => return Err(failed(self.give_up(&mut inner, f, e))),
                Err((_, true)) => Some(reply.clone()),
            };
            inner.reply_scratch = reply;
            (token, full)
        };
        // From here a dropped future (a caller's timeout or select!) leaves nothing behind:
        // the entry goes, and so does the frame if it was not written yet (B5).
        let guard = RequestGuard {
            shared: Arc::clone(shared),
            token,
            armed: true,
        };
        if full.is_none() {
            // A Lazy client's attempt may have failed since the check above (it went back
            // to Idle): start another for the request just buffered.
            self.ensure_started();
        }
        if let Some(reply) = full {
            let f = Frame {
                kind: FrameKind::Request(token),
                ..Frame::publish(subject, Some(&reply), headers, payload)
            };
            self.publish_wait(f, Some(deadline), &mut pending)
                .await
                .map_err(failed)?;
        }
        Ok(PendingReply {
            guard,
            rx,
            start,
            deadline,
        })
    }

    // ===== flush, drain, close =====

    /// Wait until a PONG confirms every frame buffered or written so far, within
    /// flush_timeout. Fails with `ConnectionLost` if the link drops first (unless
    /// resend_unconfirmed is on: then it re-arms on the next link within the same bound).
    pub async fn flush(&self) -> Result<(), FlushError> {
        let timeout = self.shared().opts.flush_timeout;
        self.flush_within(timeout).await
    }

    async fn flush_within(&self, timeout: Duration) -> Result<(), FlushError> {
        self.ensure_started();
        let shared = self.shared();
        let start = tokio::time::Instant::now();
        let (token, rx, idle) = {
            let mut inner = shared.lock("flush");
            if inner.state == State::Closed {
                return Err(FlushError::Closed);
            }
            let token = inner.token();
            let (tx, rx) = oneshot::channel();
            inner.flushes.insert(token, tx);
            let idle = inner.conn.is_up() && inner.conn.is_write_idle();
            inner.conn.flush(token);
            // Like a request: the PING (and whatever is pending before it, such as a new
            // subscription's SUB) goes on the wire from this thread when the driver idles.
            if crate::connection::link::try_direct_write(shared, &mut inner) {
                shared.wake_driver(&mut inner);
            }
            (token, rx, idle)
        };
        self.ensure_started();
        match tokio::time::timeout_at(later_tokio(start, timeout), rx).await {
            Ok(Ok(r)) => {
                if r.is_ok() && idle {
                    shared.counters.rtt_nanos.store(
                        start.elapsed().as_nanos() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                r
            }
            Ok(Err(_)) => Err(FlushError::Closed),
            Err(_) => {
                let mut inner = shared.lock("flush");
                inner.flushes.remove(&token);
                inner.conn.cancel_flush(token);
                Err(FlushError::Timeout(timeout))
            }
        }
    }

    /// Send a PING at once without waiting for its PONG: the link is then known dead
    /// within pong_timeout if it is (JetStream's missed-heartbeat probe).
    pub(crate) fn probe_link(&self) {
        let shared = self.shared();
        let mut inner = shared.lock("probe");
        if inner.state == State::Closed || !inner.conn.is_up() {
            return;
        }
        inner.conn.probe();
        if crate::connection::link::try_direct_write(shared, &mut inner) {
            shared.wake_driver(&mut inner);
        }
    }

    /// Round-trip time measured by a PING on an idle link.
    pub async fn rtt(&self) -> Result<Duration, FlushError> {
        let start = Instant::now();
        self.flush().await?;
        Ok(start.elapsed())
    }

    /// Close: write the buffer, PING, read until its PONG (bounded by flush_timeout),
    /// shut down the write side, close. Returns what was left unsent and unconfirmed.
    pub async fn close(&self) -> CloseReport {
        self.close_as(CloseMode::Graceful).await
    }

    async fn close_as(&self, mode: CloseMode) -> CloseReport {
        let shared = self.shared();
        let mut watch = shared.state_tx.subscribe();
        shared.request_close(mode);
        let _ = watch.wait_for(|s| *s == State::Closed).await;
        self.last_report()
    }

    fn last_report(&self) -> CloseReport {
        self.shared().lock("close").closed_report
    }

    /// Drain: UNSUB every subscription and read until the PONG so nothing in flight is
    /// lost (DrainingSubs; publishes still accepted); each subscription's stream yields
    /// what it holds and ends; then flush publishes (DrainingPubs; publishes refused with
    /// `Draining`), unsubscribe the request mux, and close. Bounded by drain_timeout.
    pub async fn drain(&self) -> Result<DrainReport, DrainError> {
        let shared = self.shared();
        let deadline = later_tokio(tokio::time::Instant::now(), shared.opts.drain_timeout);
        let mut report = DrainReport::default();
        // Lazy, never connected (or its attempt failed): no server holds a subscription.
        // With nothing buffered there is nothing to drain (B9); otherwise connect first so
        // the buffered publishes go out.
        let idle = {
            let inner = shared.lock("drain");
            match inner.state {
                State::Closed => return Err(DrainError::Closed),
                State::Idle => Some(inner.conn.buffered().msgs == 0),
                _ => None,
            }
        };
        match idle {
            Some(true) => {
                let closed = self.close().await;
                report.unsent_msgs = closed.unsent_msgs;
                return Ok(report);
            }
            Some(false) => {
                // A flush starts the lazy attempt and waits for it: unreachable servers
                // end the drain at once, with the publishes reported unsent.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match self.flush_within(left).await {
                    Ok(()) => {}
                    Err(FlushError::Timeout(_)) => report.timed_out = true,
                    Err(_) => {
                        let closed = self.close().await;
                        report.unsent_msgs = closed.unsent_msgs;
                        return Ok(report);
                    }
                }
            }
            None => {}
        }
        let drained: Vec<Arc<SubQueue>> = {
            let mut inner = shared.lock("drain");
            if inner.state == State::Closed {
                return Err(DrainError::Closed);
            }
            shared.set_state(&mut inner, State::DrainingSubs);
            let subs: Vec<Arc<SubQueue>> = inner.subs.values().cloned().collect();
            for q in &subs {
                inner.conn.unsubscribe_draining(q.sid);
            }
            shared.wake_driver(&mut inner);
            subs
        };
        // A flush that cannot succeed (the lazy attempt failed, the client closed) ends the
        // drain at once instead of waiting out drain_timeout.
        let mut unreachable = false;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match self.flush_within(left).await {
            Ok(()) => {}
            Err(FlushError::Connect(_) | FlushError::Closed) => unreachable = true,
            // The link dropped: not a timeout; the next phase waits for the reconnect.
            Err(FlushError::ConnectionLost {
                unconfirmed_msgs, ..
            }) => report.unconfirmed_msgs += unconfirmed_msgs,
            Err(FlushError::Timeout(_)) => report.timed_out = true,
        }
        {
            let mut inner = shared.lock("drain");
            for q in &drained {
                inner.conn.forget(q.sid);
                inner.subs.remove(&q.sid);
                q.end(Ended::Done);
            }
            if inner.state != State::Closed {
                shared.set_state(&mut inner, State::DrainingPubs);
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !unreachable {
            match self.flush_within(left).await {
                Ok(()) if !left.is_zero() => {}
                Err(FlushError::Connect(_) | FlushError::Closed) => {}
                Err(FlushError::ConnectionLost {
                    unconfirmed_msgs, ..
                }) => report.unconfirmed_msgs += unconfirmed_msgs,
                _ => report.timed_out = true,
            }
        }
        {
            let mut inner = shared.lock("drain");
            if let Some(mux) = inner.mux.take() {
                inner.conn.unsubscribe(mux.sid, None);
            }
        }
        for q in &drained {
            report.delivered += q.received.load(std::sync::atomic::Ordering::Relaxed);
            report.dropped += q.dropped.load(std::sync::atomic::Ordering::Relaxed);
        }
        // Out of time: close at once, without close()'s own flush (drain_timeout bounds
        // the whole drain).
        let closed = if report.timed_out {
            shared.lock("drain").close_as = Some(ClosedReason::DrainTimeout);
            self.close_as(CloseMode::Now).await
        } else {
            self.close().await
        };
        report.unsent_msgs = closed.unsent_msgs;
        report.unconfirmed_msgs += closed.unconfirmed_msgs;
        Ok(report)
    }

    // ===== state =====

    /// The current state.
    pub fn status(&self) -> State {
        *self.shared().state_tx.borrow()
    }

    /// A watch receiver of the state, for services that await changes.
    pub fn status_watch(&self) -> watch::Receiver<State> {
        self.shared().state_tx.subscribe()
    }

    /// A stream of events: first [`EventKind::CurrentState`] (the state now, so a late
    /// subscriber still learns it), then every event from now on. Each call gives an
    /// independent stream; events are queued only for streams that exist (and the
    /// callback). The stream ends after `Closed`; taken from a closed client it yields
    /// `CurrentState { state: Closed, .. }` and ends.
    pub fn events(&self) -> Events {
        let shared = self.shared();
        // The state is read and the stream registered under the connection lock, which
        // state changes take: an event emitted after this stream's first item is queued
        // behind it, and a change made before is in that first item.
        let inner = shared.lock("events");
        let first = EventKind::CurrentState {
            state: inner.state,
            server: inner
                .conn
                .is_up()
                .then(|| inner.server_name.clone())
                .filter(|s| !s.is_empty()),
        };
        let events = shared.events.subscribe(first);
        drop(inner);
        events
    }

    /// A snapshot of the statistics.
    pub fn statistics(&self) -> Statistics {
        let shared = self.shared();
        let inner = shared.lock("stats");
        shared.stats_snapshot(inner.conn.stats(), &inner)
    }

    /// The server's last INFO.
    pub fn server_info(&self) -> Option<ServerInfo> {
        self.shared().lock("info").conn.server_info().cloned()
    }

    /// The server of the current or last link.
    pub fn connected_server(&self) -> Option<String> {
        let inner = self.shared().lock("info");
        (!inner.server_name.is_empty()).then(|| inner.server_name.clone())
    }

    /// The servers in the pool, in order.
    pub fn servers(&self) -> Vec<String> {
        self.shared()
            .lock("pool")
            .pool
            .entries()
            .iter()
            .map(|e| e.addr.to_string())
            .collect()
    }

    /// The max_payload in force.
    pub fn max_payload(&self) -> usize {
        self.shared().lock("info").conn.max_payload()
    }

    /// Move to another server. On a live link this is the planned make-before-break switch
    /// of lame duck mode (a handshake with another server first, then the old link is
    /// retired; `EventKind::Migrating` and `EventKind::Migrated` report it). A target that
    /// fails is followed by the next, with the pool's backoff, until one answers; one that
    /// turns out to be the connected server under another address is skipped. With no
    /// other server in the pool it reconnects. While reconnecting, it makes every server
    /// due now.
    pub fn force_reconnect(&self) {
        let shared = self.shared();
        let mut inner = shared.lock("force_reconnect");
        if inner.conn.is_up() {
            inner.switch_request = Some(crate::MigrateReason::Requested);
        } else {
            inner.repick = Repick::AllDueNow;
        }
        drop(inner);
        shared.wake.notify_one();
    }

    /// Replace the configured servers. Discovered servers are learnt again from INFO. When
    /// the connected server is no longer in the pool, the client moves with the planned
    /// switch of [`Self::force_reconnect`] (reason `MigrateReason::ServerPool`), retrying
    /// until a new server answers.
    pub fn set_server_pool(&self, servers: impl crate::IntoServers) -> Result<(), ConnectError> {
        let servers = servers.into_servers()?;
        let shared = self.shared();
        let mut inner = shared.lock("pool");
        let mut rng = rand::thread_rng();
        let shuffle = !shared.opts.no_randomize;
        inner
            .pool
            .replace(servers, Instant::now(), &mut rng, shuffle);
        if !inner.conn.is_up() {
            // Reconnecting: the attempt being waited for may target a server that left.
            inner.repick = inner.repick.max(Repick::PoolChanged);
            drop(inner);
            shared.wake.notify_one();
            return Ok(());
        }
        if inner.server_index().is_some()
            && inner.switch_request == Some(crate::MigrateReason::ServerPool)
        {
            // The connected server is in the pool again: nothing to move for.
            inner.switch_request = None;
        }
        if inner.server_index().is_none() && inner.conn.is_up() {
            // The current server left the pool: move with a planned switch.
            inner.switch_request = Some(crate::MigrateReason::ServerPool);
            drop(inner);
            shared.wake.notify_one();
        }
        Ok(())
    }
}

/// A frame to publish, as the caller gave it.
#[derive(Debug, Clone, Copy)]
struct Frame<'a> {
    subject: &'a str,
    reply: Option<&'a str>,
    headers: Option<&'a HeaderMap>,
    payload: &'a [u8],
    kind: FrameKind,
    /// A JetStream ack: it need not wake a holding driver (see `buffer_publish`; a
    /// window's publish need not either, known by its request's slot).
    hold: bool,
}

impl<'a> Frame<'a> {
    fn publish(
        subject: &'a str,
        reply: Option<&'a str>,
        headers: Option<&'a HeaderMap>,
        payload: &'a [u8],
    ) -> Self {
        Self {
            subject,
            reply,
            headers,
            payload,
            kind: FrameKind::Pub,
            hold: false,
        }
    }

    fn validate(&self) -> Result<(), PublishError> {
        validate_publish(self.subject, self.reply, self.headers)
    }
}

fn validate_publish(
    subject: &str,
    reply: Option<&str>,
    headers: Option<&HeaderMap>,
) -> Result<(), PublishError> {
    subject::validate_publish_subject(subject)?;
    if let Some(r) = reply {
        subject::validate_reply_subject(r)?;
    }
    if let Some(h) = headers {
        h.validate()?;
    }
    Ok(())
}
