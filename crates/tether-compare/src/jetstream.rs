//! The JetStream workloads: js-pub and js-consume, written once over [`BenchClient`],
//! and the stream housekeeping around them (done with tether on a connection of its own,
//! outside every measured window, the same for both libraries).
//!
//! - **js-pub**: each run starts on a fresh memory stream `CMP_JS_PUB` capturing
//!   [`JS_SUBJECT`] (deleted and created again before the run, deleted after). The client
//!   connects with its defaults, makes a JetStream context allowing `--js-window` acks
//!   outstanding, publishes one unmeasured message and awaits its ack (both libraries
//!   set up their reply subscription on the first publish), then, clock started,
//!   publishes `--msgs` messages of `--js-size` bytes keeping at most `--js-window` acks
//!   outstanding: when the window is full the oldest ack is awaited (one server answers
//!   in order). The clock stops at the last ack. Then the stream must hold every message.
//!   Beside them run two ceilings. The JetStream one (`raw.rs`): a plain blocking socket
//!   on the same fresh stream, subject, payload and window, publishing pre-encoded
//!   frames with reply subjects in its inbox (one unmeasured publish and ack first, the
//!   stream checked after, as for the libraries): the most that server acks on one
//!   connection with that window. And the core one, the ceiling of `pub` at the same
//!   size: raw core publishes to `bench.pub`, the most that server takes from one
//!   connection without JetStream.
//! - **js-consume**: before the series' rounds the memory stream `CMP_JS_CONSUME` on
//!   [`JS_SUBJECT`] is filled with `--msgs` messages of `--js-size` bytes (untimed).
//!   Each run gets a durable pull consumer of its own, created by the housekeeping
//!   connection with the same config for both libraries: deliver all, ack explicit, the
//!   server's defaults otherwise (ack_wait 30 s, max_ack_pending 1000). The library takes
//!   a handle on it, then, clock started, opens its continuous pull (`messages()`, with
//!   `--js-batch` messages per pull request, expires 30 s, idle heartbeat 10 s on both)
//!   and acks every message as it arrives (a plain ack, sent and not confirmed, on both
//!   sides). The clock stops at the last message. Pull events that are not messages are
//!   printed and counted out; the consumer is deleted after the run. Beside them runs
//!   the JetStream ceiling (`raw.rs`): a plain blocking socket draining a consumer of
//!   its own, made the same way, with pulls of the same shape: the most that server
//!   delivers to one pull consumer acking every message.

use std::collections::VecDeque;
use std::future::IntoFuture as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tether::jetstream::{ConsumerConfig, JetStreamError, StorageType, StreamConfig};

use crate::client::{BenchClient, PullShape};
use crate::raw;
use crate::throughput::{Params, ServerCpu, Throughput};
use crate::{within, Res, Workload, STALL_TIMEOUT};

/// The subject of both JetStream workloads, for both libraries.
pub(crate) const JS_SUBJECT: &str = "bench.js";
/// The stream of js-pub (one per run).
const JS_PUB_STREAM: &str = "CMP_JS_PUB";
/// The stream of js-consume (one per series, filled once).
const JS_CONSUME_STREAM: &str = "CMP_JS_CONSUME";
/// Expiry of js-consume's pull requests, both libraries.
pub(crate) const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// Idle heartbeat of js-consume's pull requests, both libraries.
pub(crate) const PULL_HEARTBEAT: Duration = Duration::from_secs(10);

/// The housekeeping connection: streams and consumers, never measured.
struct Admin {
    client: tether::Client,
    js: tether::jetstream::Context,
    /// Publish acks outstanding while filling.
    window: usize,
}

impl Admin {
    async fn connect(p: &Params) -> Res<Self> {
        let mut opts = tether::ConnectOptions::new();
        if let Some(ca) = &p.tls_ca {
            opts = opts.tls_ca_file(&**ca);
        }
        let client = opts.connect(&p.url).await?;
        let js = client.jetstream().with_max_pending_acks(p.js_window);
        Ok(Self {
            client,
            js,
            window: p.js_window,
        })
    }

    /// A fresh memory stream `name` on [`JS_SUBJECT`] (one left by an earlier run goes).
    async fn fresh_stream(&self, name: &str) -> Res<()> {
        self.delete_stream(name).await?;
        self.js
            .create_stream(StreamConfig::new(name, [JS_SUBJECT]).storage(StorageType::Memory))
            .await
            .map_err(|e| format!("creating the memory stream {name} on {JS_SUBJECT}: {e}"))?;
        Ok(())
    }

    async fn delete_stream(&self, name: &str) -> Res<()> {
        match self.js.delete_stream(name).await {
            Ok(()) | Err(JetStreamError::StreamNotFound { .. }) => Ok(()),
            Err(e) => Err(format!("deleting the stream {name}: {e}").into()),
        }
    }

    async fn messages_in(&self, name: &str) -> Res<u64> {
        Ok(self.js.stream_info(name).await?.state.messages)
    }

    /// Fills the stream on [`JS_SUBJECT`] with `msgs` messages, acks windowed.
    async fn fill(&self, msgs: u64, payload: &Bytes) -> Res<()> {
        let mut acks = VecDeque::new();
        for _ in 0..msgs {
            if acks.len() >= self.window {
                if let Some(a) = acks.pop_front() {
                    within("a fill ack", a).await??;
                }
            }
            acks.push_back(
                self.js
                    .publish(JS_SUBJECT, payload.clone())
                    .await?
                    .into_future(),
            );
        }
        while let Some(a) = acks.pop_front() {
            within("a fill ack", a).await??;
        }
        Ok(())
    }

    /// After a js-pub run of `msgs` measured publishes (and the one before them): the
    /// stream must hold them all and the last ack must say so; then it goes.
    async fn check_and_delete(self, who: &str, msgs: u64, last_seq: u64) -> Res<()> {
        let held = self.messages_in(JS_PUB_STREAM).await?;
        if held != msgs + 1 || last_seq != msgs + 1 {
            return Err(format!(
                "{who}: the stream holds {held} messages (last ack seq {last_seq}) after {} \
                 acked publishes",
                msgs + 1
            )
            .into());
        }
        self.delete_stream(JS_PUB_STREAM).await?;
        self.close().await;
        Ok(())
    }

    async fn close(self) {
        self.client.close().await;
    }
}

/// Before a series' rounds: js-consume's stream, filled.
pub(crate) async fn prepare_series(w: Workload, p: &Params) -> Res<()> {
    if w != Workload::JsConsume {
        return Ok(());
    }
    let admin = Admin::connect(p).await?;
    admin.fresh_stream(JS_CONSUME_STREAM).await?;
    let started = Instant::now();
    admin.fill(p.msgs, &p.payload).await?;
    let held = admin.messages_in(JS_CONSUME_STREAM).await?;
    if held != p.msgs {
        return Err(format!(
            "the js-consume stream holds {held} messages after a fill of {}",
            p.msgs
        )
        .into());
    }
    eprintln!(
        "js-consume: {} messages of {} B in the memory stream {JS_CONSUME_STREAM} (filled in {:.1} s)",
        p.msgs,
        p.payload.len(),
        started.elapsed().as_secs_f64()
    );
    admin.close().await;
    Ok(())
}

/// After a series' rounds: js-consume's stream goes.
pub(crate) async fn finish_series(w: Workload, p: &Params) -> Res<()> {
    if w != Workload::JsConsume {
        return Ok(());
    }
    let admin = Admin::connect(p).await?;
    admin.delete_stream(JS_CONSUME_STREAM).await?;
    admin.close().await;
    Ok(())
}

pub(crate) async fn run_js_pub<C: BenchClient>(p: &Params) -> Res<Throughput> {
    let admin = Admin::connect(p).await?;
    admin.fresh_stream(JS_PUB_STREAM).await?;
    let client = C::connect(&p.url, p.setup()).await?;
    let js = client.jetstream(p.js_window);
    let subject = C::subject(JS_SUBJECT.to_owned());
    // Unmeasured: the first publish sets up each library's reply subscription.
    let first = C::js_publish(&js, &subject, &p.payload).await?;
    within("the first ack", C::js_ack(first)).await??;

    let window = p.js_window;
    let mut acks = VecDeque::with_capacity(window);
    let mut last_seq = 0;
    let cpu = ServerCpu::start(p.server_pid);
    let start = Instant::now();
    for _ in 0..p.msgs {
        if acks.len() >= window {
            if let Some(oldest) = acks.pop_front() {
                last_seq = within("an ack", C::js_ack(oldest)).await??;
            }
        }
        acks.push_back(C::js_publish(&js, &subject, &p.payload).await?);
    }
    while let Some(a) = acks.pop_front() {
        last_seq = within("an ack", C::js_ack(a)).await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let server_cpu = cpu.share(secs);
    drop(js);
    client.close().await?;

    admin
        .check_and_delete(C::LIB.name(), p.msgs, last_seq)
        .await?;
    Ok(Throughput::published(p.msgs, secs, server_cpu))
}

/// js-pub's JetStream ceiling (`raw.rs`) on a fresh stream, made and checked after as
/// for the libraries. The raw socket blocks, so this runs on the caller's thread and
/// the housekeeping on `rt`.
pub(crate) fn run_js_pub_raw(rt: &tokio::runtime::Runtime, p: &Params) -> Res<Throughput> {
    let admin = rt.block_on(async {
        let admin = Admin::connect(p).await?;
        admin.fresh_stream(JS_PUB_STREAM).await?;
        Res::Ok(admin)
    })?;
    let (t, last_seq) = raw::run_js_pub(p, JS_SUBJECT, p.js_window)?;
    rt.block_on(admin.check_and_delete("js ceiling", p.msgs, last_seq))?;
    Ok(t)
}

pub(crate) async fn run_js_consume<C: BenchClient>(p: &Params, tag: &str) -> Res<Throughput> {
    let admin = Admin::connect(p).await?;
    let name = consumer_name(tag);
    admin
        .js
        .create_consumer(JS_CONSUME_STREAM, ConsumerConfig::durable(name.clone()))
        .await
        .map_err(|e| format!("creating the consumer {name}: {e}"))?;
    let client = C::connect(&p.url, p.setup()).await?;
    let js = client.jetstream(p.js_window);
    let consumer = C::js_consumer(&js, JS_CONSUME_STREAM, &name).await?;

    let cpu = ServerCpu::start(p.server_pid);
    let start = Instant::now();
    let mut messages = C::js_messages(&consumer, p.js_pull).await?;
    let (mut received, mut events) = (0u64, 0u64);
    let mut complete = true;
    while received < p.msgs {
        let Ok(Some(item)) = tokio::time::timeout(STALL_TIMEOUT, messages.next()).await else {
            // The pull ended or stalled: the run is incomplete.
            complete = false;
            break;
        };
        if C::js_handle(item).await? {
            received += 1;
        } else {
            events += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let server_cpu = cpu.share(secs);
    drop(messages);
    drop(consumer);
    drop(js);
    client.close().await?;
    if events > 0 {
        eprintln!("{}: {events} pull events during the run", C::LIB.name());
    }
    if let Err(e) = admin.js.delete_consumer(JS_CONSUME_STREAM, &name).await {
        eprintln!("deleting the consumer {name}: {e}");
    }
    admin.close().await;
    Ok(Throughput {
        msgs_per_sec: received as f64 / secs,
        received,
        dropped: p.msgs - received,
        secs,
        server_cpu,
        complete,
    })
}

/// js-consume's ceiling (`raw.rs`) on a durable consumer of its own, made and deleted
/// by the housekeeping connection as for the libraries. The raw socket blocks, so this
/// runs on the caller's thread and the housekeeping on `rt`.
pub(crate) fn run_js_consume_raw(
    rt: &tokio::runtime::Runtime,
    p: &Params,
    tag: &str,
) -> Res<Throughput> {
    let name = consumer_name(tag);
    let admin = rt.block_on(async {
        let admin = Admin::connect(p).await?;
        admin
            .js
            .create_consumer(JS_CONSUME_STREAM, ConsumerConfig::durable(name.clone()))
            .await
            .map_err(|e| format!("creating the consumer {name}: {e}"))?;
        Res::Ok(admin)
    })?;
    let pull = raw::Pull {
        stream: JS_CONSUME_STREAM,
        consumer: &name,
        shape: p.js_pull,
    };
    let t = raw::run_js_consume(p, &pull);
    rt.block_on(async {
        if let Err(e) = admin.js.delete_consumer(JS_CONSUME_STREAM, &name).await {
            eprintln!("deleting the consumer {name}: {e}");
        }
        admin.close().await;
    });
    t
}

/// A durable consumer's name from a run's tag.
fn consumer_name(tag: &str) -> String {
    tag.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The pull of js-consume, the same for both libraries.
pub(crate) fn pull_shape(batch: usize) -> PullShape {
    PullShape {
        batch,
        expires: PULL_EXPIRES,
        heartbeat: PULL_HEARTBEAT,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{
        finish_series, prepare_series, pull_shape, run_js_consume, run_js_consume_raw, run_js_pub,
        run_js_pub_raw, JS_SUBJECT,
    };
    use crate::client::{AsyncNatsClient, TetherClient};
    use crate::throughput::Params;
    use crate::Workload;

    fn js_server() -> tether_testkit::NatsServer {
        tether_testkit::NatsServer::start_with(tether_testkit::ServerConfig {
            jetstream: true,
            ..tether_testkit::ServerConfig::default()
        })
        .unwrap()
    }

    fn params(server: &tether_testkit::NatsServer, msgs: u64) -> Params {
        Params {
            url: server.url(),
            raw_addr: crate::raw::addr(&server.url()).unwrap(),
            msgs,
            requests: 0,
            payload: Bytes::from(vec![b'x'; 128]),
            echo_subject: String::new(),
            raw_echo_subject: String::new(),
            server_pid: server.pid(),
            tls_ca: None,
            // A window smaller than the run, so it fills and drains many times.
            js_window: 16,
            js_pull: pull_shape(50),
            in_task: false,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn js_pub_stores_every_message_for_both_libraries() {
        let server = js_server();
        let p = params(&server, 2_003);
        let rt = runtime();
        // run_js_pub itself fails unless the stream holds every message.
        let t = rt.block_on(run_js_pub::<TetherClient>(&p)).unwrap();
        assert!(
            t.complete && t.received == 2_003 && t.msgs_per_sec > 0.0,
            "{t:?}"
        );
        let a = rt.block_on(run_js_pub::<AsyncNatsClient>(&p)).unwrap();
        assert!(
            a.complete && a.received == 2_003 && a.msgs_per_sec > 0.0,
            "{a:?}"
        );
    }

    /// `--in-task`: each library's run is a task on the runtime, and still stores every
    /// message.
    #[test]
    fn js_pub_runs_in_a_spawned_task_with_in_task() {
        use crate::throughput::{run_one, RunResult, Side};
        let server = js_server();
        let p = crate::throughput::Params {
            in_task: true,
            ..params(&server, 1_001)
        };
        let rt = runtime();
        for side in [Side::Tether, Side::AsyncNats] {
            match run_one(&rt, Workload::JsPub, side, &p, "t.task") {
                Ok(RunResult::Throughput(t)) => {
                    assert!(t.complete && t.received == 1_001, "{side:?}: {t:?}");
                }
                other => panic!("{side:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_js_ceiling_stores_every_message_on_a_fresh_stream_each_run() {
        let server = js_server();
        // Window 16 of 2,003 messages: it fills and refills many times, and the last
        // write is a partial window.
        let p = params(&server, 2_003);
        let rt = runtime();
        // Twice: each run starts on a fresh stream (its last ack must be seq 2,004 again),
        // and run_js_pub_raw fails unless the stream holds every message.
        for _ in 0..2 {
            let t = run_js_pub_raw(&rt, &p).unwrap();
            assert!(
                t.complete && t.received == 2_003 && t.msgs_per_sec.is_finite(),
                "{t:?}"
            );
        }
        // A window larger than one 64 KiB write: the refill takes several writes.
        let wide = crate::throughput::Params {
            js_window: 1_000,
            ..params(&server, 5_000)
        };
        let t = run_js_pub_raw(&rt, &wide).unwrap();
        assert_eq!(t.received, 5_000);
    }

    #[test]
    fn the_js_ceiling_fails_when_no_stream_captures_the_subject() {
        let server = js_server();
        let p = params(&server, 10);
        let e = crate::raw::run_js_pub(&p, JS_SUBJECT, 4)
            .map(|(t, _)| t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("503") && e.contains("no responders"), "{e}");
    }

    /// Fails for tether until its pull consumer's `messages()` delivers.
    #[test]
    fn js_consume_drains_the_stream_for_both_libraries() {
        let server = js_server();
        let p = params(&server, 1_001);
        let rt = runtime();
        rt.block_on(prepare_series(Workload::JsConsume, &p))
            .unwrap();
        let a = rt
            .block_on(run_js_consume::<AsyncNatsClient>(&p, "t.a.1"))
            .unwrap();
        assert!(a.complete && a.received == 1_001 && a.dropped == 0, "{a:?}");
        let t = rt
            .block_on(run_js_consume::<TetherClient>(&p, "t.t.1"))
            .unwrap();
        assert!(t.complete && t.received == 1_001 && t.dropped == 0, "{t:?}");
        // The ceiling on a consumer of its own: every message again, in pulls of 50.
        let r = run_js_consume_raw(&rt, &p, "t.r.1").unwrap();
        assert!(r.complete && r.received == 1_001, "{r:?}");
        rt.block_on(finish_series(Workload::JsConsume, &p)).unwrap();
    }
}
