//! The tasks a run spawns: the publisher, the subscriber, the event counters, the
//! prober (`--two-clients`), the sampler behind the progress bar and the timeline
//! (`--plot`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{FutureExt as _, StreamExt};
use indicatif::ProgressBar;
use tether::{Client, EventKind, State};

use super::state::{lock, Shared};
use super::{PAYLOAD_LEN, PROBE_EVERY, PROBE_MAGIC, PUBLISH_TICK, SAMPLE_EVERY, TIMELINE_EVERY};

/// The publisher's client (also the subscriber's with one client): disconnects, downtime,
/// planned switches, unconfirmed and removed messages.
pub(super) fn spawn_events(client: &Client, shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    let mut events = client.events();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            let now = Instant::now();
            shared.mark(&e.kind, false);
            match e.kind {
                EventKind::Disconnected {
                    unconfirmed_msgs, ..
                } => shared.with_window(|w| {
                    w.unconfirmed += unconfirmed_msgs;
                    w.disconnects += 1;
                    w.disconnected_at.get_or_insert(now);
                }),
                // A planned switch: no downtime. What stayed unconfirmed on the old link
                // may be lost, like a Disconnected's.
                EventKind::Migrating { .. } | EventKind::Migrated { .. } => {
                    shared.with_window(|w| {
                        w.migrations.count(&e.kind);
                        if let EventKind::Migrated {
                            unconfirmed_msgs, ..
                        } = e.kind
                        {
                            w.unconfirmed += unconfirmed_msgs;
                            w.migrated_at.get_or_insert(now);
                        }
                    });
                }
                EventKind::Reconnected { downtime, .. } => shared.with_window(|w| {
                    w.downtime += downtime;
                    w.reconnected_at = Some(now);
                }),
                EventKind::FramesRemoved { msgs, .. } => shared.with_window(|w| w.removed += msgs),
                EventKind::EventsLagged { dropped } => {
                    shared.lagged.fetch_add(dropped, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    })
}

/// `--two-clients`: an event of the subscriber's client. Its unconfirmed and removed
/// counts would be of its own publishes, of which there are none; what matters is its
/// own outages. Its planned switches are counted, but they are no outage: what it misses
/// during one is lost like any other message, not set apart as undetectable.
pub(super) fn subscriber_event(shared: &Shared, e: tether::Event) {
    shared.mark(&e.kind, true);
    match e.kind {
        EventKind::Disconnected { .. } => {
            shared.subscriber_down();
            shared.with_window(|w| w.sub_disconnects += 1);
        }
        EventKind::Migrating { .. } | EventKind::Migrated { .. } => {
            shared.with_window(|w| w.sub_migrations.count(&e.kind));
        }
        EventKind::EventsLagged { dropped } => {
            shared.lagged.fetch_add(dropped, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// `--two-clients`: while a subscriber outage is open and the subscriber is connected,
/// the publisher sends a probe every [`PROBE_EVERY`]; the first of them to reach the
/// subscriber ends the outage (at the first sequence number published after it).
pub(super) fn spawn_prober(
    pub_client: Client,
    sub_client: Client,
    subject: String,
    shared: Arc<Shared>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !shared.subscriber_outage_open() || sub_client.status() != State::Connected {
                continue;
            }
            let id = {
                let mut p = lock(&shared.probes);
                p.after.push(None);
                p.after.len() - 1
            };
            let mut payload = [0u8; 16];
            payload[..8].copy_from_slice(PROBE_MAGIC);
            payload[8..].copy_from_slice(&(id as u64).to_be_bytes());
            if pub_client.publish(&subject, payload).await.is_err() {
                continue;
            }
            // The publisher task stores next_seq = k between publishing k - 1 and k, so
            // it starts publishing k + 1 only after this load: after the probe.
            let after = shared.next_seq.load(Ordering::SeqCst) + 1;
            lock(&shared.probes).after[id] = Some(after);
        }
    })
}

/// Publishes the sequence numbers 0, 1, … at `rate` per second until `Shared::stop`,
/// recording per number whether `publish` accepted it.
pub(super) fn spawn_publisher(
    client: Client,
    subject: String,
    rate: u32,
    shared: Arc<Shared>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(PUBLISH_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq: u64 = 0;
        while !shared.stop.load(Ordering::SeqCst) {
            tick.tick().await;
            let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
            while seq < due && !shared.stop.load(Ordering::SeqCst) {
                let r = client.publish(&subject, seq.to_be_bytes()).await;
                let ok = r.is_ok();
                if let Err(e) = r {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                    lock(&shared.first_error).get_or_insert_with(|| e.to_string());
                } else {
                    shared.published_ok.fetch_add(1, Ordering::Relaxed);
                }
                lock(&shared.accepted).push(ok);
                seq += 1;
                shared.next_seq.store(seq, Ordering::SeqCst);
            }
        }
    })
}

/// Counts deliveries. With `--two-clients` it also takes the subscriber client's events:
/// the driver emits `Disconnected` before it queues any message from the next link, so
/// taking the queued events before each message opens a subscriber outage before a
/// message from after it can raise `delivered_upto` (the outage's start).
pub(super) fn spawn_subscriber(
    mut sub: tether::Subscriber,
    mut events: Option<tether::Events>,
    shared: Arc<Shared>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let next_event = async {
                match events.as_mut() {
                    Some(ev) => ev.next().await,
                    None => std::future::pending().await,
                }
            };
            let msg = tokio::select! {
                biased;
                Some(e) = next_event => {
                    subscriber_event(&shared, e);
                    continue;
                }
                m = sub.next() => m,
            };
            let Some(msg) = msg else { break };
            if let Some(ev) = events.as_mut() {
                while let Some(Some(e)) = ev.next().now_or_never() {
                    subscriber_event(&shared, e);
                }
            }
            if let Some(id) = msg
                .payload
                .strip_prefix(PROBE_MAGIC)
                .and_then(|id| <[u8; 8]>::try_from(id).ok())
            {
                lock(&shared.probes).seen.push(u64::from_be_bytes(id));
                continue;
            }
            let Ok(bytes) = <[u8; PAYLOAD_LEN]>::try_from(msg.payload.as_ref()) else {
                shared.foreign.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let seq = u64::from_be_bytes(bytes);
            // Far beyond anything published: someone else's message.
            if seq > shared.next_seq.load(Ordering::SeqCst) + 1_000_000 {
                shared.foreign.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let seq = seq as usize;
            let mut d = lock(&shared.delivered);
            if d.len() <= seq {
                d.resize(seq + 1, 0);
            }
            d[seq] += 1;
            drop(d);
            shared
                .delivered_upto
                .fetch_max(seq as u64 + 1, Ordering::SeqCst);
            shared.delivered_msgs.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Live state on the progress bar, and the buffer peak of the current window.
pub(super) fn spawn_sampler(
    pub_client: Client,
    sub_client: Client,
    shared: Arc<Shared>,
    pb: ProgressBar,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            let stats = pub_client.statistics();
            shared.with_window(|w| w.max_buffer = w.max_buffer.max(stats.buffered_bytes));
            let state = |c: &Client| format!("{:?}", c.status()).to_lowercase();
            let states = if pub_client.status() == sub_client.status() {
                state(&pub_client)
            } else {
                format!("pub {} sub {}", state(&pub_client), state(&sub_client))
            };
            pb.set_message(format!(
                "{states} | pub {} deliv {} refused {} buffered {} B",
                shared.published_ok.load(Ordering::Relaxed),
                shared.delivered_msgs.load(Ordering::Relaxed),
                shared.refused.load(Ordering::Relaxed),
                stats.buffered_bytes,
            ));
        }
    })
}

/// `--plot`: samples the publish and delivery counts every [`TIMELINE_EVERY`], from the
/// first tick (at once) on.
pub(super) fn spawn_timeline(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TIMELINE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            shared.tick();
        }
    })
}
