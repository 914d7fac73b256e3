//! Output: the progress line of each run, the summary table and the JSON object.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::faulty::{faulty_details, faulty_json, faulty_table, Faulty};
use crate::stats::median;
use crate::throughput::{p50, p90, p99, rate, server_cpu, RunResult, Series};
use crate::{Cli, Lib, Workload};

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
        RunResult::Latency(l) => format!(
            "p50 {:.1} µs  p90 {:.1} µs  p99 {:.1} µs  mean {:.1} µs",
            l.p50, l.p90, l.p99, l.mean
        ),
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
        Workload::Pub => vec![("pub          msgs/s", rate, true)],
        Workload::Pubsub => vec![("pubsub       msgs/s", rate, true)],
        Workload::Reqrep => vec![
            ("reqrep p50   µs", p50, false),
            ("reqrep p90   µs", p90, false),
            ("reqrep p99   µs", p99, false),
        ],
        Workload::Reconnect | Workload::Memory | Workload::Conns | Workload::Subs => Vec::new(),
    }
}

fn fmt_value(v: f64, higher_better: bool) -> String {
    if higher_better {
        group(v)
    } else {
        format!("{v:.1}")
    }
}

fn drops(s: &Series, lib: Lib) -> (u64, usize) {
    s.of(lib).iter().fold((0, 0), |(d, inc), r| match r {
        RunResult::Throughput(t) => (d + t.dropped, inc + usize::from(!t.complete)),
        RunResult::Latency(_) => (d, inc),
    })
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
         alternating order",
        server_version.map_or(String::new(), |v| format!(" (nats-server {v})")),
        cli.rounds,
        cli.warmup
    );
    if all.is_empty() {
        let _ = writeln!(o, "total {:.1} s\n", elapsed.as_secs_f64());
    } else {
        let _ = writeln!(
            o,
            "pub/pubsub: {} msgs of {} B; reqrep: {} sequential requests of {} B; total {:.1} s\n",
            group(cli.msgs as f64),
            cli.size,
            group(cli.requests as f64),
            cli.size,
            elapsed.as_secs_f64()
        );
    }
    let _ = writeln!(
        o,
        "{:<20} {:>14} {:>14} {:>8}   (median over rounds; ratio = tether/async-nats)",
        "workload", "tether", "async-nats", "ratio"
    );
    for s in all {
        for (label, metric, higher) in rows(s.workload) {
            let t = median(&s.values(Lib::Tether, metric));
            let a = median(&s.values(Lib::AsyncNats, metric));
            let _ = writeln!(
                o,
                "{label:<20} {:>14} {:>14} {:>8.3}   {}",
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
    }
    server_cpu_table(&mut o, all);
    faulty_table(&mut o, faulty);
    faulty_details(&mut o, faulty);
    if all.is_empty() {
        return o;
    }
    let _ = writeln!(o);
    let mut any = false;
    for s in all {
        if s.workload == Workload::Reqrep {
            continue;
        }
        for lib in [Lib::Tether, Lib::AsyncNats] {
            let (dropped, incomplete) = drops(s, lib);
            if dropped > 0 || incomplete > 0 {
                any = true;
                let _ = writeln!(
                    o,
                    "WARNING: {} {}: {dropped} messages dropped, {incomplete} runs stalled",
                    s.workload.name(),
                    lib.name()
                );
            }
        }
    }
    if !any {
        let _ = writeln!(o, "no client dropped messages");
    }
    let _ = writeln!(o, "\nper round (measured):");
    for s in all {
        for (label, metric, higher) in rows(s.workload) {
            for lib in [Lib::Tether, Lib::AsyncNats] {
                let vals: Vec<String> = s
                    .values(lib, metric)
                    .iter()
                    .map(|&v| fmt_value(v, higher))
                    .collect();
                let _ = writeln!(o, "  {label:<20} {:<10} {}", lib.name(), vals.join("  "));
            }
        }
    }
    o
}

/// The nats-server's CPU share per throughput workload: near 100 % of one core, the
/// server's single reader per connection is the ceiling and the client is not the limit.
fn server_cpu_table(o: &mut String, all: &[Series]) {
    let mut header = false;
    for s in all.iter().filter(|s| s.workload != Workload::Reqrep) {
        let t = median(&s.values(Lib::Tether, server_cpu));
        let a = median(&s.values(Lib::AsyncNats, server_cpu));
        if !t.is_finite() || !a.is_finite() {
            continue;
        }
        if !header {
            header = true;
            let _ = writeln!(
                o,
                "\nnats-server CPU while measured (median, % of one core; it reads each \
                 connection on one thread, so about 100 % is the most one connection can get)"
            );
        }
        let _ = writeln!(
            o,
            "{:<20} {:>13.0}% {:>13.0}%",
            format!("{:<12} cpu", s.workload.name()),
            t * 100.0,
            a * 100.0
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
        for lib in [Lib::Tether, Lib::AsyncNats] {
            let rounds: Vec<Value> = s
                .of(lib)
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
                    }),
                })
                .collect();
            let median_obj = if s.workload == Workload::Reqrep {
                json!({
                    "p50_us": median(&s.values(lib, p50)),
                    "p90_us": median(&s.values(lib, p90)),
                    "p99_us": median(&s.values(lib, p99)),
                })
            } else {
                let (dropped, incomplete) = drops(s, lib);
                json!({
                    "msgs_per_sec": median(&s.values(lib, rate)),
                    "server_cpu": Some(median(&s.values(lib, server_cpu))).filter(|v| v.is_finite()),
                    "dropped_total": dropped,
                    "stalled_runs": incomplete,
                })
            };
            w.insert(
                lib.key().to_owned(),
                json!({ "median": median_obj, "rounds": rounds }),
            );
        }
        let (metric, unit, better): (Metric, &str, &str) = if s.workload == Workload::Reqrep {
            (p50, "p50 latency µs", "lower")
        } else {
            (rate, "msgs/s", "higher")
        };
        let ratio =
            median(&s.values(Lib::Tether, metric)) / median(&s.values(Lib::AsyncNats, metric));
        w.insert("ratio".to_owned(), json!(ratio));
        w.insert("ratio_of".to_owned(), json!(unit));
        w.insert("better".to_owned(), json!(better));
        workloads.insert(s.workload.name().to_owned(), Value::Object(w));
    }
    faulty_json(faulty, &mut workloads);
    json!({
        "server": url,
        "nats_server_version": server_version,
        "rounds": cli.rounds,
        "warmup_rounds": cli.warmup,
        "msgs": cli.msgs,
        "size": cli.size,
        "requests": cli.requests,
        "order": "alternating: tether first in even rounds, async-nats first in odd rounds",
        "elapsed_secs": elapsed.as_secs_f64(),
        "workloads": workloads,
    })
}
