//! The two libraries behind one trait, so that each workload is written once and only
//! the library calls differ.
//!
//! Every method is a thin wrapper around the library's own call, and the workloads are
//! generic over [`BenchClient`] (static dispatch): a measured loop compiles to the same
//! calls it would make written against the library directly, with no boxing and no
//! dynamic dispatch per message. What each library is given per call is the cheapest
//! way to call it: tether borrows `&str` and `&[u8]` and copies them into its buffer;
//! async-nats takes a [`async_nats::Subject`] and a [`Bytes`], both cloned per message
//! (reference-count bumps).

mod async_nats_client;
mod tether_client;

use std::fmt::Display;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::memory::{Flood, TetherRefusals};
use crate::reconnect::LinkRx;
use crate::{Lib, Res};

pub(crate) use async_nats_client::AsyncNatsClient;
pub(crate) use tether_client::TetherClient;

/// How a workload connects: each library's default options, except these.
#[derive(Debug, Clone, Default)]
pub(crate) struct Setup {
    /// Room for this many undelivered messages per subscription (pubsub): tether
    /// `pending_limits(n, 1 GiB)`, async-nats `subscription_capacity(n)`.
    pub(crate) pending_msgs: Option<usize>,
    /// This wait before every reconnect attempt instead of the library's backoff.
    pub(crate) reconnect_wait: Option<Duration>,
    /// TLS (`--tls`), trusting this CA file and no other: tether `tls_ca_file`,
    /// async-nats `add_root_certificates` and `require_tls(true)`.
    pub(crate) tls_ca: Option<Arc<Path>>,
}

/// How the js-consume workload pulls, the same for both libraries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PullShape {
    /// Messages per pull request.
    pub(crate) batch: usize,
    /// How long a pull request waits on the server.
    pub(crate) expires: Duration,
    /// The idle heartbeat of each pull request.
    pub(crate) heartbeat: Duration,
}

/// What happened to one publish of the memory workload's flood.
#[derive(Debug)]
pub(crate) enum Offer<E> {
    /// The library took the message.
    Accepted,
    /// The library refused it: its buffer is full (async-nats: the publish did not
    /// finish in time).
    Refused,
    /// The publish failed for another reason.
    Failed(E),
}

/// One connected client of a library under test: the calls the workloads make.
pub(crate) trait BenchClient: Sized + 'static {
    /// Which library this is.
    const LIB: Lib;
    /// A subject as this library's publish takes it; built once, outside the measured
    /// loops.
    type Subject;
    /// A received message.
    type Message: Send + 'static;
    /// A subscription's stream of messages.
    type Subscriber: futures_util::Stream<Item = Self::Message> + Unpin + Send + 'static;
    /// Where the memory workload learns that the link went down (and, for tether, what
    /// was refused).
    type Events;
    /// Why a publish of the memory workload's flood failed, other than a full buffer.
    type FloodError: Display;
    /// A JetStream context.
    type Js;
    /// A publish ack on its way.
    type PubAck;
    /// A handle on a pull consumer.
    type JsConsumer;
    /// What a pull consumer's continuous stream yields: a message or an event.
    type JsItem;
    /// A pull consumer's continuous stream.
    type JsMessages: futures_util::Stream<Item = Self::JsItem> + Unpin;

    fn subject(subject: String) -> Self::Subject;

    async fn connect(url: &str, setup: Setup) -> Res<Self>;

    /// Connects and forwards the client's disconnect and (re)connect events, each
    /// timestamped when it reaches us.
    async fn connect_watched(url: &str, setup: Setup) -> Res<(Self, LinkRx)>;

    /// Connects with default options, watching for what the memory workload needs.
    async fn connect_with_events(url: &str) -> Res<(Self, Self::Events)>;

    async fn subscribe(&self, subject: &Self::Subject) -> Res<Self::Subscriber>;

    async fn publish(&self, subject: &Self::Subject, payload: &Bytes) -> Res<()>;

    async fn publish_with_reply(
        &self,
        subject: &Self::Subject,
        reply: &'static str,
        payload: &Bytes,
    ) -> Res<()>;

    /// One request with the library's default timeout.
    async fn request(&self, subject: &Self::Subject, payload: &Bytes) -> Res<Self::Message>;

    async fn flush(&self) -> Res<()>;

    /// Ends the connection (tether `close`, async-nats `drain`).
    async fn close(self) -> Res<()>;

    fn payload(message: &Self::Message) -> &[u8];

    fn has_reply(message: &Self::Message) -> bool;

    /// Messages the library itself counted as dropped on this subscription (0 where it
    /// does not count them).
    fn dropped(subscriber: &Self::Subscriber) -> u64;

    /// One publish of the memory workload's flood, with the server down; never waits
    /// long. `flood` is the tally so far.
    async fn offer(
        &self,
        subject: &Self::Subject,
        payload: &Bytes,
        flood: &Flood,
    ) -> Offer<Self::FloodError>;

    /// Waits for the library's Disconnected event.
    async fn disconnected(events: &mut Self::Events) -> Res<()>;

    /// After the flood: tether's own account of what it refused (None for async-nats).
    async fn refusals(&self, events: &mut Self::Events) -> Option<TetherRefusals>;

    /// A JetStream context allowing `window` publish acks outstanding (tether
    /// `with_max_pending_acks`, async-nats `max_ack_inflight` with its default
    /// backpressure).
    fn jetstream(&self, window: usize) -> Self::Js;

    /// One JetStream publish: returns once the message is on its way, with its ack to
    /// come.
    async fn js_publish(
        js: &Self::Js,
        subject: &Self::Subject,
        payload: &Bytes,
    ) -> Res<Self::PubAck>;

    /// Waits for a publish ack; the stream's sequence number.
    async fn js_ack(ack: Self::PubAck) -> Res<u64>;

    /// A handle on the existing pull consumer `name` of `stream`.
    async fn js_consumer(js: &Self::Js, stream: &str, name: &str) -> Res<Self::JsConsumer>;

    /// The consumer's continuous stream of messages, pulled as `shape` says.
    async fn js_messages(consumer: &Self::JsConsumer, shape: PullShape) -> Res<Self::JsMessages>;

    /// Acks the item if it is a message (fire and forget: the ack is sent, not confirmed)
    /// and returns true; false for an event that is not a message.
    async fn js_handle(item: Self::JsItem) -> Res<bool>;
}
