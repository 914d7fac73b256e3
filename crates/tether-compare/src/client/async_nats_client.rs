//! async-nats behind [`BenchClient`].

use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt as _;
use tokio::sync::mpsc;

use super::{BenchClient, Offer, PullShape, Setup};
use crate::memory::{Flood, TetherRefusals, ASYNC_NATS_PROBE_EVERY, ASYNC_NATS_PUBLISH_TIMEOUT};
use crate::reconnect::{Link, LinkRx};
use crate::{BoxError, Lib, Res};

/// An async-nats client.
#[derive(Debug)]
pub(crate) struct AsyncNatsClient(async_nats::Client);

fn options(setup: Setup) -> async_nats::ConnectOptions {
    let mut opts = async_nats::ConnectOptions::new();
    if let Some(n) = setup.pending_msgs {
        opts = opts.subscription_capacity(n);
    }
    if let Some(wait) = setup.reconnect_wait {
        opts = opts.reconnect_delay_callback(move |_| wait);
    }
    if let Some(ca) = setup.tls_ca {
        opts = opts
            .add_root_certificates(ca.to_path_buf())
            .require_tls(true);
    }
    opts
}

impl BenchClient for AsyncNatsClient {
    const LIB: Lib = Lib::AsyncNats;
    type Subject = async_nats::Subject;
    type Message = async_nats::Message;
    type Subscriber = async_nats::Subscriber;
    /// Every event of `event_callback`, forwarded.
    type Events = mpsc::UnboundedReceiver<async_nats::Event>;
    type FloodError = async_nats::PublishError;
    type Js = async_nats::jetstream::Context;
    type PubAck = async_nats::jetstream::context::PublishAckFuture;
    type JsConsumer = async_nats::jetstream::consumer::PullConsumer;
    type JsItem = Result<
        async_nats::jetstream::Message,
        async_nats::jetstream::consumer::pull::MessagesError,
    >;
    type JsMessages = async_nats::jetstream::consumer::pull::Stream;

    fn subject(subject: String) -> async_nats::Subject {
        async_nats::Subject::from(subject)
    }

    async fn connect(url: &str, setup: Setup) -> Res<Self> {
        Ok(Self(options(setup).connect(url).await?))
    }

    /// The callback is the only option set besides `setup`.
    async fn connect_watched(url: &str, setup: Setup) -> Res<(Self, LinkRx)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = options(setup)
            .event_callback(move |e| {
                let now = Instant::now();
                let link = match e {
                    async_nats::Event::Disconnected => Some(Link::Down),
                    async_nats::Event::Connected => Some(Link::Up),
                    _ => None,
                };
                if let Some(link) = link {
                    let _ = tx.send((now, link));
                }
                async {}
            })
            .connect(url)
            .await?;
        Ok((Self(client), rx))
    }

    async fn connect_with_events(url: &str) -> Res<(Self, Self::Events)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .event_callback(move |e| {
                let _ = tx.send(e);
                async {}
            })
            .connect(url)
            .await?;
        Ok((Self(client), rx))
    }

    async fn subscribe(&self, subject: &async_nats::Subject) -> Res<async_nats::Subscriber> {
        Ok(self.0.subscribe(subject.clone()).await?)
    }

    async fn publish(&self, subject: &async_nats::Subject, payload: &Bytes) -> Res<()> {
        Ok(self.0.publish(subject.clone(), payload.clone()).await?)
    }

    async fn publish_with_reply(
        &self,
        subject: &async_nats::Subject,
        reply: &'static str,
        payload: &Bytes,
    ) -> Res<()> {
        Ok(self
            .0
            .publish_with_reply(subject.clone(), reply, payload.clone())
            .await?)
    }

    async fn request(
        &self,
        subject: &async_nats::Subject,
        payload: &Bytes,
    ) -> Res<async_nats::Message> {
        Ok(self.0.request(subject.clone(), payload.clone()).await?)
    }

    async fn flush(&self) -> Res<()> {
        Ok(self.0.flush().await?)
    }

    async fn close(self) -> Res<()> {
        Ok(self.0.drain().await?)
    }

    fn payload(message: &async_nats::Message) -> &[u8] {
        &message.payload
    }

    fn has_reply(message: &async_nats::Message) -> bool {
        message.reply.is_some()
    }

    fn dropped(_: &async_nats::Subscriber) -> u64 {
        0
    }

    /// A publish under [`ASYNC_NATS_PUBLISH_TIMEOUT`], a timeout counting as refused.
    /// Once refused, the channel is full and nothing drains it while the server is down:
    /// further publishes are polled once, and only every [`ASYNC_NATS_PROBE_EVERY`]th
    /// refusal waits the full timeout again.
    async fn offer(
        &self,
        subject: &async_nats::Subject,
        payload: &Bytes,
        flood: &Flood,
    ) -> Offer<async_nats::PublishError> {
        let publish = self.0.publish(subject.clone(), payload.clone());
        let done = if flood.full && flood.refused % ASYNC_NATS_PROBE_EVERY != 0 {
            publish.now_or_never()
        } else {
            tokio::time::timeout(ASYNC_NATS_PUBLISH_TIMEOUT, publish)
                .await
                .ok()
        };
        match done {
            Some(Ok(())) => Offer::Accepted,
            None => Offer::Refused,
            Some(Err(e)) => Offer::Failed(e),
        }
    }

    async fn disconnected(events: &mut Self::Events) -> Res<()> {
        while let Some(e) = events.recv().await {
            if matches!(e, async_nats::Event::Disconnected) {
                return Ok(());
            }
        }
        Err(BoxError::from("the event channel closed"))
    }

    async fn refusals(&self, _: &mut Self::Events) -> Option<TetherRefusals> {
        None
    }

    fn jetstream(&self, window: usize) -> async_nats::jetstream::Context {
        async_nats::jetstream::context::ContextBuilder::new()
            .max_ack_inflight(window)
            .build(self.0.clone())
    }

    async fn js_publish(
        js: &async_nats::jetstream::Context,
        subject: &async_nats::Subject,
        payload: &Bytes,
    ) -> Res<async_nats::jetstream::context::PublishAckFuture> {
        Ok(js.publish(subject.clone(), payload.clone()).await?)
    }

    async fn js_ack(ack: async_nats::jetstream::context::PublishAckFuture) -> Res<u64> {
        Ok(ack.await?.sequence)
    }

    async fn js_consumer(
        js: &async_nats::jetstream::Context,
        stream: &str,
        name: &str,
    ) -> Res<async_nats::jetstream::consumer::PullConsumer> {
        js.get_stream(stream).await?.get_consumer(name).await
    }

    async fn js_messages(
        consumer: &async_nats::jetstream::consumer::PullConsumer,
        shape: PullShape,
    ) -> Res<async_nats::jetstream::consumer::pull::Stream> {
        Ok(consumer
            .stream()
            .max_messages_per_batch(shape.batch)
            .expires(shape.expires)
            .heartbeat(shape.heartbeat)
            .messages()
            .await?)
    }

    async fn js_handle(
        item: Result<
            async_nats::jetstream::Message,
            async_nats::jetstream::consumer::pull::MessagesError,
        >,
    ) -> Res<bool> {
        match item {
            Ok(msg) => {
                msg.ack().await?;
                Ok(true)
            }
            Err(event) => {
                eprintln!("async-nats pull event: {event}");
                Ok(false)
            }
        }
    }
}
