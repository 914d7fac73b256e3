//! Runs the built `tether` binary against real nats-servers started by tether-testkit.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tether_testkit::{closed_port, wait_for, NatsServer, ServerConfig, TlsCerts};

const BIN: &str = env!("CARGO_BIN_EXE_tether");
const DEADLINE: Duration = Duration::from_secs(20);

/// The environment variables of the global options (and RUST_LOG): no test inherits them.
const ENV_VARS: [&str; 11] = [
    "NATS_URL",
    "NATS_CREDS",
    "NATS_NKEY",
    "NATS_TOKEN",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_CA",
    "NATS_CERT",
    "NATS_KEY",
    "NATS_TLS_FIRST",
    "RUST_LOG",
];

/// `tether` with none of [`ENV_VARS`] from the environment.
fn bare() -> Command {
    let mut c = Command::new(BIN);
    for v in ENV_VARS {
        c.env_remove(v);
    }
    c
}

/// `tether --server URL ...` with none of [`ENV_VARS`] from the environment.
fn tether(server: &str) -> Command {
    let mut c = bare();
    c.args(["--server", server]);
    c
}

/// A command running in the background; killed if the test fails before it exits.
struct Background(Option<Child>);

impl Background {
    fn spawn(mut cmd: Command) -> Self {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tether");
        Self(Some(child))
    }

    /// Waits (with a deadline) for the process to exit and returns its output.
    fn output(mut self) -> Output {
        let mut child = self.0.take().expect("child");
        let exited = wait_for(DEADLINE, || matches!(child.try_wait(), Ok(Some(_))));
        if !exited {
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("collect output");
        assert!(
            exited,
            "background tether did not exit within {DEADLINE:?}; stdout {:?}, stderr {:?}",
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Subscriptions the server holds for all client connections, from `/connz`.
fn subscriptions(server: &NatsServer) -> u64 {
    server
        .connz()
        .ok()
        .and_then(|v| {
            v["connections"]
                .as_array()
                .map(|cs| cs.iter().filter_map(|c| c["subscriptions"].as_u64()).sum())
        })
        .unwrap_or(0)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run tether")
}

/// The stderr of a run that failed as the CLI should: exit status 1, one line.
fn one_line_error(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "more than one line: {err}"
    );
    err
}

#[test]
fn pub_reaches_sub() {
    let server = NatsServer::start().expect("start nats-server");
    let mut sub = tether(&server.url());
    sub.args(["sub", "cli.greet", "--count", "1"]);
    let sub = Background::spawn(sub);
    assert!(
        wait_for(DEADLINE, || subscriptions(&server) >= 1),
        "the subscriber never subscribed"
    );

    let published = run(tether(&server.url()).args(["pub", "cli.greet", "hello there"]));
    assert!(
        published.status.success(),
        "pub failed: {}",
        text(&published.stderr)
    );

    let out = sub.output();
    assert!(out.status.success(), "sub failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "[#1] cli.greet: hello there\n");
}

#[test]
fn creds_file_authenticates_pub_and_sub() {
    let op = tether_testkit::Operator::new();
    let server = NatsServer::start_with(tether_testkit::ServerConfig::default().with_operator(&op))
        .expect("start nats-server");
    let creds = server.dir().join("cli.creds");
    op.user("cli", None).write_to(&creds).unwrap();
    let creds = creds.to_str().unwrap();
    let mut sub = tether(&server.url());
    sub.args(["sub", "cli.auth", "--count", "1", "--creds", creds]);
    let sub = Background::spawn(sub);
    assert!(
        wait_for(DEADLINE, || subscriptions(&server) >= 1),
        "the subscriber never subscribed"
    );
    let published = run(tether(&server.url()).args(["pub", "cli.auth", "hi", "--creds", creds]));
    assert!(
        published.status.success(),
        "pub failed: {}",
        text(&published.stderr)
    );
    let out = sub.output();
    assert_eq!(text(&out.stdout), "[#1] cli.auth: hi\n");

    // Without credentials: refused, one line, saying why.
    let out = run(tether(&server.url()).args(["pub", "cli.auth", "hi"]));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.trim_end().lines().count() == 1 && err.contains("Authorization Violation"),
        "{err}"
    );
}

#[test]
fn req_gets_the_reply() {
    let server = NatsServer::start().expect("start nats-server");
    let mut reply = tether(&server.url());
    reply.args(["reply", "cli.svc", "pong", "--count", "1"]);
    let reply = Background::spawn(reply);
    assert!(
        wait_for(DEADLINE, || subscriptions(&server) >= 1),
        "the responder never subscribed"
    );

    let req = run(tether(&server.url()).args(["req", "cli.svc", "ping", "--timeout", "5s"]));
    assert!(req.status.success(), "req failed: {}", text(&req.stderr));
    assert_eq!(text(&req.stdout), "pong\n");

    let out = reply.output();
    assert!(out.status.success(), "reply failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "[#1] cli.svc: ping\n");

    // Nobody listens any more: no responders, at once, as one line.
    let none = run(tether(&server.url()).args(["req", "cli.svc", "ping"]));
    assert_eq!(none.status.code(), Some(1));
    let err = text(&none.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("no responders"),
        "{err}"
    );
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "bench failed: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bench --json printed {:?}: {e}", text(&out.stdout)))
}

fn assert_rates(v: &serde_json::Value, mode: &str, msgs: u64) {
    assert_eq!(v["mode"], mode, "{v}");
    assert_eq!(v["msgs"], msgs, "{v}");
    assert_eq!(v["size"], 16, "{v}");
    for field in ["secs", "msgs_per_sec", "mb_per_sec"] {
        assert!(v[field].as_f64().is_some_and(|x| x > 0.0), "{field} in {v}");
    }
}

#[test]
fn bench_pub_and_pubsub_json() {
    let server = NatsServer::start().expect("start nats-server");
    let v = json(&run(
        tether(&server.url()).args(["bench", "pub", "--msgs", "20000", "--json"])
    ));
    assert_rates(&v, "pub", 20_000);

    let v = json(&run(
        tether(&server.url()).args(["bench", "pubsub", "--msgs", "20000", "--json"])
    ));
    assert_rates(&v, "pubsub", 20_000);
    assert_eq!(v["received"], 20_000, "{v}");
}

#[test]
fn bench_compares_confirm_intervals_in_interleaved_rounds() {
    let server = NatsServer::start().expect("start nats-server");
    let url = server.url();
    compared_json(&url);
    compared_summary(&url);
    one_confirm_interval(&url);
    confirm_interval_refused(&url);
}

/// Two values in two rounds, as JSON: a summary per value and every run, interleaved.
fn compared_json(url: &str) {
    let v = json(&run(tether(url).args([
        "bench",
        "pub",
        "--msgs",
        "2000",
        "--confirm-interval",
        "20ms,1s",
        "--rounds",
        "2",
        "--json",
    ])));
    assert_eq!(
        (v["mode"].as_str(), v["rounds"].as_u64()),
        (Some("pub"), Some(2)),
        "{v}"
    );
    let cadences = v["cadences"].as_array().expect("cadences");
    let ms: Vec<f64> = cadences
        .iter()
        .map(|c| {
            c["confirm_interval_ms"]
                .as_f64()
                .expect("confirm_interval_ms")
        })
        .collect();
    assert_eq!(ms, [20.0, 1000.0], "{v}");
    for c in cadences {
        assert_eq!(c["msgs_per_sec"].as_array().map(Vec::len), Some(2), "{c}");
        assert!(
            c["median_msgs_per_sec"].as_f64().is_some_and(|x| x > 0.0),
            "{c}"
        );
    }
    for field in ["ratio", "paired_ratio"] {
        assert_eq!(cadences[0][field].as_f64(), Some(1.0), "{field} in {v}");
        assert!(
            cadences[1][field].as_f64().is_some_and(|x| x > 0.0),
            "{field} in {v}"
        );
    }
    // Interleaved: round 1 runs 20ms then 1s, round 2 the other way round.
    let order: Vec<(u64, f64)> = v["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| {
            assert_rates(r, "pub", 2000);
            (
                r["round"].as_u64().unwrap(),
                r["confirm_interval_ms"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(order, [(1, 20.0), (1, 1000.0), (2, 1000.0), (2, 20.0)]);
}

/// The human summary of two values names both, the second with its ratio to the first.
fn compared_summary(url: &str) {
    let out = run(tether(url).args([
        "bench",
        "pub",
        "-n",
        "2000",
        "--confirm-interval",
        "20ms,1s",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(
        summary.contains("5 rounds per confirm_interval"),
        "{summary}"
    );
    assert!(
        summary.contains("confirm_interval 20ms: median "),
        "{summary}"
    );
    assert!(
        summary.contains("confirm_interval 1s: median "),
        "{summary}"
    );
    assert!(
        summary.contains("; ratio ") && summary.contains(" to 20ms (median of the per-round"),
        "{summary}"
    );
}

/// One value: the usual report, which names it.
fn one_confirm_interval(url: &str) {
    let v = json(&run(tether(url).args([
        "bench",
        "pub",
        "-n",
        "2000",
        "--confirm-interval",
        "5ms",
        "--json",
    ])));
    assert_rates(&v, "pub", 2000);
    assert_eq!(v["confirm_interval_ms"].as_f64(), Some(5.0), "{v}");
    assert!(v.get("cadences").is_none(), "{v}");
}

/// Values out of range (and no rounds), refused before anything connects.
fn confirm_interval_refused(url: &str) {
    for (args, msg) in [
        (
            ["--confirm-interval", "0s"],
            "error: --confirm-interval: 0ns is out of range",
        ),
        (["--rounds", "0"], "error: --rounds must be at least 1"),
    ] {
        let out = run(tether(url).args(["bench", "pub"]).args(args));
        let err = one_line_error(&out);
        assert!(err.starts_with(msg), "{err}");
    }
    let out = run(tether(url).args(["bench", "pub", "--confirm-interval", "20xs"]));
    assert_eq!(out.status.code(), Some(2), "a usage error: {out:?}");
}

#[test]
fn bench_reqrep_starts_its_own_server() {
    let out = run(Command::new(BIN)
        .env_remove("NATS_URL")
        .env_remove("RUST_LOG")
        .args(["bench", "reqrep", "--msgs", "200", "--json"]));
    let v = json(&out);
    assert_rates(&v, "reqrep", 200);
    let (p50, p90, p99) = (
        v["p50_us"].as_f64().expect("p50_us"),
        v["p90_us"].as_f64().expect("p90_us"),
        v["p99_us"].as_f64().expect("p99_us"),
    );
    assert!(0.0 < p50 && p50 <= p90 && p90 <= p99, "{v}");
    assert!(
        text(&out.stderr)
            .contains("bench: no --server given; started a local nats-server on nats://127.0.0.1:"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn connection_failure_is_one_line() {
    let url = format!("nats://127.0.0.1:{}", closed_port());
    let out = run(tether(&url).args(["pub", "cli.x", "y"]));
    let err = one_line_error(&out);
    assert!(
        err.starts_with("error: could not connect to any server: ") && err.contains(&url),
        "{err}"
    );
    assert!(err.contains("refused"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("Error:"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bench_publishes_to_the_subject_given() {
    const SUBJECT: &str = "cli.bench.given";
    // pub and pubsub send 300 messages each; reqrep 50 requests and one warm-up.
    const EXPECTED: usize = 300 + 300 + 50 + 1;
    let server = NatsServer::start().expect("start nats-server");
    let mut sub = tether(&server.url());
    sub.args(["sub", SUBJECT, "--count", &EXPECTED.to_string()]);
    let sub = Background::spawn(sub);
    assert!(
        wait_for(DEADLINE, || subscriptions(&server) >= 1),
        "the subscriber never subscribed"
    );

    for (mode, msgs) in [("pub", "300"), ("pubsub", "300"), ("reqrep", "50")] {
        let v = json(&run(tether(&server.url()).args([
            "bench",
            mode,
            "--subject",
            SUBJECT,
            "--msgs",
            msgs,
            "--json",
        ])));
        assert_eq!(v["mode"], mode, "{v}");
        assert_eq!(v["subject"], SUBJECT, "{v}");
        if mode == "pubsub" {
            assert_eq!(v["received"], 300, "{v}");
        }
    }

    // Every message (and nothing else, such as an end marker) went to the subject.
    let out = sub.output();
    assert!(out.status.success(), "sub failed: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), EXPECTED, "{stdout}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(
            *line,
            format!("[#{}] {SUBJECT}: {}", i + 1, "x".repeat(16)),
            "line {}",
            i + 1
        );
    }
}

#[test]
fn bench_refuses_an_invalid_subject() {
    // A closed port: the subject must be refused before anything connects.
    let url = format!("nats://127.0.0.1:{}", closed_port());
    for (mode, subject, reason) in [
        ("pub", "bench.*", "wildcard token"),
        ("pubsub", "bench.>", "wildcard token"),
        ("reqrep", "bench..x", "empty token"),
    ] {
        let out = run(tether(&url).args(["bench", mode, "--subject", subject, "--json"]));
        let err = one_line_error(&out);
        assert!(
            err.starts_with(&format!(
                "error: --subject: invalid publish subject {subject:?}: {reason}"
            )),
            "{err}"
        );
        assert!(
            out.stdout.is_empty(),
            "{mode} printed {:?}",
            text(&out.stdout)
        );
    }
}

/// A count in a chaos report.
fn count(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} is not a count in {v}"))
}

/// `tether chaos ARGS... --json` against the nats-server(s) chaos starts itself: its
/// output and its report (printed whether the invariant held or not), checked for what
/// holds in every mode.
fn chaos_report(args: &[&str]) -> (Output, serde_json::Value) {
    let out = run(bare().arg("chaos").args(args).arg("--json"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "chaos {args:?} --json printed {:?} ({e}); stderr {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    let n = count;
    let per = v["per_outage"].as_array().expect("per_outage");
    assert_eq!(per.len() as u64, n(&v, "outages"), "{v}");
    for o in per {
        assert!(n(o, "lost") <= n(o, "published"), "{o}");
        assert!(
            n(o, "delivered") <= n(o, "published") + n(o, "refused"),
            "{o}"
        );
        assert!(n(o, "lost_undetectable") <= n(o, "lost"), "{o}");
    }
    // lost = published - delivered, where delivered also counts messages whose publish
    // returned an error and that arrived all the same.
    let (published, delivered, lost) = (n(&v, "published"), n(&v, "delivered"), n(&v, "lost"));
    let delivered_refused = n(&v, "delivered_refused");
    assert!(delivered_refused <= n(&v, "errors"), "{v}");
    assert!(published >= delivered - delivered_refused, "{v}");
    assert_eq!(lost, published - (delivered - delivered_refused), "{v}");
    assert!(n(&v, "lost_undetectable") <= lost, "{v}");
    // The outages' windows are part of the run (the totals add the warm-up).
    for k in [
        "published",
        "delivered",
        "lost",
        "duplicates",
        "unconfirmed",
        "removed",
        "disconnects",
        "subscriber_disconnects",
    ] {
        let sum: u64 = per.iter().map(|o| n(o, k)).sum();
        assert!(
            sum <= n(&v, k),
            "sum of per_outage {k} {sum} > total in {v}"
        );
    }
    for k in ["migrations", "subscriber_migrations"] {
        for m in [
            "migrating",
            "migrated",
            "unconfirmed_msgs",
            "unconfirmed_bytes",
        ] {
            let sum: u64 = per.iter().map(|o| n(&o[k], m)).sum();
            assert!(
                sum <= n(&v[k], m),
                "sum of per_outage {k}.{m} {sum} > total in {v}"
            );
        }
    }
    // Event sums agree with the client's own counters when no event was dropped.
    if n(&v, "events_lagged") == 0 {
        assert_eq!(n(&v, "stats_unconfirmed"), n(&v, "unconfirmed"), "{v}");
        assert_eq!(n(&v, "stats_removed"), n(&v, "removed"), "{v}");
        assert_eq!(
            n(&v, "stats_migrations"),
            n(&v["migrations"], "migrated"),
            "{v}"
        );
        assert_eq!(
            n(&v, "subscriber_stats_migrations"),
            n(&v["subscriber_migrations"], "migrated"),
            "{v}"
        );
    }
    (out, v)
}

/// `tether chaos --outages 2 --outage-ms 300 --rate 500 EXTRA...` with the default
/// fault (kill): it succeeds, and every outage was a disconnect and a reconnect.
fn chaos(extra: &[&str]) -> serde_json::Value {
    chaos_with_output(extra).1
}

/// [`chaos`], with the output too.
fn chaos_with_output(extra: &[&str]) -> (Output, serde_json::Value) {
    let mut args = vec!["--outages", "2", "--outage-ms", "300", "--rate", "500"];
    args.extend_from_slice(extra);
    let (out, v) = chaos_report(&args);
    assert!(
        out.status.success(),
        "chaos {extra:?} failed ({}): {}\n{}",
        out.status,
        text(&out.stderr),
        text(&out.stdout)
    );
    let n = count;
    assert_eq!(v["fault"], "kill", "{v}");
    assert_eq!(v["outages"], 2, "{v}");
    assert_eq!(v["invariant_ok"], true, "{v}");
    assert_eq!(n(&v, "not_reconnected"), 0, "{v}");
    assert_eq!(v["downtime_ms"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["reconnect_ms"].as_array().map(Vec::len), Some(2), "{v}");
    for o in v["per_outage"].as_array().expect("per_outage") {
        // Every outage: the client saw the link go and reconnected (a number, not null).
        assert!(n(o, "disconnects") >= 1, "{o}");
        assert!(
            o["reconnect_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{o}"
        );
        assert!(o["downtime_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{o}");
        assert_eq!(o["invariant_ok"], true, "{o}");
        assert!(n(o, "published") > 0, "{o}");
        // A kill is no planned switch.
        assert_eq!(n(&o["migrations"], "migrating"), 0, "{o}");
    }
    // The rule, recomputed from the counts.
    let undetectable = n(&v, "lost_undetectable");
    assert!(
        n(&v, "lost") - undetectable
            <= n(&v, "unconfirmed") + n(&v, "client_dropped") + n(&v, "removed"),
        "{v}"
    );
    (out, v)
}

#[test]
fn chaos_kill_reports_every_loss() {
    // The run drawn too: a band per outage (the plot's own tests check the rest).
    let dir = std::env::temp_dir().join(format!("tether-cli-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    let plot = dir.join("chaos.svg");
    let v = chaos(&["--plot", plot.to_str().expect("a UTF-8 temp path")]);
    let svg = std::fs::read_to_string(&plot).expect("the plot was written");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(svg.starts_with("<svg "), "{svg}");
    let bands = svg
        .lines()
        .filter(|l| l.starts_with("<rect ") && l.contains("opacity=\"0.13\""))
        .count();
    assert_eq!(bands, 2, "{svg}");
    assert_eq!(v["two_clients"], false, "{v}");
    assert_eq!(
        v["invariant"], "lost <= unconfirmed + client_dropped + removed",
        "{v}"
    );
    // One client: nothing is undetectable, nothing is sent twice without resending.
    assert_eq!(v["lost_undetectable"], 0, "{v}");
    assert_eq!(v["subscriber_disconnects"], 0, "{v}");
    assert_eq!(v["duplicates"], 0, "{v}");
}

#[test]
fn chaos_two_clients_checks_the_invariant() {
    let v = chaos(&["--two-clients"]);
    assert_eq!(v["two_clients"], true, "{v}");
    assert_eq!(
        v["invariant"], "lost - lost_undetectable <= unconfirmed + client_dropped + removed",
        "{v}"
    );
    // Killing the one server takes the subscriber's link too, every time; the publisher
    // buffers through the outage, so messages were published while the subscriber was
    // away, and only those may be lost undetected.
    for o in v["per_outage"].as_array().expect("per_outage") {
        assert!(o["subscriber_disconnects"].as_u64() >= Some(1), "{o}");
        assert!(o["subscriber_outage_msgs"].as_u64() > Some(0), "{o}");
        assert!(
            o["lost_undetectable"].as_u64() <= o["subscriber_outage_msgs"].as_u64(),
            "{o}"
        );
    }
    assert!(v["subscriber_disconnects"].as_u64() >= Some(2), "{v}");
}

/// Issue 11: a rolling lame-duck restart with library defaults, publisher and subscriber
/// on two clients at 1 msg/ms. Each fault puts the publisher's node in lame duck mode,
/// waits for it to exit and restarts it, so three faults move the publisher across the
/// nodes. Nothing may be lost, no link may drop (the clients move before the 2 s grace
/// period ends), every fault is a planned switch of the publisher, and the report counts
/// the duplicates (the old link's subscriptions overlap the new ones for a while).
#[test]
fn chaos_ldm_rolls_without_loss_or_disconnect() {
    const OUTAGES: u64 = 3;
    let (out, v) = chaos_report(&[
        "--cluster",
        "--fault",
        "ldm",
        "--two-clients",
        "--outages",
        &OUTAGES.to_string(),
        "--outage-ms",
        "300",
        "--rate",
        "1000",
    ]);
    let n = count;
    let per = v["per_outage"].as_array().expect("per_outage");
    let column = |k: &str| per.iter().map(|o| n(o, k)).collect::<Vec<_>>();
    let switches = |k: &str| {
        per.iter()
            .map(|o| format!("{}/{}", n(&o[k], "migrating"), n(&o[k], "migrated")))
            .collect::<Vec<_>>()
    };
    // What the run shows, for the test's output whether it passes or not.
    let summary = format!(
        "lost {} {:?}, duplicates {} {:?}, disconnects {:?}, subscriber disconnects {:?}, \
         publisher migrating/migrated {:?}, subscriber {:?}, unconfirmed {:?}",
        n(&v, "lost"),
        column("lost"),
        n(&v, "duplicates"),
        column("duplicates"),
        column("disconnects"),
        column("subscriber_disconnects"),
        switches("migrations"),
        switches("subscriber_migrations"),
        column("unconfirmed"),
    );
    println!(
        "chaos --fault ldm: {summary}\nstderr:\n{}",
        text(&out.stderr).trim_end()
    );

    assert_eq!(v["fault"], "ldm", "{v}");
    assert_eq!(v["two_clients"], true, "{v}");
    assert_eq!(
        v["invariant"], "lost == 0 and disconnects + subscriber_disconnects == 0",
        "{v}"
    );
    // The duplicates are reported, per outage and in total.
    assert!(v["duplicates"].is_u64(), "{v}");
    assert!(per.iter().all(|o| o["duplicates"].is_u64()), "{v}");
    // A planned switch is no outage: neither client's link dropped.
    assert_eq!(n(&v, "disconnects"), 0, "{summary}\n{v}");
    assert_eq!(n(&v, "subscriber_disconnects"), 0, "{summary}\n{v}");
    // The publisher is on the lame-duck node at every fault, and moves every time.
    for o in per {
        assert!(n(&o["migrations"], "migrating") >= 1, "{summary}\n{o}");
        assert!(n(&o["migrations"], "migrated") >= 1, "{summary}\n{o}");
        assert!(o["migrated_ms"].as_f64().is_some(), "{o}");
    }
    assert!(n(&v["migrations"], "migrated") >= OUTAGES, "{v}");
    assert_eq!(n(&v, "lost"), 0, "{summary}\n{v}");
    assert_eq!(n(&v, "not_reconnected"), 0, "{summary}\n{v}");
    assert_eq!(v["invariant_ok"], true, "{v}");
    assert!(
        out.status.success(),
        "chaos failed ({}): {summary}; stderr {}",
        out.status,
        text(&out.stderr)
    );
}

#[test]
fn chaos_refuses_an_invalid_subject() {
    let out = run(Command::new(BIN)
        .env_remove("NATS_URL")
        .env_remove("RUST_LOG")
        .args(["chaos", "--subject", "chaos.>", "--json"]));
    let err = one_line_error(&out);
    assert!(
        err.starts_with("error: --subject: invalid publish subject \"chaos.>\": wildcard token"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// `--plot` to a path that cannot be written: refused at once, before any server starts
/// (one would fail differently here: NATS_SERVER_BIN names no file) and long before a run
/// would end (a default run lasts over 12 s).
#[test]
fn chaos_refuses_an_unwritable_plot_path_before_the_run() {
    let started = Instant::now();
    let out = run(Command::new(BIN)
        .env_remove("NATS_URL")
        .env_remove("RUST_LOG")
        .env("NATS_SERVER_BIN", "/nonexistent/nats-server")
        .args(["chaos", "--plot", "/nonexistent/dir/x.svg"]));
    let took = started.elapsed();
    let err = one_line_error(&out);
    assert!(
        err.starts_with(
            "error: --plot /nonexistent/dir/x.svg: cannot write the plot there (No such file \
             or directory (os error 2)); give a file in a directory that exists"
        ),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// A path as the `&str` an argument list wants.
fn arg(path: &std::path::Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// The TLS version the server reports for each client connection (empty for plaintext).
fn tls_versions(server: &NatsServer) -> Vec<String> {
    server
        .connz()
        .ok()
        .and_then(|v| {
            v["connections"].as_array().map(|cs| {
                cs.iter()
                    .map(|c| c["tls_version"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[test]
fn tls_pub_reaches_sub_trusting_the_ca() {
    let certs = TlsCerts::new().expect("make certificates");
    let server = NatsServer::start_with(ServerConfig::default().with_tls(&certs))
        .expect("start nats-server");
    assert!(server.url().starts_with("tls://"), "{}", server.url());
    let ca = certs.ca_file();
    let mut sub = tether(&server.url());
    sub.args(["sub", "cli.tls", "--count", "1", "--tls-ca", arg(&ca)]);
    let sub = Background::spawn(sub);
    assert!(
        wait_for(DEADLINE, || subscriptions(&server) >= 1),
        "the subscriber never subscribed"
    );
    // The server sees the subscriber's connection as TLS.
    let versions = tls_versions(&server);
    assert!(
        versions.len() == 1 && versions[0].starts_with("1."),
        "{versions:?}"
    );

    // The CA through its environment variable this time.
    let published = run(tether(&server.url())
        .env("NATS_CA", &ca)
        .args(["pub", "cli.tls", "over tls"]));
    assert!(
        published.status.success(),
        "pub failed: {}",
        text(&published.stderr)
    );
    let out = sub.output();
    assert!(out.status.success(), "sub failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "[#1] cli.tls: over tls\n");
}

#[test]
fn mtls_req_gets_the_reply_with_a_client_certificate() {
    let certs = TlsCerts::new().expect("make certificates");
    let server = NatsServer::start_with(ServerConfig::default().with_tls(&certs).with_tls_verify())
        .expect("start nats-server");
    let (ca, cert, key) = (
        certs.ca_file(),
        certs.client_cert_file(),
        certs.client_key_file(),
    );
    let tls = [
        "--tls-ca",
        arg(&ca),
        "--tls-cert",
        arg(&cert),
        "--tls-key",
        arg(&key),
    ];
    let mut reply = tether(&server.url());
    reply
        .args(["reply", "cli.mtls", "pong", "--count", "1"])
        .args(tls);
    let reply = Background::spawn(reply);
    assert!(
        wait_for(DEADLINE, || subscriptions(&server) >= 1),
        "the responder never subscribed"
    );
    let req = run(tether(&server.url())
        .args(["req", "cli.mtls", "ping", "--timeout", "5s"])
        .args(tls));
    assert!(req.status.success(), "req failed: {}", text(&req.stderr));
    assert_eq!(text(&req.stdout), "pong\n");
    let out = reply.output();
    assert!(out.status.success(), "reply failed: {}", text(&out.stderr));

    // Without a client certificate the server refuses the client: one line.
    let out = run(tether(&server.url()).args(["req", "cli.mtls", "ping", "--tls-ca", arg(&ca)]));
    let err = one_line_error(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn tls_with_the_wrong_ca_fails_the_certificate_check() {
    let certs = TlsCerts::new().expect("make certificates");
    let other = TlsCerts::new().expect("make other certificates");
    let server = NatsServer::start_with(ServerConfig::default().with_tls(&certs))
        .expect("start nats-server");
    let out =
        run(tether(&server.url()).args(["pub", "cli.x", "y", "--tls-ca", arg(&other.ca_file())]));
    let err = one_line_error(&out);
    assert!(err.contains(&server.url()), "{err}");
    // It names the check that failed: the server's certificate against the trusted CA.
    assert!(
        err.contains("TLS: the certificate of 127.0.0.1 is not signed by a trusted CA"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // Nothing was published: the server never saw a CONNECT.
    assert_eq!(server.varz().expect("varz")["in_msgs"], 0);
}

#[test]
fn token_authenticates_req_and_reply() {
    let server = NatsServer::start_with(ServerConfig {
        token: Some("cli-s3cret-token".into()),
        ..ServerConfig::default()
    })
    .expect("start nats-server");
    let mut reply = tether(&server.url());
    reply.args([
        "reply",
        "cli.tok",
        "pong",
        "--count",
        "1",
        "--token",
        "cli-s3cret-token",
    ]);
    let reply = Background::spawn(reply);
    assert!(
        wait_for(DEADLINE, || subscriptions(&server) >= 1),
        "the responder never subscribed"
    );
    // The token through its environment variable this time.
    let req = run(tether(&server.url())
        .env("NATS_TOKEN", "cli-s3cret-token")
        .args(["req", "cli.tok", "ping", "--timeout", "5s"]));
    assert!(req.status.success(), "req failed: {}", text(&req.stderr));
    assert_eq!(text(&req.stdout), "pong\n");
    let out = reply.output();
    assert!(out.status.success(), "reply failed: {}", text(&out.stderr));

    // A wrong token: refused, one line, and the token is not in it.
    let out = run(tether(&server.url()).args(["req", "cli.tok", "ping", "--token", "wrong-t0ken"]));
    let err = one_line_error(&out);
    assert!(err.contains("Authorization Violation"), "{err}");
    assert!(!err.contains("wrong-t0ken"), "{err}");
}

#[test]
fn user_and_password_authenticate_pub_and_sub() {
    let server = NatsServer::start_with(ServerConfig {
        user: Some(("cli-user".into(), "cli-pa55word".into())),
        ..ServerConfig::default()
    })
    .expect("start nats-server");
    let auth = ["--user", "cli-user", "--password", "cli-pa55word"];
    let mut sub = tether(&server.url());
    sub.args(["sub", "cli.up", "--count", "1"]).args(auth);
    let sub = Background::spawn(sub);
    assert!(
        wait_for(DEADLINE, || subscriptions(&server) >= 1),
        "the subscriber never subscribed"
    );
    let published = run(tether(&server.url())
        .env("NATS_USER", "cli-user")
        .env("NATS_PASSWORD", "cli-pa55word")
        .args(["pub", "cli.up", "hi"]));
    assert!(
        published.status.success(),
        "pub failed: {}",
        text(&published.stderr)
    );
    let out = sub.output();
    assert_eq!(text(&out.stdout), "[#1] cli.up: hi\n");

    // A wrong password: refused, one line, and the password is not in it.
    let out = run(tether(&server.url()).args([
        "pub",
        "cli.up",
        "hi",
        "--user",
        "cli-user",
        "--password",
        "wr0ng-pass",
    ]));
    let err = one_line_error(&out);
    assert!(err.contains("Authorization Violation"), "{err}");
    assert!(!err.contains("wr0ng-pass"), "{err}");
}

#[test]
fn bench_tls_starts_a_tls_server() {
    let out = run(bare().args(["bench", "pub", "--tls", "--msgs", "2000", "--json"]));
    let v = json(&out);
    assert_rates(&v, "pub", 2000);
    assert!(
        text(&out.stderr)
            .contains("bench: no --server given; started a local nats-server on tls://127.0.0.1:"),
        "{}",
        text(&out.stderr)
    );
    // TLS first: the local server wants the handshake before INFO.
    let out = run(bare().args([
        "bench",
        "reqrep",
        "--tls",
        "--tls-first",
        "--msgs",
        "100",
        "--json",
    ]));
    assert_rates(&json(&out), "reqrep", 100);

    // --tls is for the local server: refused beside --server and beside --tls-ca.
    let out = run(tether("tls://127.0.0.1:4222").args(["bench", "pub", "--tls"]));
    let err = one_line_error(&out);
    assert!(err.contains("--tls starts the local nats-server"), "{err}");
    let out = run(bare().args(["bench", "pub", "--tls", "--tls-ca", "ca.pem"]));
    let err = one_line_error(&out);
    assert!(err.contains("drop --tls-ca"), "{err}");
}

#[test]
fn chaos_tls_kill_and_blackhole() {
    // Kill: the clients reconnect over TLS to the restarted server.
    let (out, _) = chaos_with_output(&["--tls", "-v"]);
    let err = text(&out.stderr);
    assert!(err.contains("server=Some(\"tls://127.0.0.1:"), "{err}");

    // Blackhole: TLS passes through the proxy; the stale link is found and replaced.
    let (out, v) = chaos_report(&[
        "--tls",
        "-v",
        "--fault",
        "blackhole",
        "--outages",
        "1",
        "--outage-ms",
        "300",
        "--rate",
        "200",
    ]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "chaos failed: {err}\n{v}");
    assert!(err.contains("server=Some(\"tls://127.0.0.1:"), "{err}");
    assert_eq!(v["invariant_ok"], true, "{v}");
    assert_eq!(count(&v, "not_reconnected"), 0, "{v}");
    assert!(count(&v, "disconnects") >= 1, "{v}");
    assert!(count(&v, "delivered") > 0, "{v}");
}

/// A nats-server with JetStream (its store in the server's temp dir).
fn js_server() -> NatsServer {
    NatsServer::start_with(ServerConfig {
        jetstream: true,
        ..ServerConfig::default()
    })
    .expect("start nats-server with JetStream")
}

/// The stdout of a successful run, one JSON value per line.
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "tether failed: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

/// `tether js stream add ORDERS` with most options.
const ADD_ORDERS: [&str; 18] = [
    "js",
    "stream",
    "add",
    "ORDERS",
    "--subjects",
    "orders.>,audit.*",
    "--storage",
    "memory",
    "--retention",
    "workqueue",
    "--max-msgs",
    "100",
    "--max-age",
    "1h",
    "--dupe-window",
    "30s",
    "--discard",
    "new",
];

#[test]
fn js_stream_add_and_info() {
    let server = js_server();
    let url = server.url();
    let added = json_lines(&run(tether(&url).args(ADD_ORDERS).arg("--json")));
    assert_eq!(added.len(), 1, "{added:?}");
    let c = &added[0]["config"];
    assert_eq!(added[0]["name"], "ORDERS");
    assert_eq!(
        c["subjects"],
        serde_json::json!(["orders.>", "audit.*"]),
        "{c}"
    );
    assert_eq!(c["storage"], "memory", "{c}");
    assert_eq!(c["retention"], "workqueue", "{c}");
    assert_eq!(c["discard"], "new", "{c}");
    assert_eq!(c["max_msgs"], 100, "{c}");
    assert_eq!(c["max_age"], 3_600_000_000_000u64, "{c}");
    assert_eq!(c["duplicate_window"], 30_000_000_000u64, "{c}");

    // The same config again is no error; another one is, naming the way out.
    let again = run(tether(&url).args(ADD_ORDERS));
    assert!(again.status.success(), "{}", text(&again.stderr));
    let changed = run(tether(&url).args(["js", "stream", "add", "ORDERS", "--subjects", "x.>"]));
    let err = one_line_error(&changed);
    assert!(
        err.contains("already exists with a different configuration")
            && err.contains("tether js stream rm ORDERS"),
        "{err}"
    );

    let human = run(tether(&url).args(["js", "stream", "info", "ORDERS"]));
    assert!(human.status.success(), "{}", text(&human.stderr));
    let human = text(&human.stdout);
    for part in [
        "Stream ORDERS",
        "subjects:     orders.>, audit.*",
        "storage:      memory, retention workqueue, replicas 1, discard new",
        "max msgs 100",
        "max age 1h",
        "dupe window:  30s",
        "state:        0 messages",
    ] {
        assert!(human.contains(part), "{part:?} not in {human}");
    }

    // A name the server would refuse is refused before any request.
    let bad = run(tether(&url).args(["js", "stream", "add", "a.b", "--subjects", "ab"]));
    let err = one_line_error(&bad);
    assert!(err.contains("invalid stream name \"a.b\""), "{err}");
}

#[test]
fn js_stream_ls_and_rm() {
    let server = js_server();
    let url = server.url();
    // ADD_ORDERS up to its subjects and storage.
    run_ok(tether(&url).args(&ADD_ORDERS[..8]));
    run_ok(tether(&url).args(["js", "stream", "add", "EVENTS", "--subjects", "events.>"]));
    let all = json_lines(&run(tether(&url).args(["js", "stream", "ls", "--json"])));
    let names: Vec<&str> = all.iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["EVENTS", "ORDERS"]);
    let audit = json_lines(&run(tether(&url).args([
        "js",
        "stream",
        "ls",
        "--subject",
        "audit.login",
        "--json",
    ])));
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["name"], "ORDERS");
    assert_eq!(audit[0]["state"]["messages"], 0);
    let none = run(tether(&url).args(["js", "stream", "ls", "--subject", "nothing.here"]));
    assert_eq!(text(&none.stdout), "no streams capturing nothing.here\n");
    let ls = run(tether(&url).args(["js", "stream", "ls"]));
    let ls = text(&ls.stdout);
    assert!(
        ls.lines().count() == 2 && ls.starts_with("EVENTS  [events.>]  file"),
        "{ls}"
    );

    let rm = run(tether(&url).args(["js", "stream", "rm", "ORDERS"]));
    assert!(rm.status.success(), "{}", text(&rm.stderr));
    assert_eq!(text(&rm.stdout), "deleted stream ORDERS\n");
    let gone = run(tether(&url).args(["js", "stream", "info", "ORDERS"]));
    let err = one_line_error(&gone);
    assert!(err.contains("stream \"ORDERS\" not found"), "{err}");
    let rm = json_lines(&run(
        tether(&url).args(["js", "stream", "rm", "EVENTS", "--json"])
    ));
    assert_eq!(rm, [serde_json::json!({ "deleted": "EVENTS" })]);
    let empty = run(tether(&url).args(["js", "stream", "ls", "--json"]));
    assert!(
        empty.status.success() && empty.stdout.is_empty(),
        "{empty:?}"
    );
}

/// Runs `cmd` and asserts it succeeded.
fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        text(&out.stderr)
    );
    out
}

#[test]
fn js_pub_waits_for_acks_and_dedupes() {
    let server = js_server();
    let url = server.url();
    run_ok(tether(&url).args(["js", "stream", "add", "PUB", "--subjects", "pub.>"]));
    let acks = json_lines(&run(
        tether(&url).args(["js", "pub", "pub.a", "hello", "--count", "3", "--json"])
    ));
    let seqs: Vec<u64> = acks.iter().filter_map(|v| v["seq"].as_u64()).collect();
    assert_eq!(seqs, [1, 2, 3], "{acks:?}");
    assert!(acks
        .iter()
        .all(|v| v["stream"] == "PUB" && v["duplicate"] == false && v["subject"] == "pub.a"));

    // The same id twice: stored once. `{n}` makes ids distinct.
    let dup = json_lines(&run(tether(&url).args([
        "js", "pub", "pub.b", "once", "--count", "2", "--msg-id", "id-1", "--json",
    ])));
    assert_eq!(
        (dup[0]["seq"].as_u64(), dup[0]["duplicate"].as_bool()),
        (Some(4), Some(false)),
        "{dup:?}"
    );
    assert_eq!(
        (dup[1]["seq"].as_u64(), dup[1]["duplicate"].as_bool()),
        (Some(4), Some(true)),
        "{dup:?}"
    );
    let distinct = run_ok(tether(&url).args([
        "js",
        "pub",
        "pub.c",
        "x",
        "--count",
        "2",
        "--msg-id",
        "batch-{n}",
    ]));
    assert_eq!(
        text(&distinct.stdout),
        "[#1] stored in stream PUB seq 5\n[#2] stored in stream PUB seq 6\n"
    );
    assert!(
        text(&distinct.stderr).contains("published 2 messages to pub.c: 2 stored, 0 duplicates"),
        "{}",
        text(&distinct.stderr)
    );
    let info = json_lines(&run(
        tether(&url).args(["js", "stream", "info", "PUB", "--json"])
    ));
    assert_eq!(info[0]["state"]["messages"], 6, "{:?}", info[0]);
}

#[test]
fn js_pub_to_a_subject_no_stream_captures_fails_at_once() {
    let server = js_server();
    let url = server.url();
    run_ok(tether(&url).args(["js", "stream", "add", "S", "--subjects", "captured.>"]));
    let started = Instant::now();
    let out = run(tether(&url).args(["js", "pub", "not.captured", "x"]));
    let err = one_line_error(&out);
    assert!(
        err.starts_with(
            "error: publishing to not.captured: no stream captures subject \"not.captured\""
        ),
        "{err}"
    );
    // At once, not after the publish deadline (10 s).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn js_commands_say_when_jetstream_is_not_enabled() {
    let server = NatsServer::start().expect("start nats-server");
    let url = server.url();
    for args in [
        &["js", "pub", "a.b", "x"][..],
        &["js", "stream", "ls"],
        &["js", "stream", "add", "S", "--subjects", "a.>"],
        &["js", "stream", "info", "S"],
        &["js", "consume", "S", "C", "--create"],
    ] {
        let out = run(tether(&url).args(args));
        let err = one_line_error(&out);
        assert!(
            err.contains("JetStream is not enabled") && err.contains("-js"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn js_consume_prints_and_acks() {
    let server = js_server();
    let url = server.url();
    run_ok(tether(&url).args(["js", "stream", "add", "WORK", "--subjects", "work.>"]));
    run_ok(tether(&url).args(["js", "pub", "work.a", "job", "--count", "3"]));

    // Without --create an unknown consumer is an error that names the flag.
    let out = run(tether(&url).args(["js", "consume", "WORK", "workers", "--count", "1"]));
    let err = one_line_error(&out);
    assert!(
        err.contains("not found") && err.contains("--create"),
        "{err}"
    );
    // A heartbeat at half the expiry is refused before any pull.
    let out = run(tether(&url).args([
        "js",
        "consume",
        "WORK",
        "workers",
        "--create",
        "--expires",
        "10s",
        "--heartbeat",
        "5s",
    ]));
    let err = one_line_error(&out);
    assert!(err.starts_with("error: --heartbeat: "), "{err}");

    let got = json_lines(&run(tether(&url).args([
        "js", "consume", "WORK", "workers", "--create", "--count", "3", "--json",
    ])));
    let seqs: Vec<u64> = got
        .iter()
        .filter_map(|v| v["stream_seq"].as_u64())
        .collect();
    assert_eq!(seqs, [1, 2, 3], "{got:?}");
    assert!(
        got.iter()
            .all(|v| v["payload"] == "job" && v["subject"] == "work.a"),
        "{got:?}"
    );

    // Every message acked: the server's view of the consumer, polled until it settles.
    let acked = wait_for(DEADLINE, || {
        server.monitor("/jsz?consumers=true").ok().and_then(|v| {
            let c = &v["account_details"][0]["stream_detail"][0]["consumer_detail"][0];
            Some((
                c["ack_floor"]["stream_seq"].as_u64()?,
                c["num_ack_pending"].as_u64()?,
            ))
        }) == Some((3, 0))
    });
    assert!(acked, "{:?}", server.monitor("/jsz?consumers=true"));

    // The human form, for the next message.
    run_ok(tether(&url).args(["js", "pub", "work.b", "next"]));
    let out = run_ok(tether(&url).args(["js", "consume", "WORK", "workers", "--count", "1"]));
    assert_eq!(text(&out.stdout), "[#1] work.b seq 4: next\n");
}

#[test]
fn bench_js_pub_starts_a_jetstream_server() {
    let out = run(bare().args([
        "bench", "js-pub", "--msgs", "3000", "--window", "64", "--json",
    ]));
    let v = json(&out);
    assert_eq!(v["mode"], "js-pub", "{v}");
    assert_eq!(
        (v["msgs"].as_u64(), v["size"].as_u64()),
        (Some(3000), Some(128)),
        "{v}"
    );
    assert_eq!(
        (v["window"].as_u64(), v["stored"].as_u64()),
        (Some(64), Some(3000)),
        "{v}"
    );
    assert!(v["msgs_per_sec"].as_f64().is_some_and(|x| x > 0.0), "{v}");

    // Against a server without JetStream: one line saying so.
    let plain = NatsServer::start().expect("start nats-server");
    let out = run(tether(&plain.url()).args(["bench", "js-pub", "--msgs", "10"]));
    let err = one_line_error(&out);
    assert!(err.contains("JetStream is not enabled"), "{err}");
}

#[test]
fn bench_js_consume_drains_its_stream() {
    let server = js_server();
    let out = run(tether(&server.url()).args([
        "bench",
        "js-consume",
        "--msgs",
        "3000",
        "--batch",
        "100",
        "--json",
    ]));
    let v = json(&out);
    assert_eq!(v["mode"], "js-consume", "{v}");
    assert_eq!(
        (v["received"].as_u64(), v["batch"].as_u64()),
        (Some(3000), Some(100)),
        "{v}"
    );
    assert_eq!(v["ack_policy"], "explicit", "{v}");
    assert!(v["msgs_per_sec"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    // The run's stream is gone.
    let ls = json_lines(&run(
        tether(&server.url()).args(["js", "stream", "ls", "--json"])
    ));
    assert!(ls.is_empty(), "{ls:?}");
}
