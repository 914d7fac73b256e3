//! Output: the progress line of each run, the summary table and the JSON object.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::faulty::{faulty_details, faulty_json, faulty_table, Faulty};
use crate::jetstream::{JS_SUBJECT, PULL_EXPIRES, PULL_HEARTBEAT};
use crate::stats::median;
use crate::throughput::{
    p50, p90, p99, rate, raw_name, server_cpu, wakes_per_request, RunResult, Series, Side,
};
use crate::{Cli, Workload, PUB_SUBJECT};

pub(crate) fn describe(r: &RunResult) -> String {
    match r {
        RunResult::Throughput(t) => {
            let mut s = format!(
                "{:>12} msgs/s  ({} msgs in {:.3} s)",
                group(t.msgs_per_sec),
                t.received,
                t.secs
            );
            if let Some(c) = t.server_cpu {
                let _ = write!(s, "  nats-server CPU {:.0} %", c * 100.0);
            }
            if t.dropped > 0 {
                let _ = write!(s, "  DROPPED {}", t.dropped);
            }
            if !t.complete {
                s.push_str("  INCOMPLETE (stalled)");
            }
            s
        }
        RunResult::Latency(l) => {
            let mut s = format!(
                "p50 {:.1} µs  p90 {:.1} µs  p99 {:.1} µs  mean {:.1} µs",
                l.p50, l.p90, l.p99, l.mean
            );
            if let Some(w) = l.wakes_per_request {
                let _ = write!(s, "  {w:.2} wakes/request");
            }
            s
        }
    }
}

/// `1234567.8` as `1,234,568`.
pub(crate) fn group(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// The rows of the summary: (label, metric extractor, higher is better).
type Metric = fn(&RunResult) -> Option<f64>;

fn rows(w: Workload) -> Vec<(&'static str, Metric, bool)> {
    match w {
        Workload::Pub | Workload::Pubsub | Workload::JsPub | Workload::JsConsume => {
            vec![("msgs/s", rate, true)]
        }
        Workload::Reqrep => vec![
            ("p50 µs", p50, false),
            ("p90 µs", p90, false),
            ("p99 µs", p99, false),
        ],
        Workload::Reconnect | Workload::Memory | Workload::Conns | Workload::Subs => Vec::new(),
    }
}

/// `pub 16 B msgs/s` (`pub 16 B tls msgs/s` over TLS): the row label of one metric of
/// one series.
fn label(s: &Series, metric: &str) -> String {
    format!("{} {metric}", s.name())
}

/// The label of js-pub's core ceiling row, under its own row.
const CORE_ROW: &str = "core msgs/s";

/// Whether `s` has js-pub's core ceiling beside its own (and so a row for it).
fn has_core(s: &Series) -> bool {
    s.sides().contains(&Side::RawCore)
}

/// The width of the label column: 20, or the longest label when one is longer (TLS,
/// js-pub's core row).
fn label_width(all: &[Series]) -> usize {
    all.iter()
        .flat_map(|s| {
            let core = has_core(s).then(|| label(s, CORE_ROW));
            rows(s.workload)
                .into_iter()
                .map(move |(m, _, _)| label(s, m))
                .chain(core)
        })
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .max(20)
}

/// The JSON key of a series: `pub_16b`, `pub_16b_tls` over TLS, `js_pub_128b`.
fn key(s: &Series) -> String {
    format!(
        "{}_{}b{}",
        s.workload.name().replace('-', "_"),
        s.size,
        if s.tls { "_tls" } else { "" }
    )
}

/// The series run both in plaintext and over TLS (`--tls both`): (plaintext, TLS).
fn tls_pairs(all: &[Series]) -> impl Iterator<Item = (&Series, &Series)> {
    all.iter().filter(|s| s.tls).filter_map(|t| {
        all.iter()
            .find(|p| !p.tls && p.workload == t.workload && p.size == t.size)
            .map(|p| (p, t))
    })
}

fn fmt_value(v: f64, higher_better: bool) -> String {
    if higher_better {
        group(v)
    } else {
        format!("{v:.1}")
    }
}

fn drops(s: &Series, side: Side) -> (u64, usize) {
    s.of(side).iter().fold((0, 0), |(d, inc), r| match r {
        RunResult::Throughput(t) => (d + t.dropped, inc + usize::from(!t.complete)),
        RunResult::Latency(_) => (d, inc),
    })
}

/// The medians of one metric of one series: tether, async-nats and the raw side (NaN
/// when the workload has none).
pub(crate) fn medians(s: &Series, metric: Metric) -> (f64, f64, f64) {
    (
        median(&s.values(Side::Tether, metric)),
        median(&s.values(Side::AsyncNats, metric)),
        median(&s.values(Side::Raw, metric)),
    )
}

/// The headline metric of a series (pub and pubsub msgs/s, reqrep p50), whether higher
/// is better, and its unit.
pub(crate) fn headline(w: Workload) -> (Metric, bool, &'static str) {
    if w == Workload::Reqrep {
        (p50, false, "p50 latency µs")
    } else {
        (rate, true, "msgs/s")
    }
}

fn sizes(cli: &Cli) -> String {
    cli.size
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn table(
    cli: &Cli,
    url: &str,
    server_version: Option<&str>,
    all: &[Series],
    faulty: &Faulty,
    elapsed: Duration,
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\ntether vs async-nats — server {url}{}; {} measured rounds (+{} warm-up), \
         order rotating each round; the libraries run {}",
        server_version.map_or(String::new(), |v| format!(" (nats-server {v})")),
        cli.rounds,
        cli.warmup,
        runs_on(cli)
    );
    if all.is_empty() {
        let _ = writeln!(o, "total {:.1} s\n", elapsed.as_secs_f64());
    } else {
        let _ = writeln!(
            o,
            "pub/pubsub: {} msgs; reqrep: {} sequential requests; payload {} B; total {:.1} s",
            group(cli.msgs as f64),
            group(cli.requests as f64),
            sizes(cli),
            elapsed.as_secs_f64()
        );
        let _ = writeln!(
            o,
            "ceiling (pub): one plain socket writing pre-encoded PUBs; floor (reqrep): plain \
             sockets on both ends"
        );
        if all.iter().any(has_core) {
            let _ = writeln!(
                o,
                "ceiling (js-pub): one plain socket publishing pre-encoded PUBs with reply \
                 subjects to the same fresh stream, subject, payload and ack window, clock to \
                 the last ack; the `core` row under it: the pub ceiling at that size (raw core \
                 PUBs to {PUB_SUBJECT}, no JetStream), t/c there = tether / core ceiling"
            );
        }
        if all.iter().any(|s| s.workload.is_js()) {
            let _ = writeln!(o, "{}", js_text(cli, all));
        }
        let _ = writeln!(o);
    }
    if all.iter().any(|s| s.tls) {
        let _ = writeln!(
            o,
            "tls: the series marked tls run over TLS (the server's own certificate from a CA \
             made for the run, which both libraries and the responder trust); over TLS the \
             ceiling writes its chunks through rustls, and the floor (plaintext only) is \
             left out\n"
        );
    }
    let lw = label_width(all);
    if !all.is_empty() {
        let _ = writeln!(
            o,
            "{:<lw$} {:>14} {:>14} {:>8} {:>14} {:>8}   (median over rounds)",
            "workload", "tether", "async-nats", "t/a-n", "ceiling/floor", "t/c|f"
        );
    }
    for s in all {
        series_rows(&mut o, s, lw);
    }
    if !all.is_empty() {
        let _ = writeln!(
            o,
            "t/a-n = tether / async-nats; t/c|f = tether / ceiling (pub; js-pub: the raw \
             JetStream publish ceiling, its core row: the core one; js-consume: the raw \
             pull consumer) or floor (reqrep). \
             msgs/s: above 1 tether is faster; latency: below 1 tether is faster"
        );
    }
    tls_cost_table(&mut o, all);
    server_cpu_table(&mut o, all);
    wakes_table(&mut o, all);
    faulty_table(&mut o, faulty);
    faulty_details(&mut o, faulty);
    if !all.is_empty() {
        warnings(&mut o, all);
        per_round(&mut o, all);
    }
    o
}

/// The summary rows of one series: one per metric, and js-pub's core ceiling row.
fn series_rows(out: &mut String, s: &Series, lw: usize) {
    for (metric_name, metric, higher) in rows(s.workload) {
        let (t, a, r) = medians(s, metric);
        let (raw, vs_raw) = if s.has_raw() {
            (fmt_value(r, higher), format!("{:.3}", t / r))
        } else {
            ("—".to_owned(), "—".to_owned())
        };
        let _ = writeln!(
            out,
            "{:<lw$} {:>14} {:>14} {:>8.3} {raw:>14} {vs_raw:>8}   {}",
            label(s, metric_name),
            fmt_value(t, higher),
            fmt_value(a, higher),
            t / a,
            if higher {
                "higher is better"
            } else {
                "lower is better"
            }
        );
    }
    if has_core(s) {
        let t = median(&s.values(Side::Tether, rate));
        let c = median(&s.values(Side::RawCore, rate));
        let _ = writeln!(
            out,
            "{:<lw$} {:>14} {:>14} {:>8} {:>14} {:>8.3}   (the core publish ceiling)",
            label(s, CORE_ROW),
            "—",
            "—",
            "—",
            group(c),
            t / c,
        );
    }
}

/// The drops and stalls of pub and pubsub, or that there were none.
fn warnings(o: &mut String, all: &[Series]) {
    let _ = writeln!(o);
    let mut any = false;
    for s in all {
        if s.workload == Workload::Reqrep {
            continue;
        }
        for side in s.sides() {
            let (dropped, incomplete) = drops(s, side);
            if dropped > 0 || incomplete > 0 {
                any = true;
                let _ = writeln!(
                    o,
                    "WARNING: {} {}: {dropped} messages dropped, {incomplete} runs stalled",
                    s.name(),
                    side.name(s.workload)
                );
            }
        }
    }
    if !any {
        let _ = writeln!(o, "no client dropped messages");
    }
}

/// Every measured value, per series, metric and side.
fn per_round(o: &mut String, all: &[Series]) {
    let _ = writeln!(o, "\nper round (measured):");
    let lw = label_width(all);
    // 10, or js-pub's `core ceiling`.
    let sw = all
        .iter()
        .flat_map(|s| {
            s.sides()
                .into_iter()
                .map(|side| side.name(s.workload).len())
        })
        .fold(10, usize::max);
    for s in all {
        for (metric_name, metric, higher) in rows(s.workload) {
            for side in s.sides() {
                let vals: Vec<String> = s
                    .values(side, metric)
                    .iter()
                    .map(|&v| fmt_value(v, higher))
                    .collect();
                let _ = writeln!(
                    o,
                    "  {:<lw$} {:<sw$} {}",
                    label(s, metric_name),
                    side.name(s.workload),
                    vals.join("  ")
                );
            }
        }
    }
}

/// With `--tls both`: each library's TLS / plaintext of every metric's medians, from the
/// same run (the series alternated round by round).
fn tls_cost_table(o: &mut String, all: &[Series]) {
    let lw = label_width(all);
    let mut header = false;
    for (plain, tls) in tls_pairs(all) {
        if !header {
            header = true;
            let _ = writeln!(
                o,
                "\nTLS cost: TLS / plaintext of each library's medians, same run \
                 (msgs/s: below 1 TLS is slower; latency: above 1 TLS is slower)\n\
                 {:<lw$} {:>14} {:>14}",
                "workload", "tether", "async-nats"
            );
        }
        for (metric_name, metric, _) in rows(plain.workload) {
            let (tp, ap, _) = medians(plain, metric);
            let (tt, at, _) = medians(tls, metric);
            let _ = writeln!(
                o,
                "{:<lw$} {:>14.3} {:>14.3}",
                label(plain, metric_name),
                tt / tp,
                at / ap
            );
        }
    }
}

/// The nats-server's CPU share per throughput workload: near 100 % of one core, the
/// server's single reader per connection is the ceiling and the client is not the limit.
fn server_cpu_table(o: &mut String, all: &[Series]) {
    medians_section(
        o,
        all,
        |w| w != Workload::Reqrep,
        server_cpu,
        "nats-server CPU while measured (median, % of one core; it reads each connection on \
         one thread, so about 100 % is the most one connection can get)",
        "cpu",
        |v| format!("{:.0}%", v * 100.0),
    );
}

/// The thread hops of reqrep: how often a thread of the requesting end slept and was
/// woken per request (median). The floor's raw requester sleeps once, in its socket read;
/// an async client sleeps at least once more, where its runtime hands the reply from the
/// thread that read the socket to the caller's.
fn wakes_table(o: &mut String, all: &[Series]) {
    medians_section(
        o,
        all,
        |w| w == Workload::Reqrep,
        wakes_per_request,
        "wakes per request (median; times a thread of the requesting process slept and was \
         woken, from /proc: the thread hops of the request path; the floor without its \
         responder thread)",
        "wakes",
        |v| format!("{v:.2}"),
    );
}

/// A section of one extra metric: `title`, then per series of the workloads `keep`
/// selects, the medians of tether, async-nats and the raw side (when it has one), each
/// written by `text`. Series missing a library's value are left out.
fn medians_section(
    o: &mut String,
    all: &[Series],
    keep: fn(Workload) -> bool,
    metric: Metric,
    title: &str,
    name: &str,
    text: fn(f64) -> String,
) {
    let mut header = false;
    for s in all.iter().filter(|s| keep(s.workload)) {
        let (t, a, r) = medians(s, metric);
        if !t.is_finite() || !a.is_finite() {
            continue;
        }
        if !header {
            header = true;
            let _ = writeln!(o, "\n{title}");
        }
        let lw = label_width(all);
        let mut raw = if r.is_finite() {
            format!("{:>24}", text(r))
        } else {
            String::new()
        };
        let core = median(&s.values(Side::RawCore, metric));
        if core.is_finite() {
            let _ = write!(raw, "   (core ceiling {})", text(core));
        }
        let _ = writeln!(
            o,
            "{:<lw$} {:>14}{:>15}{raw}",
            label(s, name),
            text(t),
            text(a)
        );
    }
}

pub(crate) fn to_json(
    cli: &Cli,
    url: &str,
    server_version: Option<String>,
    all: &[Series],
    faulty: &Faulty,
    elapsed: Duration,
) -> Value {
    let mut workloads = serde_json::Map::new();
    for s in all {
        let mut w = serde_json::Map::new();
        w.insert("workload".to_owned(), json!(s.workload.name()));
        w.insert("size".to_owned(), json!(s.size));
        if s.tls {
            w.insert("tls".to_owned(), json!(true));
        }
        for side in s.sides() {
            w.insert(side.key().to_owned(), side_json(s, side));
        }
        let (metric, higher, unit) = headline(s.workload);
        let (t, a, r) = medians(s, metric);
        w.insert("ratio".to_owned(), json!(t / a));
        w.insert("ratio_of".to_owned(), json!(unit));
        w.insert(
            "better".to_owned(),
            json!(if higher { "higher" } else { "lower" }),
        );
        if s.has_raw() {
            w.insert("raw_is".to_owned(), json!(raw_name(s.workload)));
            w.insert("ratio_to_raw".to_owned(), json!(t / r));
        }
        if has_core(s) {
            let core = median(&s.values(Side::RawCore, metric));
            w.insert("ratio_to_raw_core".to_owned(), json!(t / core));
        }
        workloads.insert(key(s), Value::Object(w));
    }
    faulty_json(faulty, &mut workloads);
    let mut out = json!({
        "server": url,
        "nats_server_version": server_version,
        "rounds": cli.rounds,
        "warmup_rounds": cli.warmup,
        "msgs": cli.msgs,
        "sizes": cli.size,
        "requests": cli.requests,
        "pub_subject": PUB_SUBJECT,
        "order": "rotating: tether, async-nats, then the raw side(s) first in turn, one step per round",
        "libraries_run": runs_on(cli),
        "elapsed_secs": elapsed.as_secs_f64(),
        "workloads": workloads,
    });
    if let Some(cost) = tls_cost_json(all) {
        out["tls_cost"] = cost;
    }
    if all.iter().any(|s| s.workload.is_js()) {
        out["jetstream"] = json!({
            "subject": JS_SUBJECT,
            "storage": "memory",
            "sizes": cli.js_size,
            "js_pub_window": cli.js_window,
            "js_pub_ceiling": "raw (key raw, ratio_to_raw): one plain socket publishing \
                pre-encoded PUBs with reply subjects to the same fresh memory stream, subject, \
                payload and ack window, clock from the first write to the last ack",
            "js_pub_core_ceiling": "raw_core (ratio_to_raw_core): raw core PUBs of the same \
                size to the pub subject, same server, no JetStream",
            "js_consume_batch": cli.js_batch,
            "js_consume_expires_secs": PULL_EXPIRES.as_secs_f64(),
            "js_consume_idle_heartbeat_secs": PULL_HEARTBEAT.as_secs_f64(),
            "js_consume_consumer": "durable pull, one per client and round, deliver all, ack \
                explicit (each message acked as it arrives, not confirmed), server defaults \
                otherwise (max_ack_pending 1000, ack_wait 30 s)",
            "js_consume_ceiling": "raw (key raw, ratio_to_raw): one plain socket draining a \
                durable consumer of its own, made the same way, with pulls of the same shape, \
                the acks of each read in one write, clock from the first pull to the last \
                message",
            "description": js_text(cli, all),
        });
    }
    out
}

/// Where the libraries' runs ran (`--in-task`).
fn runs_on(cli: &Cli) -> &'static str {
    if cli.in_task {
        "in a task spawned on the runtime (--in-task)"
    } else {
        "on the main thread, blocking on the runtime"
    }
}

/// What the JetStream workloads of `all` did, in words.
fn js_text(cli: &Cli, all: &[Series]) -> String {
    let sizes = cli
        .js_size
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let msgs = group(cli.msgs as f64);
    let ran = |w: Workload| all.iter().any(|s| s.workload == w);
    let mut parts = Vec::new();
    if ran(Workload::JsPub) {
        parts.push(format!(
            "js-pub: {msgs} msgs of {sizes} B to {JS_SUBJECT}, captured by a memory stream \
             made fresh for each run, at most {} acks outstanding (the oldest awaited when \
             full), clock stopped at the last ack; its ceiling is a raw socket doing the same \
             (pre-encoded frames, as many as the window allows per write), and beside it the \
             core ceiling (raw PUBs of the same size, no JetStream).",
            cli.js_window
        ));
    }
    if ran(Workload::JsConsume) {
        parts.push(format!(
            "js-consume: {msgs} msgs of {sizes} B pre-filled into a memory stream; each \
             client drains it with a durable pull consumer of its own (deliver all, ack \
             explicit, each message acked as it arrives without waiting for a confirmation, \
             server defaults otherwise: max_ack_pending 1000), continuous pull with batch \
             {}, expires {PULL_EXPIRES:?}, idle heartbeat {PULL_HEARTBEAT:?}, clock from the \
             pull's start to the last message; its ceiling is a raw socket doing the \
             same (pulls of the same shape, the acks of each read in one write).",
            cli.js_batch
        ));
    }
    parts.join(" ")
}

/// With `--tls both`: per series key, each library's TLS / plaintext of the headline
/// medians (None without pairs).
fn tls_cost_json(all: &[Series]) -> Option<Value> {
    let mut per = serde_json::Map::new();
    for (plain, tls) in tls_pairs(all) {
        let (metric, higher, unit) = headline(plain.workload);
        let (tp, ap, _) = medians(plain, metric);
        let (tt, at, _) = medians(tls, metric);
        per.insert(
            key(plain),
            json!({
                "tether": tt / tp,
                "async_nats": at / ap,
                "ratio_of": unit,
                "tls_slower_when": if higher { "below 1" } else { "above 1" },
            }),
        );
    }
    (!per.is_empty()).then(|| {
        json!({
            "ratio_of": "TLS / plaintext of each library's medians, same run",
            "workloads": per,
        })
    })
}

/// One side of a series: the medians and every measured round.
fn side_json(s: &Series, side: Side) -> Value {
    let rounds: Vec<Value> = s
        .of(side)
        .iter()
        .map(|r| match r {
            RunResult::Throughput(t) => json!({
                "msgs_per_sec": t.msgs_per_sec,
                "received": t.received,
                "dropped": t.dropped,
                "secs": t.secs,
                "server_cpu": t.server_cpu,
                "complete": t.complete,
            }),
            RunResult::Latency(l) => json!({
                "p50_us": l.p50,
                "p90_us": l.p90,
                "p99_us": l.p99,
                "mean_us": l.mean,
                "wakes_per_request": l.wakes_per_request,
            }),
        })
        .collect();
    let median_obj = if s.workload == Workload::Reqrep {
        json!({
            "p50_us": median(&s.values(side, p50)),
            "p90_us": median(&s.values(side, p90)),
            "p99_us": median(&s.values(side, p99)),
            "wakes_per_request": Some(median(&s.values(side, wakes_per_request)))
                .filter(|v| v.is_finite()),
        })
    } else {
        let (dropped, incomplete) = drops(s, side);
        json!({
            "msgs_per_sec": median(&s.values(side, rate)),
            "server_cpu": Some(median(&s.values(side, server_cpu))).filter(|v| v.is_finite()),
            "dropped_total": dropped,
            "stalled_runs": incomplete,
        })
    };
    json!({ "median": median_obj, "rounds": rounds })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{table, to_json};
    use crate::faulty::Faulty;
    use crate::throughput::{RunResult, Series, Side, Throughput};
    use crate::{Cli, Workload};
    use clap::Parser as _;

    fn rate(msgs_per_sec: f64) -> RunResult {
        RunResult::Throughput(Throughput {
            msgs_per_sec,
            received: 1,
            dropped: 0,
            secs: 1.0,
            server_cpu: None,
            complete: true,
        })
    }

    /// pub 16 B in plaintext (with a ceiling) and over TLS, five rounds each.
    fn series(tether: [f64; 2], async_nats: [f64; 2]) -> Vec<Series> {
        [false, true]
            .into_iter()
            .enumerate()
            .map(|(i, tls)| {
                let mut s = Series::new(Workload::Pub, 16, tls);
                for _ in 0..5 {
                    s.push(Side::Tether, rate(tether[i]));
                    s.push(Side::AsyncNats, rate(async_nats[i]));
                    // The ceiling runs over TLS too (slower there).
                    s.push(Side::Raw, rate(if tls { 4e6 } else { 8e6 }));
                }
                s
            })
            .collect()
    }

    #[test]
    fn tls_series_have_a_tls_ceiling_and_the_cost_is_tls_over_plaintext() {
        let cli = Cli::parse_from(["tether-compare", "--tls", "both"]);
        let all = series([4e6, 2e6], [2e6, 1.5e6]);
        assert_eq!(all[0].sides(), [Side::Tether, Side::AsyncNats, Side::Raw]);
        assert_eq!(all[1].sides(), [Side::Tether, Side::AsyncNats, Side::Raw]);
        // reqrep over TLS has no floor (it speaks no TLS).
        let reqrep = Series::new(Workload::Reqrep, 16, true);
        assert_eq!(reqrep.sides(), [Side::Tether, Side::AsyncNats]);
        let text = table(
            &cli,
            "nats://a and tls://b",
            None,
            &all,
            &Faulty::default(),
            Duration::from_secs(1),
        );
        // Over TLS: tether / async-nats 2e6 / 1.5e6, tether / TLS ceiling 2e6 / 4e6.
        let tls_row = text
            .lines()
            .find(|l| l.starts_with("pub 16 B tls msgs/s "))
            .unwrap_or_else(|| panic!("no TLS row in {text}"));
        assert!(
            tls_row.contains(" 1.333 ") && tls_row.contains(" 0.500 "),
            "{tls_row}"
        );
        // TLS / plaintext: tether 2e6 / 4e6, async-nats 1.5e6 / 2e6.
        let cost = text.split("TLS cost").nth(1).expect("a TLS cost section");
        let row = cost
            .lines()
            .find(|l| l.starts_with("pub 16 B msgs/s "))
            .unwrap_or_else(|| panic!("no cost row in {cost}"));
        assert!(row.contains("0.500") && row.contains("0.750"), "{row}");

        let v = to_json(
            &cli,
            "x",
            None,
            &all,
            &Faulty::default(),
            Duration::from_secs(1),
        );
        assert_eq!(v["workloads"]["pub_16b_tls"]["tls"], true);
        assert_eq!(v["workloads"]["pub_16b_tls"]["ratio_to_raw"], 0.5);
        assert_eq!(v["workloads"]["pub_16b"]["ratio_to_raw"], 0.5);
        assert_eq!(v["tls_cost"]["workloads"]["pub_16b"]["tether"], 0.5);
        assert_eq!(v["tls_cost"]["workloads"]["pub_16b"]["async_nats"], 0.75);
    }

    #[test]
    fn plaintext_output_is_as_before() {
        let cli = Cli::parse_from(["tether-compare"]);
        let all: Vec<Series> = series([4e6, 0.0], [2e6, 0.0])
            .into_iter()
            .filter(|s| !s.tls)
            .collect();
        let text = table(
            &cli,
            "nats://a",
            None,
            &all,
            &Faulty::default(),
            Duration::from_secs(1),
        );
        assert!(!text.contains("tls") && !text.contains("TLS"), "{text}");
        // The label column is 20 wide, as it always was.
        assert!(
            text.lines()
                .any(|l| l.starts_with("pub 16 B msgs/s          ")),
            "{text}"
        );
        let v = to_json(
            &cli,
            "x",
            None,
            &all,
            &Faulty::default(),
            Duration::from_secs(1),
        );
        assert!(v.get("tls_cost").is_none(), "{v}");
        assert!(v["workloads"]["pub_16b"].get("tls").is_none(), "{v}");
    }

    /// js-consume's row with its own ceiling (tether / it: 2e5 / 2.5e5), and no core row.
    fn js_consume_has_its_own_ceiling(text: &str) {
        let consume = text
            .lines()
            .find(|l| l.starts_with("js-consume 128 B msgs/s "))
            .unwrap_or_else(|| panic!("no js-consume row in {text}"));
        assert!(
            consume.contains(" 2.000 ")
                && consume.contains(" 250,000 ")
                && consume.contains(" 0.800 "),
            "{consume}"
        );
        assert!(!text.contains("js-consume 128 B core"), "{text}");
        assert!(
            text.contains("its ceiling is a raw socket doing the same (pulls of the same shape"),
            "{text}"
        );
    }

    #[test]
    fn js_pub_has_its_own_ceiling_and_the_core_one_js_consume_its_own_and_says_how_they_ran() {
        let cli = Cli::parse_from(["tether-compare", "--workloads", "js-pub,js-consume"]);
        let mut js_pub = Series::new(Workload::JsPub, 128, false);
        let mut js_consume = Series::new(Workload::JsConsume, 128, false);
        for _ in 0..5 {
            js_pub.push(Side::Tether, rate(3e5));
            js_pub.push(Side::AsyncNats, rate(2e5));
            js_pub.push(Side::Raw, rate(6e5));
            js_pub.push(Side::RawCore, rate(6e6));
            js_consume.push(Side::Tether, rate(2e5));
            js_consume.push(Side::AsyncNats, rate(1e5));
            js_consume.push(Side::Raw, rate(2.5e5));
        }
        assert_eq!(
            js_pub.sides(),
            [Side::Tether, Side::AsyncNats, Side::Raw, Side::RawCore]
        );
        assert_eq!(
            js_consume.sides(),
            [Side::Tether, Side::AsyncNats, Side::Raw]
        );
        let all = vec![js_pub, js_consume];
        let text = table(
            &cli,
            "nats://a",
            None,
            &all,
            &Faulty::default(),
            Duration::from_secs(1),
        );
        let row = text
            .lines()
            .find(|l| l.starts_with("js-pub 128 B msgs/s "))
            .unwrap_or_else(|| panic!("no js-pub row in {text}"));
        // tether / async-nats 3e5 / 2e5, tether / JetStream ceiling 3e5 / 6e5.
        assert!(
            row.contains(" 1.500 ") && row.contains(" 600,000 ") && row.contains(" 0.500 "),
            "{row}"
        );
        // The core ceiling on its own row under it: tether / core 3e5 / 6e6.
        let core = text
            .lines()
            .find(|l| l.starts_with("js-pub 128 B core msgs/s "))
            .unwrap_or_else(|| panic!("no core row in {text}"));
        assert!(
            core.contains(" 6,000,000 ") && core.contains(" 0.050 "),
            "{core}"
        );
        js_consume_has_its_own_ceiling(&text);
        assert!(
            text.contains("at most 256 acks outstanding")
                && text.contains("batch 500")
                && text.contains("ceiling (js-pub): one plain socket"),
            "{text}"
        );
        // Both ceilings in the per-round lines.
        assert!(
            text.lines()
                .any(|l| l.contains(" js ceiling ") && l.contains("600,000"))
                && text
                    .lines()
                    .any(|l| l.contains(" core ceiling ") && l.contains("6,000,000")),
            "{text}"
        );
        let v = to_json(
            &cli,
            "x",
            None,
            &all,
            &Faulty::default(),
            Duration::from_secs(1),
        );
        assert_eq!(
            v["libraries_run"],
            "on the main thread, blocking on the runtime"
        );
        assert_eq!(v["workloads"]["js_pub_128b"]["ratio"], 1.5);
        assert_eq!(v["workloads"]["js_pub_128b"]["ratio_to_raw"], 0.5);
        assert_eq!(v["workloads"]["js_pub_128b"]["ratio_to_raw_core"], 0.05);
        assert_eq!(v["workloads"]["js_pub_128b"]["raw_is"], "js ceiling");
        assert_eq!(
            v["workloads"]["js_pub_128b"]["raw_core"]["median"]["msgs_per_sec"],
            6e6
        );
        let consume = &v["workloads"]["js_consume_128b"];
        assert!(consume.get("ratio_to_raw_core").is_none(), "{v}");
        assert_eq!(
            (
                &consume["ratio"],
                &consume["ratio_to_raw"],
                &consume["raw_is"]
            ),
            (
                &serde_json::json!(2.0),
                &serde_json::json!(0.8),
                &serde_json::json!("js ceiling")
            )
        );
        assert_eq!(v["jetstream"]["js_pub_window"], 256);
        assert_eq!(v["jetstream"]["subject"], "bench.js");
    }
}
