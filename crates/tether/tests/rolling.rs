//! Rolling restarts and planned switches against real 3-node clusters in lame duck mode
//! (issue 11, DESIGN semantics 9): nothing lost, at most 5 duplicates per switch at
//! 1 msg/ms, no Disconnected, and every move announced with Migrating then Migrated; a
//! switch whose target refuses or is the lame-duck node under another name; a retired link
//! that dies with a request written on it; a link the server closes during the jitter.
//!
//! Each lame-duck scenario runs with the testkit's 2 s grace period and with a 1 s one.
//! The rolling restarts print one line per switch and per run (`--nocapture`): those are
//! the figures the closing note asks for.

mod common;
use common::{next_event, wait_interest, T};

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use tether::{Client, ConnectOptions, Event, EventKind, Events, RequestError, State};
use tether_testkit::{closed_port, CutMode, NatsCluster, Proxy, ServerConfig, LAME_DUCK_DURATION};

const GRACE_1S: Duration = Duration::from_secs(1);
const GRACE_2S: Duration = Duration::from_secs(2);
/// The goal of semantics 9: at most 5 duplicates per switch at 1 msg/ms. (The switch cuts
/// the two links' streams at a marker, so a switch usually has none.)
const MAX_DUPLICATES_PER_SWITCH: usize = 5;
/// One message per millisecond.
const PACE: Duration = Duration::from_millis(1);
/// A lame-duck node exits after its grace period once it has closed its clients, and at
/// the latest after lame_duck_duration.
const EXIT_TIMEOUT: Duration = Duration::from_secs(LAME_DUCK_DURATION.as_secs() + 10);
/// The ldm_jitter of the scenarios that are not about the default (what DESIGN says tests
/// use): well inside both grace periods.
const TEST_JITTER: Duration = Duration::from_millis(200);
const SUBJECT: &str = "rolling";
/// After the final flush, a flow stops waiting for missing messages once nothing has
/// arrived for this long.
const QUIET: Duration = Duration::from_secs(1);

// ===== fixtures =====

/// Three nodes with lame duck settings for tests and the given grace period.
fn cluster(grace: Duration) -> NatsCluster {
    NatsCluster::start_with(3, ServerConfig::default().with_lame_duck_grace(grace)).unwrap()
}

/// The port at the end of a server URL.
fn port_of(url: &str) -> Option<u16> {
    url.rsplit(':').next()?.parse().ok()
}

/// Node names for output: `n0`..`n2` instead of URLs.
struct Names(Vec<u16>);

impl Names {
    fn of(cluster: &NatsCluster) -> Self {
        Names((0..cluster.len()).map(|i| cluster.node(i).port()).collect())
    }

    /// `n<i>` for a node's URL (`n<i>@localhost` under that name), else the URL.
    fn name(&self, url: &str) -> String {
        match self.0.iter().position(|&p| Some(p) == port_of(url)) {
            Some(i) if url.contains("localhost") => format!("n{i}@localhost"),
            Some(i) => format!("n{i}"),
            None => url.to_owned(),
        }
    }

    /// `line` with every node URL replaced by its name.
    fn shorten(&self, line: &str) -> String {
        let mut out = line.to_owned();
        for (i, p) in self.0.iter().enumerate() {
            out = out
                .replace(&format!("nats://127.0.0.1:{p}"), &format!("n{i}"))
                .replace(&format!("nats://localhost:{p}"), &format!("n{i}@localhost"));
        }
        out
    }
}

/// Seconds from `t0` to `t`, negative when `t` is earlier.
fn secs_since(t0: SystemTime, t: SystemTime) -> f64 {
    match t.duration_since(t0) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Awaits `cond()` until it holds or `timeout` passes; true when it held.
async fn poll_until<F: Future<Output = bool>>(timeout: Duration, cond: impl FnMut() -> F) -> bool {
    tether_testkit::wait_for_async(timeout, cond).await
}

/// The next event matching `pred` within `timeout`, with its time; panics naming `what`.
async fn wait_event(
    events: &mut Events,
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut(&EventKind) -> bool,
) -> Event {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline, events.next()).await else {
            panic!("no {what} within {timeout:?}; events meanwhile: {seen:#?}");
        };
        match next {
            Some(e) if pred(&e.kind) => return e,
            Some(e) => seen.push(e.kind.to_string()),
            None => panic!("the event stream ended before {what}; events: {seen:#?}"),
        }
    }
}

/// Every event of a client from the moment it starts, kept for the checks at the end.
struct Recorder {
    log: Arc<Mutex<Vec<Event>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    fn start(client: &Client) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut events = client.events();
        let sink = log.clone();
        let task = tokio::spawn(async move {
            while let Some(e) = events.next().await {
                sink.lock().unwrap().push(e);
            }
        });
        Recorder { log, task }
    }

    fn events(&self) -> Vec<Event> {
        self.log.lock().unwrap().clone()
    }

    fn count(&self, pred: impl Fn(&EventKind) -> bool) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|e| pred(&e.kind))
            .count()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_migrating(e: &EventKind) -> bool {
    matches!(e, EventKind::Migrating { .. })
}
fn is_migrated(e: &EventKind) -> bool {
    matches!(e, EventKind::Migrated { .. })
}
fn is_disconnected(e: &EventKind) -> bool {
    matches!(e, EventKind::Disconnected { .. })
}
fn is_lame_duck(e: &EventKind) -> bool {
    matches!(e, EventKind::LameDuck { .. })
}

/// A client under watch: its name in the output, the handle and its events.
struct Watched {
    role: &'static str,
    client: Client,
    events: Recorder,
}

impl Watched {
    fn new(role: &'static str, client: Client) -> Self {
        let events = Recorder::start(&client);
        Watched {
            role,
            client,
            events,
        }
    }

    /// Connected, no switch half done, and every node of `ports` in the pool.
    fn settled(&self, ports: &[u16]) -> bool {
        let servers = self.client.servers();
        self.client.status() == State::Connected
            && self.events.count(is_migrating) == self.events.count(is_migrated)
            && ports
                .iter()
                .all(|p| servers.iter().any(|s| port_of(s) == Some(*p)))
    }
}

/// Waits until every client is settled (see [`Watched::settled`]) on the cluster's nodes.
async fn settle(clients: &[&Watched], ports: &[u16]) {
    let ok = poll_until(T, || async { clients.iter().all(|c| c.settled(ports)) }).await;
    if !ok {
        let states: Vec<String> = clients
            .iter()
            .map(|c| {
                format!(
                    "{}: {} on {:?}, {} Migrating / {} Migrated, pool {:?}",
                    c.role,
                    c.client.status(),
                    c.client.connected_server(),
                    c.events.count(is_migrating),
                    c.events.count(is_migrated),
                    c.client.servers()
                )
            })
            .collect();
        panic!("the clients did not settle within {T:?}: {states:#?}");
    }
}

// ===== sequenced traffic =====

/// What a flow's receiver saw: deliveries per sequence number, and when each duplicate
/// arrived.
#[derive(Default)]
struct Receipts {
    /// Payloads that are not sequence numbers: interest probes.
    probes: u64,
    delivered: u64,
    counts: Vec<u32>,
    duplicates: Vec<(u64, SystemTime)>,
}

/// What a flow's publisher did: when each sequence number was published (index = seq),
/// and the publishes that returned an error.
#[derive(Default)]
struct Sent {
    times: Vec<SystemTime>,
    refused: Vec<(u64, String)>,
}

/// Sequence numbers (a big-endian u64 payload) published at 1 msg/ms by one client and
/// received by another.
struct Flow {
    publisher: Client,
    stop: Arc<AtomicBool>,
    pump: tokio::task::JoinHandle<Sent>,
    got: Arc<Mutex<Receipts>>,
    receiver: tokio::task::JoinHandle<()>,
}

/// A flow's outcome.
struct Tally {
    published: usize,
    lost: Vec<u64>,
    duplicates: Vec<(u64, SystemTime)>,
    sent: Sent,
    flush: Result<(), String>,
}

impl Flow {
    /// Subscribes `subscriber` to `subject`, waits until `publisher`'s node knows the
    /// interest, then starts publishing.
    async fn start(publisher: &Client, subscriber: &Client, subject: &str) -> Flow {
        let mut sub = subscriber.subscribe(subject).await.unwrap();
        subscriber.flush().await.unwrap();
        wait_interest(publisher, &mut sub, subject).await;
        let got = Arc::new(Mutex::new(Receipts::default()));
        let sink = got.clone();
        let receiver = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let Ok(bytes) = <[u8; 8]>::try_from(&m.payload[..]) else {
                    sink.lock().unwrap().probes += 1;
                    continue;
                };
                let seq = u64::from_be_bytes(bytes);
                let mut r = sink.lock().unwrap();
                r.delivered += 1;
                let i = usize::try_from(seq).unwrap();
                if r.counts.len() <= i {
                    r.counts.resize(i + 1, 0);
                }
                r.counts[i] += 1;
                if r.counts[i] > 1 {
                    r.duplicates.push((seq, SystemTime::now()));
                }
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let p = publisher.clone();
        let (s, subj) = (stop.clone(), subject.to_owned());
        let pump = tokio::spawn(async move {
            let mut sent = Sent::default();
            let mut tick = tokio::time::interval(PACE);
            let mut seq = 0u64;
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                sent.times.push(SystemTime::now());
                if let Err(e) = p.publish(subj.as_str(), seq.to_be_bytes()).await {
                    sent.refused.push((seq, e.to_string()));
                }
                seq += 1;
            }
            sent
        });
        Flow {
            publisher: publisher.clone(),
            stop,
            pump,
            got,
            receiver,
        }
    }

    /// Waits until the subscriber's interest has reached the node at `url`: a client
    /// there publishes probes (which are not sequence numbers) until one arrives. A
    /// publisher that moves to a freshly restarted node then loses nothing for want of
    /// interest the cluster had not spread yet.
    async fn wait_interest_at(&self, url: &str, subject: &str) {
        let prober = ConnectOptions::new()
            .ignore_discovered_servers(true)
            .connect(url)
            .await
            .unwrap();
        let before = self.got.lock().unwrap().probes;
        let deadline = tokio::time::Instant::now() + T;
        while self.got.lock().unwrap().probes == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the interest in {subject} never reached {url}"
            );
            prober.publish(subject, "probe").await.unwrap();
            prober.flush().await.unwrap();
            poll_until(Duration::from_millis(50), || {
                std::future::ready(self.got.lock().unwrap().probes != before)
            })
            .await;
        }
        prober.close().await;
    }

    /// Stops publishing, flushes, waits (with a deadline) until everything published was
    /// received, and counts.
    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.pump.await.unwrap();
        let flush = self.publisher.flush().await.map_err(|e| e.to_string());
        let refused: std::collections::HashSet<u64> = sent.refused.iter().map(|r| r.0).collect();
        let expected: Vec<u64> = (0..sent.times.len() as u64)
            .filter(|s| !refused.contains(s))
            .collect();
        let missing = || {
            let r = self.got.lock().unwrap();
            expected
                .iter()
                .copied()
                .filter(|&s| r.counts.get(s as usize).is_none_or(|&c| c == 0))
                .collect::<Vec<u64>>()
        };
        // The flush confirmed that the publisher's server has everything; what is still
        // on its way arrives within milliseconds. Give up once nothing arrived for
        // QUIET: what is missing then is lost.
        let mut last = (u64::MAX, Instant::now());
        poll_until(T, || {
            let delivered = self.got.lock().unwrap().delivered;
            if delivered != last.0 {
                last = (delivered, Instant::now());
            }
            std::future::ready(missing().is_empty() || last.1.elapsed() >= QUIET)
        })
        .await;
        let lost = missing();
        self.receiver.abort();
        let duplicates = std::mem::take(&mut self.got.lock().unwrap().duplicates);
        Tally {
            published: expected.len(),
            lost,
            duplicates,
            sent,
            flush,
        }
    }
}

/// `1..=4 at 0.001 s, 9 at 0.009 s` for `[1, 2, 3, 4, 9]` (when each range's first
/// message was published, from `t0`), at most 10 ranges.
fn ranges(seqs: &[u64], times: &[SystemTime], t0: SystemTime) -> String {
    let at = |seq: u64| {
        times.get(seq as usize).map_or(String::new(), |t| {
            format!(" at {:.3} s", secs_since(t0, *t))
        })
    };
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let mut j = i;
        while j + 1 < seqs.len() && seqs[j + 1] == seqs[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            format!("{}{}", seqs[i], at(seqs[i]))
        } else {
            format!("{}..={}{}", seqs[i], seqs[j], at(seqs[i]))
        });
        i = j + 1;
    }
    if out.len() > 10 {
        let more = out.len() - 10;
        out.truncate(10);
        out.push(format!("and {more} more ranges"));
    }
    out.join(", ")
}

/// The problems a flow shows: anything lost, refused, or a failed final flush.
fn flow_problems(label: &str, tally: &Tally, t0: SystemTime, problems: &mut Vec<String>) {
    if !tally.lost.is_empty() {
        problems.push(format!(
            "{label}: lost {} of {}: {}",
            tally.lost.len(),
            tally.published,
            ranges(&tally.lost, &tally.sent.times, t0)
        ));
    }
    if !tally.sent.refused.is_empty() {
        problems.push(format!(
            "{label}: {} publishes refused, first: {:?}",
            tally.sent.refused.len(),
            tally.sent.refused[0]
        ));
    }
    if let Err(e) = &tally.flush {
        problems.push(format!("{label}: the final flush failed: {e}"));
    }
}

// ===== switches =====

/// One planned switch of one client, from its events.
struct Switch {
    from: String,
    to: String,
    reason: String,
    /// The LameDuck that preceded it, if any.
    lame_duck: Option<SystemTime>,
    started: SystemTime,
    ended: Option<SystemTime>,
}

/// The planned switches in `w`'s events; every break of the Migrating → Migrated pairing,
/// every Disconnected, a missed move and a statistics mismatch go to `problems`.
fn switches(w: &Watched, names: &Names, problems: &mut Vec<String>) -> Vec<Switch> {
    let role = w.role;
    let mut out: Vec<Switch> = Vec::new();
    let mut last_lame_duck = None;
    for e in w.events.events() {
        match &e.kind {
            EventKind::LameDuck { .. } => last_lame_duck = Some(e.time),
            EventKind::Migrating { from, to, reason } => {
                if let Some(open) = out.last().filter(|s| s.ended.is_none()) {
                    problems.push(format!(
                        "{role}: Migrating to {} before the switch to {} ended",
                        names.name(to),
                        names.name(&open.to)
                    ));
                }
                out.push(Switch {
                    from: from.clone(),
                    to: to.clone(),
                    reason: reason.to_string(),
                    lame_duck: last_lame_duck.take(),
                    started: e.time,
                    ended: None,
                });
            }
            EventKind::Migrated { from, to, .. } => match out.last_mut() {
                Some(s) if s.ended.is_none() && &s.from == from && &s.to == to => {
                    s.ended = Some(e.time);
                }
                _ => problems.push(format!(
                    "{role}: Migrated {} -> {} without its Migrating",
                    names.name(from),
                    names.name(to)
                )),
            },
            EventKind::Disconnected { .. } => {
                problems.push(format!("{role}: {}", names.shorten(&e.kind.to_string())));
            }
            _ => {}
        }
    }
    if let Some(s) = out.last().filter(|s| s.ended.is_none()) {
        problems.push(format!(
            "{role}: the switch to {} never ended (no Migrated)",
            names.name(&s.to)
        ));
    }
    let lame_ducks = w.events.count(is_lame_duck);
    let migrated = w.events.count(is_migrated);
    if migrated < lame_ducks {
        problems.push(format!(
            "{role}: saw {lame_ducks} LameDuck but moved with Migrated only {migrated} times"
        ));
    }
    let stats = w.client.statistics().migrations;
    if stats != migrated as u64 {
        problems.push(format!(
            "{role}: statistics().migrations is {stats}, Migrated events {migrated}"
        ));
    }
    out
}

/// Which switch each duplicate belongs to: the subscriber's latest switch that started
/// before it arrived (`None`: before any switch).
fn duplicates_per_switch(subs: &[Switch], duplicates: &[(u64, SystemTime)]) -> (Vec<usize>, usize) {
    let mut per = vec![0usize; subs.len()];
    let mut outside = 0;
    for (_, t) in duplicates {
        match subs.iter().rposition(|s| s.started <= *t) {
            Some(k) => per[k] += 1,
            None => outside += 1,
        }
    }
    (per, outside)
}

/// The notable events of every client, one line each, for the log of a run.
fn timeline(clients: &[&Watched], names: &Names, t0: SystemTime) -> String {
    let mut lines: Vec<(SystemTime, String)> = Vec::new();
    for w in clients {
        for e in w.events.events() {
            let notable = matches!(
                e.kind,
                EventKind::LameDuck { .. }
                    | EventKind::Migrating { .. }
                    | EventKind::Migrated { .. }
                    | EventKind::Disconnected { .. }
                    | EventKind::Reconnecting { .. }
                    | EventKind::ReconnectFailed { .. }
                    | EventKind::Reconnected { .. }
            );
            if notable {
                let text = names.shorten(&e.kind.to_string());
                lines.push((e.time, format!("{}: {text}", w.role)));
            }
        }
    }
    lines.sort_by_key(|l| l.0);
    let mut out = String::new();
    for (t, l) in lines {
        let _ = writeln!(out, "  {:>8.3} s  {l}", secs_since(t0, t));
    }
    out
}

// ===== a, b: rolling restarts =====

/// Which URLs the clients are given.
#[derive(Clone, Copy, Debug)]
enum Configured {
    EveryUrl,
    /// Only node 0's; the others come from INFO `connect_urls`.
    OneUrl,
}

/// The tests of this file run one at a time. Duplicates are the milliseconds of overlap
/// between the new interest reaching the old node and the old link's UNSUB, so they
/// measure the switch only while the machine is not starved: two 3-node clusters with
/// their clients at 1 msg/ms on two cores stretch every hop by milliseconds.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Lame-duck restarts of n0, n1, n2, n0, n1, n2 while a publisher and a subscriber on two
/// clients with library defaults exchange 1 msg/ms.
async fn rolling_restart(grace: Duration, configured: Configured) {
    let label = format!("rolling [grace {grace:?}, {configured:?}]");
    let started = Instant::now();
    let mut cluster = cluster(grace);
    let names = Names::of(&cluster);
    let ports = names.0.clone();
    let urls = match configured {
        Configured::EveryUrl => cluster.urls(),
        Configured::OneUrl => vec![cluster.node(0).url()],
    };
    let t0 = SystemTime::now();
    let subscriber = Watched::new(
        "subscriber",
        ConnectOptions::new().connect(urls.clone()).await.unwrap(),
    );
    let publisher = Watched::new(
        "publisher",
        ConnectOptions::new().connect(urls).await.unwrap(),
    );
    let both = [&subscriber, &publisher];
    settle(&both, &ports).await;
    let flow = Flow::start(&publisher.client, &subscriber.client, SUBJECT).await;
    for step in 0..6 {
        let i = step % 3;
        let on = |w: &Watched| names.name(&w.client.connected_server().unwrap_or_default());
        let (sub_on, pub_on) = (on(&subscriber), on(&publisher));
        let exit = tokio::task::block_in_place(|| cluster.lame_duck_restart(i, EXIT_TIMEOUT))
            .unwrap_or_else(|e| panic!("{label}: lame-duck restart of n{i}: {e}"));
        settle(&both, &ports).await;
        flow.wait_interest_at(&cluster.node(i).url(), SUBJECT).await;
        eprintln!(
            "{label} step {}: lame duck n{i} (subscriber on {sub_on}, publisher on {pub_on}), \
             exited after {:.2} s, restarted; now subscriber on {}, publisher on {}",
            step + 1,
            exit.as_secs_f64(),
            on(&subscriber),
            on(&publisher)
        );
    }
    let tally = flow.finish().await;
    let mut problems = Vec::new();
    let sub_switches = switches(&subscriber, &names, &mut problems);
    let pub_switches = switches(&publisher, &names, &mut problems);
    report_rolling(
        &label,
        &names,
        t0,
        &tally,
        &sub_switches,
        &pub_switches,
        &mut problems,
    );
    eprintln!(
        "{label}: the run took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if !problems.is_empty() {
        eprintln!("{label} timeline:\n{}", timeline(&both, &names, t0));
    }
    assert!(
        problems.is_empty(),
        "{label}: {} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Prints one line per switch and one per run; adds the loss and duplicate problems.
fn report_rolling(
    label: &str,
    names: &Names,
    t0: SystemTime,
    tally: &Tally,
    subs: &[Switch],
    pubs: &[Switch],
    problems: &mut Vec<String>,
) {
    let (per, outside) = duplicates_per_switch(subs, &tally.duplicates);
    for (role, list, dups) in [("subscriber", subs, Some(&per)), ("publisher", pubs, None)] {
        for (k, s) in list.iter().enumerate() {
            let took = |a: SystemTime, b: Option<SystemTime>| {
                b.and_then(|b| b.duration_since(a).ok())
                    .map_or("?".to_owned(), |d| format!("{:.3} s", d.as_secs_f64()))
            };
            let dup_text = dups.map_or(String::new(), |d| format!(", {} duplicates", d[k]));
            eprintln!(
                "{label} {role} switch {}: {} -> {} at {:.3} s ({}), LameDuck -> Migrating {}, \
                 Migrating -> Migrated {}{dup_text}",
                k + 1,
                names.name(&s.from),
                names.name(&s.to),
                secs_since(t0, s.started),
                s.reason,
                s.lame_duck
                    .map_or("-".to_owned(), |l| took(l, Some(s.started))),
                took(s.started, s.ended),
            );
            if dups.is_some() && per[k] > MAX_DUPLICATES_PER_SWITCH {
                problems.push(format!(
                    "{label}: subscriber switch {} ({} -> {}) delivered {} duplicates (at most \
                     {MAX_DUPLICATES_PER_SWITCH})",
                    k + 1,
                    names.name(&s.from),
                    names.name(&s.to),
                    per[k]
                ));
            }
        }
    }
    let total = tally.duplicates.len();
    eprintln!(
        "{label}: lost {} of {}, duplicates {total} (per subscriber switch {per:?}, outside a \
         switch {outside}), switches: subscriber {}, publisher {}",
        tally.lost.len(),
        tally.published,
        subs.len(),
        pubs.len()
    );
    flow_problems(label, tally, t0, problems);
    if outside > 0 {
        problems.push(format!(
            "{label}: {outside} duplicates before the subscriber's first switch"
        ));
    }
    if total > MAX_DUPLICATES_PER_SWITCH * subs.len() {
        problems.push(format!(
            "{label}: {total} duplicates in all, over {MAX_DUPLICATES_PER_SWITCH} x {} \
             subscriber switches",
            subs.len()
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_every_url_2s_grace() {
    let _alone = ONE_AT_A_TIME.lock().await;
    rolling_restart(GRACE_2S, Configured::EveryUrl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_every_url_1s_grace() {
    let _alone = ONE_AT_A_TIME.lock().await;
    rolling_restart(GRACE_1S, Configured::EveryUrl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_one_url_2s_grace() {
    let _alone = ONE_AT_A_TIME.lock().await;
    rolling_restart(GRACE_2S, Configured::OneUrl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_one_url_1s_grace() {
    let _alone = ONE_AT_A_TIME.lock().await;
    rolling_restart(GRACE_1S, Configured::OneUrl).await;
}

// ===== c, d: a switch whose first target fails =====

/// What [`move_off_n0`] saw.
struct Moved {
    tested: Watched,
    switches: Vec<Switch>,
    /// What no switch may show (loss, a Disconnected, a move without Migrating and
    /// Migrated); the scenario adds its own.
    problems: Vec<String>,
    t0: SystemTime,
}

impl Moved {
    /// Panics with the problems and the client's timeline, if there are problems.
    fn check(&self, names: &Names) {
        assert!(
            self.problems.is_empty(),
            "{}\ntimeline:\n{}",
            self.problems.join("\n"),
            timeline(&[&self.tested], names, self.t0)
        );
    }
}

/// A client given `servers` (n0 first, with no_randomize) that publishes to and receives
/// from an observer on n2 at 1 msg/ms while n0 enters lame duck mode and exits.
async fn move_off_n0(
    cluster: &mut NatsCluster,
    names: &Names,
    label: &str,
    options: ConnectOptions,
    servers: Vec<String>,
) -> Moved {
    let t0 = SystemTime::now();
    let tested = Watched::new("client", options.connect(servers).await.unwrap());
    let first = tested.client.connected_server().unwrap_or_default();
    assert_eq!(names.name(&first), "n0", "{label}: the client starts on n0");
    let observer = ConnectOptions::new()
        .connect(cluster.node(2).url())
        .await
        .unwrap();
    let out = Flow::start(&tested.client, &observer, "switch.out").await;
    let inn = Flow::start(&observer, &tested.client, "switch.in").await;
    tokio::task::block_in_place(|| cluster.node_mut(0).lame_duck_exit(EXIT_TIMEOUT))
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    settle(&[&tested], &[]).await;
    let (out, inn) = (out.finish().await, inn.finish().await);
    let mut problems = Vec::new();
    flow_problems(
        &format!("{label}, client -> observer"),
        &out,
        t0,
        &mut problems,
    );
    flow_problems(
        &format!("{label}, observer -> client"),
        &inn,
        t0,
        &mut problems,
    );
    let list = switches(&tested, names, &mut problems);
    if tested.events.count(is_lame_duck) == 0 {
        problems.push(format!("{label}: no LameDuck event"));
    }
    eprintln!(
        "{label}: lost {} (client -> observer) and {} (observer -> client), {} duplicates to \
         the client, {} switches",
        out.lost.len(),
        inn.lost.len(),
        inn.duplicates.len(),
        list.len(),
    );
    Moved {
        tested,
        switches: list,
        problems,
        t0,
    }
}

/// The server id the `/varz` of node `i` reports.
fn server_id(cluster: &NatsCluster, i: usize) -> String {
    cluster.node(i).varz().unwrap()["server_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Pool [n0, a closed port, n1, n2]: the switch off the lame-duck n0 first tries the
/// closed port, and must go on to a real node.
async fn first_target_refuses(grace: Duration) {
    let label = format!("refusing target [grace {grace:?}]");
    let mut cluster = cluster(grace);
    let names = Names::of(&cluster);
    let x_port = closed_port();
    let x = format!("nats://127.0.0.1:{x_port}");
    let urls = cluster.urls();
    let servers = vec![urls[0].clone(), x, urls[1].clone(), urls[2].clone()];
    let options = ConnectOptions::new()
        .no_randomize(true)
        .ldm_jitter(TEST_JITTER);
    let mut moved = move_off_n0(&mut cluster, &names, &label, options, servers).await;
    let (tested, problems) = (&moved.tested, &mut moved.problems);
    let refused = tested.events.count(|e| {
        matches!(e, EventKind::ReconnectFailed { server, .. } if port_of(server) == Some(x_port))
    });
    if refused == 0 {
        problems.push(format!("{label}: no ReconnectFailed for the closed port"));
    }
    let real = |url: &str| matches!(names.name(url).as_str(), "n1" | "n2");
    match moved.switches.last() {
        Some(s) if real(&s.to) => {}
        Some(s) => problems.push(format!(
            "{label}: the last switch went to {}, not to n1 or n2",
            names.name(&s.to)
        )),
        None => problems.push(format!("{label}: no switch off n0")),
    }
    let now_on = tested.client.connected_server().unwrap_or_default();
    if !real(&now_on) {
        problems.push(format!("{label}: ends on {}", names.name(&now_on)));
    }
    moved.check(&names);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_whose_first_target_refuses_goes_on_to_a_real_node_2s_grace() {
    let _alone = ONE_AT_A_TIME.lock().await;
    first_target_refuses(GRACE_2S).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_whose_first_target_refuses_goes_on_to_a_real_node_1s_grace() {
    let _alone = ONE_AT_A_TIME.lock().await;
    first_target_refuses(GRACE_1S).await;
}

/// [n0, n0 as `localhost`, n1], no_randomize, nothing discovered.
fn n0_twice_then_n1(cluster: &NatsCluster) -> Vec<String> {
    vec![
        cluster.node(0).url(),
        format!("nats://localhost:{}", cluster.node(0).port()),
        cluster.node(1).url(),
    ]
}

/// The problems of a client that had to leave n0 for n1: a switch to anything but n1, or
/// ending anywhere but on n1's server id.
fn must_end_on_n1(
    label: &str,
    w: &Watched,
    list: &[Switch],
    b_id: &str,
    names: &Names,
) -> Vec<String> {
    let mut problems = Vec::new();
    for s in list {
        if names.name(&s.to) != "n1" {
            problems.push(format!(
                "{label}: switched {} -> {}: the node it was leaving, under another name",
                names.name(&s.from),
                names.name(&s.to)
            ));
        }
    }
    if list.is_empty() {
        problems.push(format!("{label}: no switch"));
    }
    let id = w
        .client
        .server_info()
        .map(|i| i.server_id)
        .unwrap_or_default();
    if id != b_id {
        problems.push(format!(
            "{label}: ends on server id {id} ({:?}), not n1's {b_id}",
            w.client.connected_server()
        ));
    }
    problems
}

/// The lame-duck n0 is also in the pool as `localhost`: the switch must not land there.
async fn lame_duck_node_under_another_name(grace: Duration) {
    let label = format!("n0 twice [grace {grace:?}]");
    let mut cluster = cluster(grace);
    let names = Names::of(&cluster);
    let b_id = server_id(&cluster, 1);
    let options = ConnectOptions::new()
        .no_randomize(true)
        .ignore_discovered_servers(true)
        .ldm_jitter(TEST_JITTER);
    let servers = n0_twice_then_n1(&cluster);
    let mut moved = move_off_n0(&mut cluster, &names, &label, options, servers).await;
    let more = must_end_on_n1(&label, &moved.tested, &moved.switches, &b_id, &names);
    moved.problems.extend(more);
    moved.check(&names);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_off_a_lame_duck_node_never_lands_on_it_under_another_name_2s_grace() {
    let _alone = ONE_AT_A_TIME.lock().await;
    lame_duck_node_under_another_name(GRACE_2S).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_off_a_lame_duck_node_never_lands_on_it_under_another_name_1s_grace() {
    let _alone = ONE_AT_A_TIME.lock().await;
    lame_duck_node_under_another_name(GRACE_1S).await;
}

/// No lame duck mode here (so no grace period either): force_reconnect's first target is
/// the connected node under another name; the handshake shows the same server id, and the
/// switch must go on to n1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_reconnect_abandons_a_target_that_is_the_same_node() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let label = "force_reconnect, n0 twice";
    let t0 = SystemTime::now();
    let cluster = cluster(GRACE_2S);
    let names = Names::of(&cluster);
    let b_id = server_id(&cluster, 1);
    let w = Watched::new(
        "client",
        ConnectOptions::new()
            .no_randomize(true)
            .ignore_discovered_servers(true)
            .connect(n0_twice_then_n1(&cluster))
            .await
            .unwrap(),
    );
    assert_eq!(
        w.client.server_info().unwrap().server_id,
        server_id(&cluster, 0)
    );
    w.client.force_reconnect();
    let moved = poll_until(T, || async {
        w.events.count(|e| is_migrated(e) || is_disconnected(e)) > 0
    })
    .await;
    assert!(moved, "{label}: no Migrated within {T:?}");
    settle(&[&w], &[]).await;
    let mut problems = Vec::new();
    let list = switches(&w, &names, &mut problems);
    problems.extend(must_end_on_n1(label, &w, &list, &b_id, &names));
    assert!(
        problems.is_empty(),
        "{}\ntimeline:\n{}",
        problems.join("\n"),
        timeline(&[&w], &names, t0)
    );
}

// ===== e: a retired link that dies with a request written on it =====

/// No lame duck mode here (so no grace period either): the switch is force_reconnect's,
/// off a link that a proxy black-holes and then resets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_written_on_a_retired_link_fails_at_once_when_that_link_dies() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cluster = cluster(GRACE_2S);
    let proxy = Proxy::start(cluster.node(0).addr()).unwrap();
    let client = ConnectOptions::new()
        .no_randomize(true)
        .ignore_discovered_servers(true)
        .connect(vec![
            proxy.url(),
            cluster.node(1).url(),
            cluster.node(2).url(),
        ])
        .await
        .unwrap();
    assert_eq!(client.connected_server(), Some(proxy.url()));
    // A responder on n1 that never answers.
    let responder = ConnectOptions::new()
        .connect(cluster.node(1).url())
        .await
        .unwrap();
    let mut requests = responder.subscribe("svc.silent").await.unwrap();
    responder.flush().await.unwrap();
    wait_interest(&client, &mut requests, "svc.silent").await;
    let mut events = client.events();
    let c = client.clone();
    let request = tokio::spawn(async move {
        c.request_with("svc.silent", None, b"work", Duration::from_secs(30))
            .await
    });
    // Written on the link through the proxy: the responder has it.
    loop {
        let m = tokio::time::timeout(T, requests.next())
            .await
            .expect("the request never reached the responder")
            .unwrap();
        if &m.payload[..] == b"work" {
            break;
        }
    }
    proxy.black_hole();
    client.force_reconnect();
    let migrating = wait_event(&mut events, "Migrating", T, is_migrating).await;
    let EventKind::Migrating { from, .. } = &migrating.kind else {
        unreachable!()
    };
    assert_eq!(from, &proxy.url(), "{migrating}");
    // The retired link dies with the request written on it and unanswered.
    proxy.cut(CutMode::Rst);
    let cut = Instant::now();
    let Ok(outcome) = tokio::time::timeout(Duration::from_secs(5), request).await else {
        panic!(
            "the request was still pending {:?} after its retired link died: it waits out \
             its 30 s timeout instead of failing with ConnectionLost (B7)",
            cut.elapsed()
        );
    };
    let failed_after = cut.elapsed();
    let outcome = outcome.unwrap();
    assert!(
        matches!(
            &outcome,
            Err(RequestError::ConnectionLost { subject, maybe_processed: true })
                if subject == "svc.silent"
        ),
        "{outcome:?}"
    );
    assert!(
        failed_after < Duration::from_secs(3),
        "failed {failed_after:?} after the link died"
    );
}

// ===== f: a link closed while the client waits out its jitter =====

/// The jitter (drawn from 0..1 h) outlasts the grace period: the server closes the link
/// first, and the client reconnects at once with its subscription replayed.
async fn closed_during_the_jitter(grace: Duration) {
    let cluster = cluster(grace);
    let names = Names::of(&cluster);
    let urls = cluster.urls();
    let client = ConnectOptions::new()
        .no_randomize(true)
        .ignore_discovered_servers(true)
        .ldm_jitter(tether::options::MAX_RECONNECT_DELAY)
        .connect(vec![urls[0].clone(), urls[1].clone()])
        .await
        .unwrap();
    // On n1, where the client goes: its publishes reach the client's new link directly.
    let other = ConnectOptions::new()
        .connect(urls[1].clone())
        .await
        .unwrap();
    let mut sub = client.subscribe("jitter").await.unwrap();
    client.flush().await.unwrap();
    wait_interest(&other, &mut sub, "jitter").await;
    let mut events = client.events();
    cluster.node(0).lame_duck().unwrap();
    next_event(&mut events, is_lame_duck).await;
    let first = wait_event(&mut events, "Disconnected", grace + T, |e| {
        is_disconnected(e) || is_migrating(e)
    })
    .await;
    assert!(
        is_disconnected(&first.kind),
        "the client moved before the grace ended: its jitter (0..1 h) drew less than {grace:?}, \
         a chance of 1 in {}; {first}",
        3600 / grace.as_secs().max(1)
    );
    let back = wait_event(&mut events, "Reconnected", T, |e| {
        matches!(e, EventKind::Reconnected { .. })
    })
    .await;
    // Right away: the client's own publish goes out after the replayed SUB.
    client.publish("jitter", "own").await.unwrap();
    let EventKind::Reconnected {
        server, downtime, ..
    } = &back.kind
    else {
        unreachable!()
    };
    assert_eq!(names.name(server), "n1");
    assert!(
        *downtime < Duration::from_secs(1),
        "reconnected after {downtime:?}"
    );
    let mut payloads = Vec::new();
    let got_own = tokio::time::timeout(T, async {
        while let Some(m) = sub.next().await {
            payloads.push(m.payload.clone());
            if &m.payload[..] == b"own" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        got_own,
        Ok(true),
        "the subscription was not replayed before the client's next publish: {payloads:?}"
    );
    // And another client's publishes reach it.
    for i in 0..100u64 {
        other.publish("jitter", i.to_be_bytes()).await.unwrap();
    }
    let mut next = 0u64;
    while next < 100 {
        let m = tokio::time::timeout(T, sub.next())
            .await
            .unwrap_or_else(|_| panic!("only {next} of 100 messages from n1 arrived"))
            .unwrap();
        assert_eq!(&m.payload[..], next.to_be_bytes(), "in order, none missing");
        next += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_closed_during_the_jitter_reconnects_at_once_2s_grace() {
    let _alone = ONE_AT_A_TIME.lock().await;
    closed_during_the_jitter(GRACE_2S).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_closed_during_the_jitter_reconnects_at_once_1s_grace() {
    let _alone = ONE_AT_A_TIME.lock().await;
    closed_during_the_jitter(GRACE_1S).await;
}

// ===== B4: a requested switch retries until a target answers =====

/// `set_server_pool` drops the connected server while the new one is not up yet, and
/// `force_reconnect` asks to move while the only other server is down: the switch retries
/// with the pool's backoff and moves, make-before-break, once the server answers.
async fn requested_switch_retries(via_pool: bool) {
    let label = if via_pool {
        "set_server_pool to a server not up yet"
    } else {
        "force_reconnect to a server not up yet"
    };
    let a = tether_testkit::NatsServer::start().unwrap();
    let port = tether_testkit::free_port();
    let later_url = format!("nats://127.0.0.1:{port}");
    let servers = if via_pool {
        vec![a.url()]
    } else {
        vec![a.url(), later_url.clone()]
    };
    let client = ConnectOptions::new()
        .no_randomize(true)
        .ignore_discovered_servers(true)
        .connect(servers)
        .await
        .unwrap();
    let mut events = client.events();
    if via_pool {
        client.set_server_pool(vec![later_url.clone()]).unwrap();
    } else {
        client.force_reconnect();
    }
    // It tries, fails, and tries again: more than the single attempt of old.
    for _ in 0..2 {
        match next_event(&mut events, |e| {
            matches!(
                e,
                EventKind::ReconnectFailed { .. }
                    | EventKind::Disconnected { .. }
                    | EventKind::Migrating { .. }
            )
        })
        .await
        {
            EventKind::ReconnectFailed { server, .. } => assert_eq!(server, later_url, "{label}"),
            other => panic!("{label}: expected failed attempts first, got {other:?}"),
        }
    }
    assert_eq!(client.connected_server(), Some(a.url()), "{label}");
    let _b = tether_testkit::NatsServer::start_with(
        tether_testkit::ServerConfig::default().with_port(port),
    )
    .unwrap();
    let migrating = next_event(&mut events, |e| {
        matches!(
            e,
            EventKind::Migrating { .. } | EventKind::Disconnected { .. }
        )
    })
    .await;
    let EventKind::Migrating { from, to, reason } = migrating else {
        panic!("{label}: expected Migrating, got {migrating:?}");
    };
    assert_eq!(
        (from.as_str(), to.as_str()),
        (a.url().as_str(), later_url.as_str())
    );
    let expected = if via_pool {
        tether::MigrateReason::ServerPool
    } else {
        tether::MigrateReason::Requested
    };
    assert_eq!(reason, expected, "{label}");
    let migrated = next_event(&mut events, |e| {
        matches!(
            e,
            EventKind::Migrated { .. } | EventKind::Disconnected { .. }
        )
    })
    .await;
    assert!(
        matches!(migrated, EventKind::Migrated { .. }),
        "{label}: {migrated:?}"
    );
    assert_eq!(client.connected_server(), Some(later_url), "{label}");
    assert_eq!(client.statistics().migrations, 1, "{label}");
    assert_eq!(client.status(), State::Connected, "{label}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b4_set_server_pool_retries_until_the_new_server_answers() {
    let _alone = ONE_AT_A_TIME.lock().await;
    requested_switch_retries(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b4_force_reconnect_retries_until_another_server_answers() {
    let _alone = ONE_AT_A_TIME.lock().await;
    requested_switch_retries(false).await;
}

// ===== a switch that reaches the lame-duck node under another address =====

/// nats-server closes its listener in lame duck mode, so a real node is refused under any
/// address. Two scripted peers that share one `server_id` stand for a node reachable under
/// a second address (a load balancer, a second listener): the first announces lame duck
/// mode; the second completes a handshake, and its INFO shows the same `server_id`; the
/// switch must leave it and go on to the real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_that_reaches_the_lame_duck_node_by_server_id_goes_on() {
    let _alone = ONE_AT_A_TIME.lock().await;
    use tether_testkit::{Hostile, HostilePeer, NatsServer};
    let ldm_info = b"INFO {\"server_id\":\"hostile\",\"version\":\"2.15.1\",\"proto\":1,\"headers\":true,\"max_payload\":1048576,\"ldm\":true}\r\n";
    // The handshake's two PINGs get their PONGs; the lame one then announces lame duck mode.
    let pong = |then: &[u8]| [b"PONG\r\n".as_slice(), then].concat();
    let lame = HostilePeer::start(Hostile::Dialogue(vec![
        ("PING".into(), pong(b"")),
        ("PING".into(), pong(ldm_info)),
    ]))
    .unwrap();
    let alias = HostilePeer::start(Hostile::Dialogue(vec![
        ("PING".into(), pong(b"")),
        ("PING".into(), pong(b"")),
    ]))
    .unwrap();
    let real = NatsServer::start().unwrap();
    let client = ConnectOptions::new()
        .no_randomize(true)
        .ignore_discovered_servers(true)
        .ldm_jitter(Duration::from_millis(1))
        .connect(vec![lame.url(), alias.url(), real.url()])
        .await
        .unwrap();
    let mut events = client.events();
    let mut failed_alias = false;
    loop {
        match next_event(&mut events, |e| {
            matches!(
                e,
                EventKind::ReconnectFailed { .. }
                    | EventKind::Migrating { .. }
                    | EventKind::Disconnected { .. }
            )
        })
        .await
        {
            EventKind::ReconnectFailed { server, error, .. } => {
                assert_eq!(server, alias.url());
                assert_eq!(error, tether::AttemptCause::LameDuckNode, "{error}");
                failed_alias = true;
            }
            EventKind::Migrating { to, .. } => {
                assert_eq!(
                    to,
                    real.url(),
                    "never onto the lame-duck node's other address"
                );
                break;
            }
            other => panic!("expected a switch, got {other:?}"),
        }
    }
    assert!(failed_alias, "the alias was tried and left");
    assert_eq!(client.connected_server(), Some(real.url()));
    assert_eq!(alias.accepted(), 1, "the alias was tried once");
}

/// A requested switch whose only target is the connected node under another address: the
/// switch must end, not retry for ever. `force_reconnect` then reconnects (there is no
/// other server); `set_server_pool` naming only that address keeps the link, since the
/// client is on a server of the new pool already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_with_only_the_connected_node_under_another_name_ends() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = tether_testkit::NatsServer::start().unwrap();
    let alias = format!("nats://localhost:{}", server.port());
    let options = || {
        ConnectOptions::new()
            .no_randomize(true)
            .ignore_discovered_servers(true)
    };
    // force_reconnect: the alias is left, then a plain reconnect.
    let client = options()
        .connect(vec![server.url(), alias.clone()])
        .await
        .unwrap();
    let mut events = client.events();
    client.force_reconnect();
    let EventKind::ReconnectFailed { server: tried, .. } = next_event(&mut events, |e| {
        matches!(e, EventKind::ReconnectFailed { .. })
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(tried, alias);
    next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await;
    assert_eq!(client.statistics().migrations, 0);
    // set_server_pool: the alias becomes the current server, the link stays.
    let client = options().connect(server.url()).await.unwrap();
    let mut events = client.events();
    client.set_server_pool(vec![alias.clone()]).unwrap();
    let moved = poll_until(T, || async {
        client.connected_server().as_deref() == Some(alias.as_str())
    })
    .await;
    assert!(moved, "still on {:?}", client.connected_server());
    client.flush().await.unwrap();
    let stats = client.statistics();
    assert_eq!((stats.migrations, stats.reconnects), (0, 0));
    let EventKind::ReconnectFailed { server: tried, .. } = next_event(&mut events, |e| {
        matches!(
            e,
            EventKind::ReconnectFailed { .. } | EventKind::Disconnected { .. }
        )
    })
    .await
    else {
        panic!("the link must stay");
    };
    assert_eq!(tried, alias);
}

/// The cut holds only plain subscriptions: a queue group gets one copy per message
/// anyway, so a queue subscription's deliveries pass on both links during a switch. One
/// client with a plain and a queue subscription on the same subject moves twice
/// (force_reconnect) while another node publishes 1 msg/ms: each subscription gets every
/// message, the plain one at most 5 times twice per switch, the queue one exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_queue_subscriptions_lose_nothing_across_switches() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cluster = cluster(GRACE_2S);
    let client = ConnectOptions::new()
        .no_randomize(true)
        .connect(vec![cluster.node(0).url(), cluster.node(1).url()])
        .await
        .unwrap();
    let publisher = ConnectOptions::new()
        .connect(cluster.node(2).url())
        .await
        .unwrap();
    let mut plain = client.subscribe("cut.test").await.unwrap();
    let mut queue = client.queue_subscribe("cut.test", "workers").await.unwrap();
    client.flush().await.unwrap();
    wait_interest(&publisher, &mut plain, "cut.test").await;
    // Drain the interest probes from the queue subscription too.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), queue.next()).await {}
    let mut events = client.events();
    let stop = Arc::new(AtomicBool::new(false));
    let pump = {
        let (publisher, stop) = (publisher.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PACE);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                publisher
                    .publish("cut.test", n.to_be_bytes().to_vec())
                    .await
                    .unwrap();
                n += 1;
            }
            publisher.flush().await.unwrap();
            n
        })
    };
    for _ in 0..2 {
        // in_msgs counts both subscriptions: some 300 messages before each switch.
        let base = client.statistics().in_msgs;
        tokio::time::timeout(T, async {
            while client.statistics().in_msgs < base + 600 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        client.force_reconnect();
        next_event(&mut events, is_migrated).await;
    }
    stop.store(true, Ordering::Relaxed);
    let published = pump.await.unwrap();
    let mut counts = Vec::new();
    for sub in [&mut plain, &mut queue] {
        let mut seen = std::collections::HashMap::<u64, usize>::new();
        while let Ok(Some(m)) = tokio::time::timeout(QUIET, sub.next()).await {
            if let Ok(b) = <[u8; 8]>::try_from(&m.payload[..]) {
                *seen.entry(u64::from_be_bytes(b)).or_default() += 1;
            }
            if seen.len() as u64 == published {
                break;
            }
        }
        let lost: Vec<u64> = (0..published).filter(|n| !seen.contains_key(n)).collect();
        let dups: usize = seen.values().map(|c| c - 1).sum();
        counts.push((lost, dups));
    }
    let (plain_lost, plain_dups) = &counts[0];
    let (queue_lost, queue_dups) = &counts[1];
    assert!(
        plain_lost.is_empty(),
        "plain subscription lost {plain_lost:?}"
    );
    assert!(
        queue_lost.is_empty(),
        "queue subscription lost {queue_lost:?}"
    );
    assert!(
        *plain_dups <= 2 * MAX_DUPLICATES_PER_SWITCH,
        "plain subscription: {plain_dups} duplicates over 2 switches"
    );
    assert_eq!(*queue_dups, 0, "a queue group gets one copy");
    assert_eq!(client.statistics().migrations, 2);
    assert!(published > 500, "only {published} published");
}
