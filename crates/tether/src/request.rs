//! The request mux (DESIGN semantics 11): one wildcard inbox subscription,
//! `<inbox_prefix>.<nuid>.*`, serves every request; the reply subject's last token picks
//! the waiting request.
//!
//! A request is registered in the lock section that buffers its frame. It ends with its
//! reply, its timeout (the caller's [`RequestGuard`] removes it, and its frame if still
//! unsent), or one of the failures below, each decided where the driver learns of it:
//! - [`on_disconnected`]: the link dropped after its frame was written (a responder may
//!   have acted on it; `request_retry_after_reconnect` keeps it pending instead);
//! - [`fail_written`]: a retired link that held its frame died unconfirmed;
//! - [`on_publish_denied`]: the server refused to publish its subject or reply;
//! - [`on_inbox_ended`]: the server refused the inbox subscription itself;
//! - [`fail_all`]: the client closed, or the Lazy policy's attempt failed.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use tether_proto::conn::SubEndReason;
use tether_proto::op::Msg;
use tokio::sync::oneshot;

use crate::client::nuid;
use crate::connection::{Inner, Shared};
use crate::error::PublishError;
use crate::error::RequestError;
use crate::message::Message;

/// A request waiting for its reply.
#[derive(Debug)]
pub(crate) struct PendingRequest {
    pub(crate) subject: Arc<str>,
    /// The sid of the inbox subscription its reply subject belongs to.
    pub(crate) mux_sid: u64,
    pub(crate) tx: oneshot::Sender<Result<Message, RequestError>>,
    /// A slot of a JetStream publish window: freed when this entry goes (the reply came,
    /// the request failed or its caller gave up), not when the caller looks.
    pub(crate) slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The requests waiting for their replies, by token; counts those that hold a slot of a
/// JetStream publish window (the driver holds window frames for the next read while any
/// is outstanding, see `link::HOLD`). Kept under the connection lock, so the count costs
/// no atomic operation per publish.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    map: FxHashMap<u64, PendingRequest>,
    windowed: usize,
}

impl Requests {
    pub(crate) fn insert(&mut self, token: u64, r: PendingRequest) {
        self.windowed += usize::from(r.slot.is_some());
        if let Some(old) = self.map.insert(token, r) {
            self.windowed -= usize::from(old.slot.is_some());
        }
    }

    pub(crate) fn remove(&mut self, token: u64) -> Option<PendingRequest> {
        let r = self.map.remove(&token)?;
        self.windowed -= usize::from(r.slot.is_some());
        Some(r)
    }

    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (u64, PendingRequest)> + '_ {
        self.windowed = 0;
        self.map.drain()
    }

    /// Requests holding a publish window's slot.
    pub(crate) fn windowed(&self) -> usize {
        self.windowed
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &u64> {
        self.map.keys()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&u64, &PendingRequest)> {
        self.map.iter()
    }
}

/// The request mux: one wildcard subscription serves every request.
#[derive(Debug)]
pub(crate) struct Mux {
    pub(crate) sid: u64,
    /// `<inbox_prefix>.<nuid>.`
    pub(crate) prefix: String,
}

/// A new request: subscribes the inbox if there is none yet, writes the request's reply
/// subject into `reply` (a buffer kept from request to request: no allocation each) and
/// returns its token and the inbox's sid.
pub(crate) fn start(
    shared: &Shared,
    inner: &mut Inner,
    reply: &mut String,
) -> Result<(u64, u64), RequestError> {
    if inner.mux.is_none() {
        let prefix = format!("{}.{}.", shared.opts.inbox_prefix, nuid());
        let sid = inner
            .conn
            .subscribe(&format!("{prefix}*"), None)
            .map_err(|r| {
                RequestError::Publish(PublishError::ControlLineTooLong {
                    len: r.len,
                    limit: r.limit,
                })
            })?;
        inner.mux = Some(Mux { sid, prefix });
    }
    let token = inner.token();
    reply.clear();
    let mux_sid = match inner.mux.as_ref() {
        Some(m) => {
            reply.push_str(&m.prefix);
            reply.push_str(itoa::Buffer::new().format(token));
            m.sid
        }
        None => 0,
    };
    Ok((token, mux_sid))
}

/// Before its frame is buffered: a request whose inbox was refused in the meantime can
/// get no reply. It is failed at once and never sent; returns false then.
pub(crate) fn inbox_still_valid(inner: &Inner, request: &mut Option<PendingRequest>) -> bool {
    let Some(r) = request.as_ref() else {
        return true;
    };
    if inner.mux.as_ref().map(|m| m.sid) == Some(r.mux_sid) {
        return true;
    }
    if let Some(r) = request.take() {
        let _ = r.tx.send(Err(RequestError::InboxDenied {
            subject: r.subject.to_string(),
            message: inner.inbox_refused.clone().unwrap_or_default(),
            maybe_processed: false,
        }));
    }
    false
}

/// True when `sid` is the request inbox.
pub(crate) fn is_inbox(inner: &Inner, sid: u64) -> bool {
    inner.mux.as_ref().is_some_and(|m| m.sid == sid)
}

/// A delivery on the inbox: the reply of the request its last token names (a reply
/// whose request already ended is dropped). A 503 status without a body says that
/// nobody listens: `NoResponders`. The reply is queued in `inner.replies` and handed
/// over when the driver releases the lock (see [`Replies`]).
pub(crate) fn on_reply(inner: &mut Inner, msg: Msg) {
    let Some(mux) = &inner.mux else {
        return;
    };
    let token = msg
        .subject
        .as_str()
        .strip_prefix(mux.prefix.as_str())
        .and_then(|t| t.parse::<u64>().ok());
    if let Some(req) = token.and_then(|t| inner.requests.remove(t)) {
        let message = Message::from(msg);
        let result = if message.is_no_responders() {
            Err(RequestError::NoResponders {
                subject: req.subject.to_string(),
            })
        } else {
            Ok(message)
        };
        inner.replies.0.push((req, result));
    }
}

/// Replies routed during one turn of the driver, handed over once it has released the
/// connection lock, newest first.
///
/// After the lock: a requester woken by its reply (a JetStream publisher refilling its
/// window) finds the lock free, instead of parking on it until the driver has routed the
/// rest of the read. Newest first: a publisher awaits its acks oldest first, so it wakes
/// once, when every reply of the read is in place, not at the first and again later.
/// Nothing orders the replies of different requests for their callers anyway.
#[derive(Debug, Default)]
pub(crate) struct Replies(Vec<(PendingRequest, Result<Message, RequestError>)>);

impl Replies {
    /// Takes what `inner` queued (under the lock), keeping this one's memory for the next
    /// turn: `inner`'s queue is empty again whenever the lock is free.
    pub(crate) fn take_from(&mut self, inner: &mut Inner) {
        if !inner.replies.0.is_empty() {
            std::mem::swap(&mut self.0, &mut inner.replies.0);
        }
    }

    /// Hands every reply to its requester, newest first (call without the lock). A
    /// publish window's slot frees just before its ack is handed over: the publisher it
    /// wakes finds the slot free. (The entries are dropped here too, not under the lock.)
    pub(crate) fn send(&mut self) {
        for (req, result) in self.0.drain(..).rev() {
            let PendingRequest { tx, slot, .. } = req;
            drop(slot);
            let _ = tx.send(result);
        }
    }
}

/// The link dropped. Requests whose frames were written may have been processed and
/// their replies cannot come back: they fail now, unless request_retry_after_reconnect
/// keeps them pending (their frames are resent). Those still buffered wait for the next
/// link.
pub(crate) fn on_disconnected(shared: &Shared, inner: &mut Inner, buffered: &[u64]) {
    // request_retry_after_reconnect
    if shared.opts.core.retain_requests {
        return;
    }
    let written = written(inner, |t| buffered.contains(&t));
    fail_written(inner, written);
}

/// The requests waiting for a reply whose frames left the buffer (written, or in flight):
/// every pending request but those `buffered` says are still buffered.
pub(crate) fn written(inner: &Inner, buffered: impl Fn(u64) -> bool) -> Vec<u64> {
    inner
        .requests
        .keys()
        .copied()
        .filter(|t| !buffered(*t))
        .collect()
}

/// Fail these requests, whose frames were written on a link now lost: a responder may
/// have acted on them, and their replies cannot come back.
pub(crate) fn fail_written(inner: &mut Inner, tokens: impl IntoIterator<Item = u64>) {
    for t in tokens {
        if let Some(r) = inner.requests.remove(t) {
            let _ = r.tx.send(Err(RequestError::ConnectionLost {
                subject: r.subject.to_string(),
                maybe_processed: true,
            }));
        }
    }
}

/// The server refused to publish `subject` (or with `reply`). The oldest request for
/// that subject, or the one with that reply subject, fails with `PermissionDenied`.
/// Returns the message back when no request matched: a publish's refusal.
pub(crate) fn on_publish_denied(
    inner: &mut Inner,
    subject: Option<&str>,
    reply: Option<&str>,
    message: String,
) -> Option<String> {
    let mux = inner.mux.as_ref();
    let matched = inner
        .requests
        .iter()
        .filter(|(t, r)| {
            subject == Some(&*r.subject)
                || reply.is_some_and(|rp| mux.is_some_and(|m| rp == format!("{}{t}", m.prefix)))
        })
        .map(|(t, _)| *t)
        .min();
    match matched.and_then(|t| inner.requests.remove(t)) {
        Some(r) => {
            let _ = r.tx.send(Err(RequestError::PermissionDenied(message)));
            None
        }
        None => Some(message),
    }
}

/// The subscription `sid` ended. When it is the inbox (permissions on `_INBOX.>`, say),
/// every request fails: no reply can reach those inboxes. Frames still pending are
/// removed, never sent; one written or in flight may have been acted on (S4). The next
/// request subscribes a new inbox. Returns false when `sid` is not the inbox.
pub(crate) fn on_inbox_ended(inner: &mut Inner, sid: u64, reason: &SubEndReason) -> bool {
    if !is_inbox(inner, sid) {
        return false;
    }
    inner.mux = None;
    let why: String = match reason {
        SubEndReason::PermissionDenied(t) | SubEndReason::MaxSubscriptionsExceeded(t) => t.clone(),
        SubEndReason::MaxReached => "the request inbox subscription ended".to_owned(),
    };
    inner.inbox_refused = Some(why.clone());
    let pending: Vec<u64> = inner.conn.pending_requests().collect();
    inner.conn.remove_requests(|t| pending.contains(&t));
    for (token, r) in inner.requests.drain() {
        let _ = r.tx.send(Err(RequestError::InboxDenied {
            subject: r.subject.to_string(),
            message: why.clone(),
            maybe_processed: !pending.contains(&token),
        }));
    }
    true
}

/// Fail every request with `err()` (see `Inner::fail_waiters`): the client closed, or the
/// Lazy policy's attempt failed. Their frames are removed too: a request told "not
/// published" must never go out later (B6).
pub(crate) fn fail_all(inner: &mut Inner, err: impl Fn() -> RequestError) {
    let failed: Vec<_> = inner.requests.drain().collect();
    inner
        .conn
        .remove_requests(|t| failed.iter().any(|(f, _)| *f == t));
    for (_, r) in failed {
        let _ = r.tx.send(Err(err()));
    }
}

/// Removes a request that ends without its reply being routed (timeout, error, or the
/// caller dropping the future): its entry, and its frame if still unsent.
pub(crate) struct RequestGuard {
    pub(crate) shared: Arc<Shared>,
    pub(crate) token: u64,
    pub(crate) armed: bool,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut inner = self.shared.lock("request end");
        inner.requests.remove(self.token);
        inner.conn.cancel_request(self.token);
    }
}

/// A request buffered and registered, its reply still to come (see
/// `Client::request_send`). Dropping it ends the request.
pub(crate) struct PendingReply {
    pub(crate) guard: RequestGuard,
    pub(crate) rx: oneshot::Receiver<Result<Message, RequestError>>,
    pub(crate) start: tokio::time::Instant,
    pub(crate) deadline: tokio::time::Instant,
}

impl PendingReply {
    /// Wait for the reply to the request sent to `subject` until its deadline.
    pub(crate) async fn reply(mut self, subject: &str) -> Result<Message, RequestError> {
        let result = match tokio::time::timeout_at(self.deadline, &mut self.rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RequestError::Closed),
            // The guard removes the entry and a frame still unsent: a timed-out request
            // is never sent later.
            Err(_) => {
                return Err(RequestError::Timeout {
                    subject: subject.to_owned(),
                    elapsed: self.start.elapsed(),
                })
            }
        };
        self.guard.armed = false;
        result
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tether_proto::conn::{Config, Connection};
    use tether_proto::outbound::FrameKind;

    use super::*;
    use crate::events::State;
    use crate::server_pool::ServerPool;

    const PREFIX: &str = "_INBOX.abc.";

    /// A client state with the inbox subscribed as sid 1 and no link.
    fn inner() -> Inner {
        let now = Instant::now();
        let mut rng = rand::thread_rng();
        let pool = ServerPool::new(Vec::new(), true, None, now, &mut rng);
        let mut inner = Inner::new(
            Connection::new(Config::default(), now),
            State::Connected,
            pool,
        );
        inner.mux = Some(Mux {
            sid: 1,
            prefix: PREFIX.to_owned(),
        });
        inner
    }

    /// Register a request for `subject`; with `buffered`, its frame waits in the buffer.
    fn request(
        inner: &mut Inner,
        subject: &str,
        buffered: bool,
    ) -> (u64, oneshot::Receiver<Result<Message, RequestError>>) {
        let token = inner.token();
        if buffered {
            let reply = format!("{PREFIX}{token}");
            let kind = FrameKind::Request(token);
            inner
                .conn
                .publish(subject, Some(&reply), None, b"x", kind)
                .unwrap();
        }
        let (tx, rx) = oneshot::channel();
        let r = PendingRequest {
            slot: None,
            subject: Arc::from(subject),
            mux_sid: 1,
            tx,
        };
        inner.requests.insert(token, r);
        (token, rx)
    }

    fn outcome(rx: &mut oneshot::Receiver<Result<Message, RequestError>>) -> Option<RequestError> {
        rx.try_recv().ok().map(|r| r.expect_err("failed"))
    }

    #[test]
    fn a_publish_refusal_fails_the_oldest_request_for_its_subject_or_its_reply() {
        let mut inner = inner();
        let (_, mut a1) = request(&mut inner, "a", false);
        let (_, mut a2) = request(&mut inner, "a", false);
        let (b, mut b1) = request(&mut inner, "b", false);
        assert_eq!(
            on_publish_denied(&mut inner, Some("a"), None, "no".into()),
            None
        );
        assert!(matches!(outcome(&mut a1), Some(RequestError::PermissionDenied(m)) if m == "no"));
        assert!(outcome(&mut a2).is_none(), "only the oldest");
        let reply = format!("{PREFIX}{b}");
        assert_eq!(
            on_publish_denied(&mut inner, None, Some(&reply), "r".into()),
            None
        );
        assert!(matches!(
            outcome(&mut b1),
            Some(RequestError::PermissionDenied(_))
        ));
        // Nobody's request: the message comes back (a publish's refusal).
        assert_eq!(
            on_publish_denied(&mut inner, Some("c"), None, "c".into()),
            Some("c".to_owned())
        );
        assert_eq!(inner.requests.len(), 1);
    }

    #[test]
    fn a_refused_inbox_fails_every_request_and_says_which_may_have_been_processed() {
        let mut inner = inner();
        let (_, mut written) = request(&mut inner, "a", false);
        let (_, mut pending) = request(&mut inner, "a", true);
        let reason = SubEndReason::PermissionDenied("no inbox".into());
        assert!(!on_inbox_ended(&mut inner, 2, &reason), "not the inbox");
        assert!(on_inbox_ended(&mut inner, 1, &reason));
        assert!(inner.mux.is_none() && inner.requests.len() == 0);
        assert_eq!(inner.inbox_refused.as_deref(), Some("no inbox"));
        assert!(matches!(
            outcome(&mut written),
            Some(RequestError::InboxDenied {
                maybe_processed: true,
                ..
            })
        ));
        assert!(matches!(
            outcome(&mut pending),
            Some(RequestError::InboxDenied {
                maybe_processed: false,
                ..
            })
        ));
        assert_eq!(inner.conn.pending_requests().count(), 0, "never sent");
    }

    #[test]
    fn a_request_whose_inbox_went_meanwhile_fails_before_it_is_buffered() {
        let mut inner = inner();
        let (tx, mut rx) = oneshot::channel();
        let mut r = Some(PendingRequest {
            slot: None,
            subject: Arc::from("a"),
            mux_sid: 7,
            tx,
        });
        inner.inbox_refused = Some("refused".into());
        assert!(!inbox_still_valid(&inner, &mut r));
        assert!(r.is_none());
        assert!(matches!(
            outcome(&mut rx),
            Some(RequestError::InboxDenied {
                maybe_processed: false,
                ..
            })
        ));
        assert!(inbox_still_valid(&inner, &mut None));
    }

    #[test]
    fn the_table_counts_the_requests_that_hold_a_window_slot() {
        let window = Arc::new(tokio::sync::Semaphore::new(2));
        let entry = |slot: bool| PendingRequest {
            slot: slot.then(|| window.clone().try_acquire_owned().unwrap()),
            subject: Arc::from("a"),
            mux_sid: 1,
            tx: oneshot::channel().0,
        };
        let mut t = Requests::default();
        t.insert(1, entry(true));
        t.insert(2, entry(false));
        t.insert(3, entry(true));
        assert_eq!((t.len(), t.windowed()), (3, 2));
        assert_eq!(window.available_permits(), 0);
        assert!(t.remove(1).is_some() && t.remove(1).is_none());
        assert_eq!(t.windowed(), 1);
        t.insert(3, entry(false)); // replaces a windowed entry
        assert_eq!((t.len(), t.windowed()), (2, 0));
        assert_eq!(
            window.available_permits(),
            2,
            "slots free with their entries"
        );
        t.insert(4, entry(true));
        assert_eq!(t.drain().count(), 3);
        assert_eq!((t.len(), t.windowed()), (0, 0));
    }

    #[test]
    fn written_requests_fail_as_maybe_processed_and_others_stay() {
        let mut inner = inner();
        let (t1, mut r1) = request(&mut inner, "a", false);
        let (_, mut r2) = request(&mut inner, "a", false);
        fail_written(&mut inner, [t1, 99]);
        assert!(matches!(
            outcome(&mut r1),
            Some(RequestError::ConnectionLost {
                maybe_processed: true,
                ..
            })
        ));
        assert!(outcome(&mut r2).is_none());
        fail_all(&mut inner, || RequestError::Closed);
        assert!(matches!(outcome(&mut r2), Some(RequestError::Closed)));
    }
}
