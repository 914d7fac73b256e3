//! JetStream: streams, publish with acks, pull consumers (DESIGN.md, JetStream).
//!
//! A [`Context`] wraps a [`Client`](crate::Client) and speaks the `$JS.API` request
//! protocol over it: every call is a core request with a JSON body, answered by the
//! server with JSON or an error carrying the server's `err_code`.
//!
//! ```no_run
//! # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
//! use futures_util::StreamExt;
//! use tether::jetstream::{self, ConsumerConfig, PullOptions, StreamConfig};
//!
//! let client = tether::connect("nats://127.0.0.1:4222").await?;
//! let js = jetstream::Context::new(client);
//! js.create_stream(StreamConfig::new("ORDERS", ["orders.>"])).await?;
//! let ack = js.publish("orders.new", "order 1").await?.await?;
//! assert_eq!(ack.stream, "ORDERS");
//!
//! let consumer = js
//!     .create_consumer("ORDERS", ConsumerConfig::durable("workers"))
//!     .await?;
//! let mut messages = consumer.messages(PullOptions::default()).await?;
//! while let Some(item) = messages.next().await {
//!     match item {
//!         Ok(msg) => msg.ack().await?,
//!         // A missed heartbeat, a leadership change: reported, and the stream goes on.
//!         Err(event) => tracing::warn!(%event, "pull"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Choices
//! - **No JetStream.** A server (or account) without JetStream answers `$JS.API`
//!   requests with no responders; that is [`JetStreamError::NotEnabled`].
//! - **Publish acks.** [`Context::publish`] returns once the message is buffered; the
//!   [`PubAckFuture`] it returns resolves to the server's [`PubAck`]. At most
//!   `max_pending_acks` (256 by default) acks are outstanding per context: the next
//!   publish waits for room, which bounds what the server holds unanswered and lets a
//!   publisher keep a window. A slot frees when the server's answer arrives, not when the
//!   future is awaited, so collecting futures and awaiting them later never deadlocks.
//! - **Window writes.** While earlier acks of a window are on their way, a publish is
//!   not written on its own: it goes out with the others when the next read brings acks
//!   (they free slots the publisher refills), when the publisher waits (for an ack or a
//!   slot), or at most about a millisecond later (2 ms with the timer's resolution). A
//!   window of publishes thus reaches the server in a few large writes, as a raw client
//!   would write it, instead of one write per publish. A lone publish (no ack
//!   outstanding) is written at once from the caller's thread.
//! - **Ack writes.** While a [`Messages`] stream is live, its messages keep arriving, and
//!   an ack (`ack`, `nak`, `term`, `in_progress`; not `double_ack`, which waits for an
//!   answer) is written the same way: with the acks of the next read, when the stream
//!   has no message left to yield (from the consumer's thread, before it waits), or at
//!   most about a millisecond later. A read's worth of messages is acked in one write,
//!   and the connection's driver is not woken for each ack.
//! - **No responders on publish** is ambiguous: no stream captures the subject, or the
//!   stream's leader is being elected. tether asks the stream names API which stream
//!   captures the subject: none → [`PublishError::NoStreamForSubject`] at once; one →
//!   the publish is sent again until the publish deadline (10 s by default). The question
//!   is asked beside the resends, not before them: when the lost stream leader also led
//!   the meta group, the names API cannot answer until a new meta leader is elected, and
//!   the resends go on meanwhile (it is asked again while it cannot answer). Resending
//!   after no responders is always safe (nobody stored it). After a lost link or a
//!   missing ack the message may have been stored: it is resent only when it carries a
//!   `Nats-Msg-Id`, which the stream's duplicate window turns into one stored copy.
//! - **Heartbeats** belong to a pull request, not to the connection; see [`PullOptions`].
//!   A missed heartbeat sends a PING at once (a dead link is then found within
//!   pong_timeout), yields [`PullError::MissedHeartbeat`] and re-issues the pull; the
//!   stream of messages never ends on it.
//! - **Pulls.** [`Consumer::messages`] keeps one inbox and asks for `batch` messages,
//!   then for more whenever less than half of the batch is outstanding (the server's
//!   408/409 statuses say how much of an ended pull went unfilled). After a reconnect, a
//!   `409 Leadership Change` or a missed heartbeat it assumes every pull is gone and asks
//!   afresh: asking twice costs a few extra messages in flight, never a stall. With
//!   `max_bytes`, bytes (counted as the server does: subject, reply, headers, payload)
//!   decide when to ask. A pull the server refuses for now (`409 Exceeded MaxWaiting`) is
//!   reported and asked again 500 ms later; one that can never succeed (the consumer's
//!   max_batch, max_expires or max_bytes below the pull's, a `400`, a message larger than
//!   max_bytes) is reported and ends the stream. No responders on a pull, or a `409
//!   Consumer Deleted` (also sent when a consumer moves between servers), means the
//!   consumer is gone, moved, or its leader is being elected; the consumer info API tells
//!   which: gone ends the stream with [`PullError::ConsumerDeleted`].
//! - **Fetch.** [`Consumer::fetch`] is one pull; from 2 s of expiry up it carries a
//!   heartbeat of a quarter of it (at most 5 s), so a dead link ends it early (with what
//!   came, or [`PullError::MissedHeartbeat`] in [`JetStreamError::Pull`] if nothing did)
//!   and the link is probed, instead of a silent empty batch after the full expiry.

mod api;
mod consumer;
mod context;
mod error;
mod message;
mod publish;
mod pull;
mod stream;

pub use api::{ApiError, ErrorCode};
pub use consumer::{
    AckPolicy, Consumer, ConsumerConfig, ConsumerInfo, DeliverPolicy, SequenceInfo,
};
pub use context::{
    Context, DEFAULT_API_TIMEOUT, DEFAULT_MAX_PENDING_ACKS, DEFAULT_PUBLISH_DEADLINE,
};
pub use error::JetStreamError;
pub use message::{AckError, JsMessage, MessageInfo};
pub use publish::{
    PubAck, PubAckFuture, PubAckWait, PublishError, PublishOptions, EXPECTED_LAST_MSG_ID,
    EXPECTED_LAST_SEQUENCE, EXPECTED_LAST_SUBJECT_SEQUENCE, EXPECTED_STREAM, MSG_ID,
};
pub use pull::{
    Messages, PullError, PullOptions, DEFAULT_BATCH, DEFAULT_EXPIRES, DEFAULT_IDLE_HEARTBEAT,
    MAX_EXPIRES,
};
pub use stream::{
    ClusterInfo, DiscardPolicy, PeerInfo, PurgeOptions, RetentionPolicy, StorageType, StreamConfig,
    StreamInfo, StreamState,
};
