//! tether behind [`BenchClient`].

use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{BenchClient, Offer, PullShape, Setup};
use crate::memory::{Flood, TetherRefusals, EVENT_DRAIN};
use crate::reconnect::{Link, LinkRx};
use crate::{BoxError, Lib, Res};

/// A tether client.
#[derive(Debug)]
pub(crate) struct TetherClient(tether::Client);

fn options(setup: Setup) -> tether::ConnectOptions {
    let mut opts = tether::ConnectOptions::new();
    if let Some(n) = setup.pending_msgs {
        opts = opts.pending_limits(n, 1 << 30);
    }
    if let Some(wait) = setup.reconnect_wait {
        opts = opts.reconnect_delay(move |_, _, _| wait);
    }
    if let Some(ca) = setup.tls_ca {
        opts = opts.tls_ca_file(&*ca);
    }
    opts
}

impl BenchClient for TetherClient {
    const LIB: Lib = Lib::Tether;
    type Subject = String;
    type Message = tether::Message;
    type Subscriber = tether::Subscriber;
    type Events = tether::Events;
    type FloodError = tether::PublishError;
    type Js = tether::jetstream::Context;
    type PubAck = tether::jetstream::PubAckFuture;
    type JsConsumer = tether::jetstream::Consumer;
    type JsItem = Result<tether::jetstream::JsMessage, tether::jetstream::PullError>;
    type JsMessages = tether::jetstream::Messages;

    fn subject(subject: String) -> String {
        subject
    }

    async fn connect(url: &str, setup: Setup) -> Res<Self> {
        Ok(Self(options(setup).connect(url).await?))
    }

    async fn connect_watched(url: &str, setup: Setup) -> Res<(Self, LinkRx)> {
        let client = options(setup).connect(url).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut events = client.events();
        tokio::spawn(async move {
            while let Some(e) = events.next().await {
                let link = match e.kind {
                    tether::EventKind::Disconnected { .. } => Link::Down,
                    tether::EventKind::Reconnected { .. } => Link::Up,
                    _ => continue,
                };
                if tx.send((Instant::now(), link)).is_err() {
                    break;
                }
            }
        });
        Ok((Self(client), rx))
    }

    async fn connect_with_events(url: &str) -> Res<(Self, tether::Events)> {
        let client = tether::connect(url).await?;
        let events = client.events();
        Ok((Self(client), events))
    }

    async fn subscribe(&self, subject: &String) -> Res<tether::Subscriber> {
        Ok(self.0.subscribe(subject).await?)
    }

    async fn publish(&self, subject: &String, payload: &Bytes) -> Res<()> {
        Ok(self.0.publish(subject, payload).await?)
    }

    async fn publish_with_reply(
        &self,
        subject: &String,
        reply: &'static str,
        payload: &Bytes,
    ) -> Res<()> {
        Ok(self.0.publish_with_reply(subject, reply, payload).await?)
    }

    async fn request(&self, subject: &String, payload: &Bytes) -> Res<tether::Message> {
        Ok(self.0.request(subject, payload).await?)
    }

    async fn flush(&self) -> Res<()> {
        Ok(self.0.flush().await?)
    }

    async fn close(self) -> Res<()> {
        self.0.close().await;
        Ok(())
    }

    fn payload(message: &tether::Message) -> &[u8] {
        &message.payload
    }

    fn has_reply(message: &tether::Message) -> bool {
        message.reply.is_some()
    }

    fn dropped(subscriber: &tether::Subscriber) -> u64 {
        subscriber.dropped()
    }

    async fn offer(
        &self,
        subject: &String,
        payload: &Bytes,
        _: &Flood,
    ) -> Offer<tether::PublishError> {
        match self.0.try_publish(subject, payload) {
            Ok(()) => Offer::Accepted,
            Err(tether::PublishError::BufferFull { .. }) => Offer::Refused,
            Err(e) => Offer::Failed(e),
        }
    }

    async fn disconnected(events: &mut tether::Events) -> Res<()> {
        while let Some(e) = events.next().await {
            if matches!(e.kind, tether::EventKind::Disconnected { .. }) {
                return Ok(());
            }
        }
        Err(BoxError::from("the event stream ended"))
    }

    /// Collects the BufferOverflow events for [`EVENT_DRAIN`], then reads the counters.
    async fn refusals(&self, events: &mut tether::Events) -> Option<TetherRefusals> {
        let (mut overflow_events, mut ev_msgs, mut ev_bytes) = (0, 0, 0);
        let deadline = tokio::time::Instant::now() + EVENT_DRAIN;
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.next()).await {
            if let tether::EventKind::BufferOverflow {
                refused_msgs,
                refused_bytes,
            } = e.kind
            {
                overflow_events += 1;
                ev_msgs += refused_msgs;
                ev_bytes += refused_bytes;
            }
        }
        let stats = self.0.statistics();
        Some(TetherRefusals {
            stats_refused_msgs: stats.refused_msgs,
            stats_refused_bytes: stats.refused_bytes,
            buffered_msgs: stats.buffered_msgs,
            buffered_bytes: stats.buffered_bytes,
            buffer_overflow_events: overflow_events,
            overflow_event_refused_msgs: ev_msgs,
            overflow_event_refused_bytes: ev_bytes,
        })
    }

    fn jetstream(&self, window: usize) -> tether::jetstream::Context {
        self.0.jetstream().with_max_pending_acks(window)
    }

    async fn js_publish(
        js: &tether::jetstream::Context,
        subject: &String,
        payload: &Bytes,
    ) -> Res<tether::jetstream::PubAckFuture> {
        Ok(js.publish(subject.as_str(), payload.clone()).await?)
    }

    async fn js_ack(ack: tether::jetstream::PubAckFuture) -> Res<u64> {
        Ok(ack.await?.seq)
    }

    async fn js_consumer(
        js: &tether::jetstream::Context,
        stream: &str,
        name: &str,
    ) -> Res<tether::jetstream::Consumer> {
        Ok(js.consumer(stream, name).await?)
    }

    async fn js_messages(
        consumer: &tether::jetstream::Consumer,
        shape: PullShape,
    ) -> Res<tether::jetstream::Messages> {
        let opts = tether::jetstream::PullOptions::new()
            .batch(shape.batch)
            .expires(shape.expires)
            .idle_heartbeat(shape.heartbeat);
        Ok(consumer.messages(opts).await?)
    }

    async fn js_handle(
        item: Result<tether::jetstream::JsMessage, tether::jetstream::PullError>,
    ) -> Res<bool> {
        match item {
            Ok(msg) => {
                msg.ack().await?;
                Ok(true)
            }
            Err(event) => {
                eprintln!("tether pull event: {event}");
                Ok(false)
            }
        }
    }
}
