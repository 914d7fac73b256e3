//! Publish with acks: the PubAck future, dedupe and expectation headers, the ack window,
//! and the retries that make a no-responders answer unambiguous.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::api::ApiError;
use super::context::Context;
use super::error::JetStreamError;
use crate::error::RequestError;
use crate::request::PendingReply;
use crate::HeaderMap;

/// The message id header: the stream stores a message once per id within its
/// duplicate window.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The stream the publish must land in.
pub const EXPECTED_STREAM: &str = "Nats-Expected-Stream";
/// The stream's last sequence must be this.
pub const EXPECTED_LAST_SEQUENCE: &str = "Nats-Expected-Last-Sequence";
/// The stream's last message id must be this.
pub const EXPECTED_LAST_MSG_ID: &str = "Nats-Expected-Last-Msg-Id";
/// The last sequence on this subject must be this.
pub const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";

/// Wait between two sends of a publish answered with no responders while a stream
/// captures its subject (a leader election is under way).
const NO_RESPONDERS_BACKOFF: Duration = Duration::from_millis(250);

/// The server's acknowledgement of a stored message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct PubAck {
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence in the stream.
    pub seq: u64,
    /// True when its `Nats-Msg-Id` was seen within the duplicate window: not stored
    /// again, `seq` is the first copy's.
    #[serde(default)]
    pub duplicate: bool,
    /// The JetStream domain, if any.
    #[serde(default)]
    pub domain: Option<String>,
}

/// A publish's answer as the server sends it: a PubAck, or the API's error envelope.
/// Read in one pass (the API's generic decode reads twice: the envelope, then the answer),
/// since every publish pays for it.
#[derive(Deserialize)]
struct PubAckReply {
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    domain: Option<String>,
}

/// The PubAck in a publish's answer, or the server's refusal.
fn decode_pub_ack(subject: &str, payload: &[u8]) -> Result<PubAck, PublishError> {
    let malformed = |error: String| {
        PublishError::JetStream(JetStreamError::Decode {
            subject: subject.to_owned(),
            error,
        })
    };
    let reply: PubAckReply =
        serde_json::from_slice(payload).map_err(|e| malformed(e.to_string()))?;
    if let Some(error) = reply.error {
        return Err(match JetStreamError::from_api(subject, error) {
            JetStreamError::Api { error, .. } => PublishError::Refused {
                subject: subject.to_owned(),
                error,
            },
            e => PublishError::JetStream(e),
        });
    }
    match (reply.stream, reply.seq) {
        (Some(stream), Some(seq)) => Ok(PubAck {
            stream,
            seq,
            duplicate: reply.duplicate,
            domain: reply.domain,
        }),
        _ => Err(malformed(String::from(
            "the answer has neither an error nor a stream and sequence",
        ))),
    }
}

/// Options of one publish: dedupe id, expectations, extra headers.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    headers: Option<HeaderMap>,
    msg_id: Option<String>,
}

impl PublishOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }

    fn header(mut self, name: &str, value: String) -> Self {
        self.headers
            .get_or_insert_with(HeaderMap::new)
            .insert(name, value);
        self
    }

    /// `Nats-Msg-Id`: the stream keeps one copy per id within its duplicate window, and
    /// tether may resend the publish after a lost link or a missing ack.
    pub fn msg_id(mut self, id: impl Into<String>) -> Self {
        let id = id.into();
        self.msg_id = Some(id.clone());
        self.header(MSG_ID, id)
    }

    /// Fail unless the subject is captured by this stream.
    pub fn expected_stream(self, stream: impl Into<String>) -> Self {
        self.header(EXPECTED_STREAM, stream.into())
    }

    /// Fail unless the stream's last sequence is `seq`.
    pub fn expected_last_sequence(self, seq: u64) -> Self {
        self.header(EXPECTED_LAST_SEQUENCE, seq.to_string())
    }

    /// Fail unless the stream's last message id is `id`.
    pub fn expected_last_msg_id(self, id: impl Into<String>) -> Self {
        self.header(EXPECTED_LAST_MSG_ID, id.into())
    }

    /// Fail unless the last sequence on this subject is `seq`.
    pub fn expected_last_subject_sequence(self, seq: u64) -> Self {
        self.header(EXPECTED_LAST_SUBJECT_SEQUENCE, seq.to_string())
    }

    /// Extra headers (the options above are added to them).
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        let mine = self.headers.take();
        let mut all = headers;
        if let Some(mine) = mine {
            for (k, v) in mine.iter() {
                all.insert(k, v);
            }
        }
        self.headers = Some(all);
        self
    }
}

/// Why a publish was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// No stream captures the subject: nothing was stored.
    #[error(
        "no stream captures subject {subject:?}: nothing was stored (create a stream whose \
         subjects include it, or check the subject)"
    )]
    NoStreamForSubject {
        /// The subject published to.
        subject: String,
    },
    /// The stream refused the message (an expectation failed, it is too large, the
    /// stream is full under discard new...).
    #[error("the stream refused the publish to {subject:?}: {error}")]
    Refused {
        /// The subject published to.
        subject: String,
        /// The server's error.
        error: ApiError,
    },
    /// No ack within the publish deadline. With `stored_maybe`, a send may have been
    /// stored (its ack was lost); without a `Nats-Msg-Id` tether does not resend then.
    #[error(
        "no ack for the publish to {subject:?} within {elapsed:?} after {attempts} send(s) \
         (last: {last}); stored: {}",
        if *stored_maybe { "maybe (give messages a Nats-Msg-Id so a resend is deduplicated)" } else { "no" }
    )]
    TimedOut {
        /// The subject published to.
        subject: String,
        /// Time since the publish began.
        elapsed: Duration,
        /// Sends made.
        attempts: u32,
        /// The last failure seen.
        last: String,
        /// True when a send may have been stored.
        stored_maybe: bool,
    },
    /// JetStream itself failed (not enabled, say) while tether checked which stream
    /// captures the subject.
    #[error(transparent)]
    JetStream(JetStreamError),
    /// The core publish or request failed (closed client, buffer full, invalid subject,
    /// lost link without a Nats-Msg-Id...).
    #[error(transparent)]
    Request(RequestError),
}

/// An acknowledgement on its way. Await it (`.await`) for the [`PubAck`]; dropping it
/// gives up on the ack (the message may still be stored).
///
/// Its slot in the context's window is freed when the server's answer arrives (or the
/// first send fails or times out), whether or not this future has been awaited yet: a
/// publisher may hold any number of these and await them later. Resends after a failure
/// take no slot.
#[must_use = "a publish is acknowledged only when its PubAckFuture is awaited"]
pub struct PubAckFuture {
    ctx: Context,
    /// Shared with the request's entry: one copy of the subject per publish.
    subject: Arc<str>,
    payload: Bytes,
    /// Boxed: a publish without headers (the common case) keeps the future small, and
    /// the future is moved several times on its way to being awaited.
    headers: Option<Box<HeaderMap>>,
    has_msg_id: bool,
    /// The first send's request; its start is the publish's.
    pending: PendingReply,
}

impl std::fmt::Debug for PubAckFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubAckFuture")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl IntoFuture for PubAckFuture {
    type Output = Result<PubAck, PublishError>;
    type IntoFuture = PubAckWait;

    fn into_future(self) -> Self::IntoFuture {
        PubAckWait {
            state: WaitState::First {
                ack: Some(self),
                timer: None,
            },
        }
    }
}

/// The future a [`PubAckFuture`] becomes when awaited. Its first poll looks at the reply
/// slot: an ack already there costs no timer and no allocation; a timer is armed only
/// while the ack is still on its way, and the retry machinery (boxed) only on a failure.
#[must_use = "futures do nothing unless polled"]
pub struct PubAckWait {
    state: WaitState,
}

#[allow(clippy::large_enum_variant)] // the common state inline: no allocation per ack
enum WaitState {
    /// The first send's ack is awaited.
    First {
        ack: Option<PubAckFuture>,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    /// A failure: retries, stream lookups, backoff.
    Retry(Pin<Box<dyn Future<Output = Result<PubAck, PublishError>> + Send>>),
    Done,
}

impl std::fmt::Debug for PubAckWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubAckWait").finish_non_exhaustive()
    }
}

impl Future for PubAckWait {
    type Output = Result<PubAck, PublishError>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            match &mut this.state {
                WaitState::First { ack, timer } => {
                    let Some(fut) = ack.as_mut() else {
                        this.state = WaitState::Done;
                        continue;
                    };
                    let first = match Pin::new(&mut fut.pending.rx).poll(cx) {
                        Poll::Ready(Ok(result)) => result,
                        Poll::Ready(Err(_)) => Err(RequestError::Closed),
                        Poll::Pending => {
                            // About to wait: what this publisher buffered goes out now.
                            fut.ctx.client.shared().write_held();
                            let deadline = fut.pending.deadline;
                            let t = timer.get_or_insert_with(|| {
                                Box::pin(tokio::time::sleep_until(deadline))
                            });
                            if t.as_mut().poll(cx).is_pending() {
                                return Poll::Pending;
                            }
                            Err(RequestError::Timeout {
                                subject: fut.subject.to_string(),
                                elapsed: fut.pending.start.elapsed(),
                            })
                        }
                    };
                    let Some(fut) = ack.take() else {
                        continue;
                    };
                    match first {
                        // The common case, settled here.
                        Ok(msg) => {
                            this.state = WaitState::Done;
                            let mut fut = fut;
                            fut.pending.guard.armed = false;
                            return Poll::Ready(decode_pub_ack(&fut.subject, &msg.payload));
                        }
                        Err(e) => this.state = WaitState::Retry(Box::pin(fut.wait(Err(e)))),
                    }
                }
                WaitState::Retry(f) => {
                    let out = std::task::ready!(f.as_mut().poll(cx));
                    this.state = WaitState::Done;
                    return Poll::Ready(out);
                }
                WaitState::Done => {
                    return Poll::Ready(Err(PublishError::Request(RequestError::Closed)));
                }
            }
        }
    }
}

impl PubAckFuture {
    /// After the first send's outcome `first` (a failure: the ack path above settles
    /// successes), retry as the module docs say.
    async fn wait(
        self,
        first: Result<crate::Message, RequestError>,
    ) -> Result<PubAck, PublishError> {
        let mut first = Some(first);
        let PubAckFuture {
            ctx,
            subject,
            payload,
            headers,
            has_msg_id,
            pending,
        } = self;
        let started = pending.start;
        let deadline = started + ctx.settings.publish_deadline;
        let mut pending = Some(pending);
        let mut attempts = 1u32;
        let mut lookup = StreamLookup::new();
        loop {
            let outcome = match first.take() {
                Some(o) => {
                    // The first send is over: its guard ends the request (and removes
                    // a frame never sent, after a timeout).
                    drop(pending.take());
                    o
                }
                None => match pending.take() {
                    Some(p) => lookup.race(&subject, p.reply(&subject)).await?,
                    None => Err(RequestError::Closed),
                },
            };
            let failure = match outcome {
                Ok(msg) => return decode_pub_ack(&subject, &msg.payload),
                Err(e) => e,
            };
            let stored_maybe = match &failure {
                RequestError::NoResponders { .. } => {
                    // Nobody received it: safe to send again if a stream captures it.
                    // Which stream does is asked beside the resends, not before them:
                    // when the killed stream leader also led the meta group, the names
                    // API does not answer until a new meta leader is elected.
                    lookup.start_if_due(&ctx, &subject);
                    tracing::debug!(
                        subject = %subject,
                        attempts,
                        "no responders for a captured subject; resending (leader election?)"
                    );
                    let next = Instant::now() + NO_RESPONDERS_BACKOFF;
                    if next >= deadline {
                        let last = lookup.describe(&failure);
                        return Err(timed_out(&subject, started, attempts, last, false));
                    }
                    lookup
                        .race(&subject, tokio::time::sleep_until(next))
                        .await?;
                    false
                }
                RequestError::Timeout { .. } | RequestError::ConnectionLost { .. } => {
                    if !has_msg_id {
                        return Err(PublishError::Request(failure));
                    }
                    true
                }
                _ => return Err(PublishError::Request(failure)),
            };
            if Instant::now() >= deadline {
                let last = lookup.describe(&failure);
                return Err(timed_out(&subject, started, attempts, last, stored_maybe));
            }
            attempts += 1;
            tracing::debug!(subject = %subject, attempts, error = %failure, "resending publish");
            pending = Some(
                send(
                    &ctx,
                    &subject,
                    headers.as_deref(),
                    &payload,
                    (Instant::now(), deadline),
                    None,
                )
                .await
                .map_err(|e| match e {
                    RequestError::Timeout { .. } => {
                        timed_out(&subject, started, attempts, e.to_string(), stored_maybe)
                    }
                    e => PublishError::Request(e),
                })?,
            );
        }
    }
}

/// A lookup of the stream names API for the stream that captures a subject.
type NamesFuture = Pin<Box<dyn Future<Output = Result<Vec<String>, JetStreamError>> + Send>>;

/// Which stream captures a publish's subject, asked after a no-responders answer and
/// awaited beside the resends.
///
/// No stream → the publish fails at once with [`PublishError::NoStreamForSubject`]. A
/// stream → the resends go on until the deadline and it is not asked again. No answer
/// yet (the names API times out while there is no meta leader, or answers "JetStream
/// temporarily unavailable", status 503) → the resends go on, and it is asked again
/// [`LOOKUP_RETRY`] later; any other failure of the lookup fails the publish.
struct StreamLookup {
    asking: Option<NamesFuture>,
    known: bool,
    next_at: Instant,
    last_error: Option<JetStreamError>,
}

/// Wait before asking the stream names API again after it could not answer.
const LOOKUP_RETRY: Duration = Duration::from_secs(1);

impl StreamLookup {
    fn new() -> Self {
        Self {
            asking: None,
            known: false,
            next_at: Instant::now(),
            last_error: None,
        }
    }

    /// Starts a lookup unless the stream is known, one is under way or the last one
    /// failed less than [`LOOKUP_RETRY`] ago.
    fn start_if_due(&mut self, ctx: &Context, subject: &str) {
        if self.known || self.asking.is_some() || Instant::now() < self.next_at {
            return;
        }
        let ctx = ctx.clone();
        let subject = subject.to_owned();
        self.asking = Some(Box::pin(
            async move { ctx.stream_names(Some(&subject)).await },
        ));
    }

    /// Awaits `fut`, settling the lookup if it answers first; fails when it finds no
    /// stream for `subject` or fails for good.
    async fn race<T>(
        &mut self,
        subject: &str,
        fut: impl Future<Output = T>,
    ) -> Result<T, PublishError> {
        tokio::pin!(fut);
        loop {
            let Some(asking) = self.asking.as_mut() else {
                return Ok(fut.await);
            };
            tokio::select! {
                biased;
                out = &mut fut => return Ok(out),
                names = asking => {
                    self.asking = None;
                    self.settle(subject, names)?;
                }
            }
        }
    }

    fn settle(
        &mut self,
        subject: &str,
        names: Result<Vec<String>, JetStreamError>,
    ) -> Result<(), PublishError> {
        match names {
            Ok(names) if names.is_empty() => Err(PublishError::NoStreamForSubject {
                subject: subject.to_owned(),
            }),
            Ok(_) => {
                self.known = true;
                self.last_error = None;
                Ok(())
            }
            Err(e) if lookup_may_answer_later(&e) => {
                tracing::debug!(
                    subject = %subject,
                    error = %e,
                    "the stream names API could not say which stream captures the subject; \
                     resending meanwhile and asking again"
                );
                self.next_at = Instant::now() + LOOKUP_RETRY;
                self.last_error = Some(e);
                Ok(())
            }
            Err(e) => Err(PublishError::JetStream(e)),
        }
    }

    /// The last failure of a publish, with the lookup's if no stream was found yet.
    fn describe(&self, failure: &RequestError) -> String {
        match &self.last_error {
            Some(e) if !self.known => {
                format!("{failure}; asking which stream captures the subject: {e}")
            }
            _ => failure.to_string(),
        }
    }
}

/// Whether a failed stream names request may succeed if asked again: no answer in time,
/// a lost link, or the server's "temporarily unavailable" (no meta leader, status 503).
fn lookup_may_answer_later(e: &JetStreamError) -> bool {
    match e {
        JetStreamError::Request(
            RequestError::Timeout { .. } | RequestError::ConnectionLost { .. },
        ) => true,
        JetStreamError::Api { error, .. } => error.code == 503,
        _ => false,
    }
}

fn timed_out(
    subject: &str,
    started: Instant,
    attempts: u32,
    last: String,
    stored_maybe: bool,
) -> PublishError {
    PublishError::TimedOut {
        subject: subject.to_owned(),
        elapsed: started.elapsed(),
        attempts,
        last,
        stored_maybe,
    }
}

/// One send at `now`: the ack is awaited until the earlier of the API timeout and
/// `deadline`.
async fn send(
    ctx: &Context,
    subject: &Arc<str>,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    (now, deadline): (Instant, Instant),
    slot: Option<OwnedSemaphorePermit>,
) -> Result<PendingReply, RequestError> {
    let until = (now + ctx.settings.timeout).min(deadline);
    ctx.client
        .request_send(subject, headers, payload, (now, until), slot)
        .await
}

impl Context {
    /// Publish `payload` to `subject` and return once it is buffered; await the returned
    /// [`PubAckFuture`] for the server's ack. Waits first while `max_pending_acks` acks
    /// are outstanding. With acks outstanding, the frame is written with the next round
    /// of them, when this publisher waits, or within about a millisecond (see the
    /// module's "Window writes").
    pub async fn publish(
        &self,
        subject: impl AsRef<str>,
        payload: impl Into<Bytes>,
    ) -> Result<PubAckFuture, PublishError> {
        self.publish_with(subject, payload, PublishOptions::default())
            .await
    }

    /// [`publish`](Self::publish) with a message id, expectations or headers.
    pub async fn publish_with(
        &self,
        subject: impl AsRef<str>,
        payload: impl Into<Bytes>,
        opts: PublishOptions,
    ) -> Result<PubAckFuture, PublishError> {
        let subject: Arc<str> = Arc::from(subject.as_ref());
        let payload = payload.into();
        let permit = if let Ok(permit) = self.settings.acks.clone().try_acquire_owned() {
            permit
        } else {
            // The window is full: write what this publisher buffered before waiting for
            // the acks that free a slot.
            self.client.shared().write_held();
            let Ok(permit) = self.settings.acks.clone().acquire_owned().await else {
                return Err(PublishError::Request(RequestError::Closed));
            };
            permit
        };
        let started = Instant::now();
        let deadline = started + self.settings.publish_deadline;
        let pending = send(
            self,
            &subject,
            opts.headers.as_ref(),
            &payload,
            (started, deadline),
            Some(permit),
        )
        .await
        .map_err(PublishError::Request)?;
        Ok(PubAckFuture {
            ctx: self.clone(),
            subject,
            payload,
            headers: opts.headers.map(Box::new),
            has_msg_id: opts.msg_id.is_some(),
            pending,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_answer_is_read_in_one_pass_as_an_ack_or_a_refusal() {
        let ack = decode_pub_ack("s", br#"{"stream":"S","seq":7,"duplicate":true}"#).unwrap();
        assert_eq!(
            (ack.stream.as_str(), ack.seq, ack.duplicate),
            ("S", 7, true)
        );
        assert_eq!(ack.domain, None);
        let ack = decode_pub_ack("s", br#"{"stream":"S","domain":"hub","seq":1}"#).unwrap();
        assert_eq!(
            (ack.seq, ack.duplicate, ack.domain.as_deref()),
            (1, false, Some("hub"))
        );

        let refused = br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 3"},"stream":"S","seq":0}"#;
        match decode_pub_ack("s", refused) {
            Err(PublishError::Refused { subject, error }) => {
                assert_eq!(subject, "s");
                assert_eq!(
                    error.error_code(),
                    crate::jetstream::ErrorCode::WRONG_LAST_SEQUENCE
                );
                assert_eq!(error.description, "wrong last sequence: 3");
            }
            other => panic!("expected Refused, got {other:?}"),
        }
        let disabled = br#"{"error":{"code":503,"err_code":10039,"description":"jetstream not enabled for account"}}"#;
        assert!(matches!(
            decode_pub_ack("s", disabled),
            Err(PublishError::JetStream(JetStreamError::NotEnabled { .. }))
        ));
        for bad in [&b"not json"[..], br#"{"stream":"S"}"#, br"{}"] {
            match decode_pub_ack("s", bad) {
                Err(PublishError::JetStream(JetStreamError::Decode { subject, .. })) => {
                    assert_eq!(subject, "s");
                }
                other => panic!("expected Decode for {bad:?}, got {other:?}"),
            }
        }
    }
}
