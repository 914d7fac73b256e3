//! `--tls`: the workloads over TLS against a TLS nats-server of the run's own, and with
//! `--tls both` each library's TLS / plaintext ratios; what `--tls` refuses.

use std::process::{Command, Output};

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_tether-compare");

fn compare(args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .output()
        .expect("running tether-compare")
}

fn json(out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tether-compare failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn positive(v: &Value) -> bool {
    v.as_f64().is_some_and(|x| x.is_finite() && x > 0.0)
}

#[test]
fn tls_both_runs_every_series_twice_and_reports_the_cost_of_tls() {
    let v = json(&compare(&[
        "--tls",
        "both",
        "--workloads",
        "pub,reqrep,conns",
        "--msgs",
        "2000",
        "--requests",
        "50",
        "--conns",
        "3",
        "--rounds",
        "5",
        "--warmup",
        "0",
        "--json",
    ]));
    let server = v["server"].as_str().expect("server");
    assert!(
        server.contains("nats://127.0.0.1:") && server.contains("tls://127.0.0.1:"),
        "{server}"
    );
    let w = &v["workloads"];
    // Plaintext as before, with its raw side; over TLS pub has its TLS ceiling, reqrep
    // no floor.
    for key in ["pub_16b", "reqrep_16b"] {
        assert!(w[key]["tls"].is_null(), "{key}: {}", w[key]);
        assert!(positive(&w[key]["ratio_to_raw"]), "{key}: {}", w[key]);
        let tls = &w[format!("{key}_tls")];
        assert_eq!(tls["tls"], true, "{tls}");
        if key == "pub_16b" {
            assert!(positive(&tls["ratio_to_raw"]), "{tls}");
        } else {
            assert!(
                tls["raw"].is_null() && tls["ratio_to_raw"].is_null(),
                "{tls}"
            );
        }
        assert!(positive(&tls["ratio"]), "{tls}");
        for lib in ["tether", "async_nats"] {
            assert_eq!(
                tls[lib]["rounds"].as_array().map(Vec::len),
                Some(5),
                "{tls}"
            );
        }
        // Each library's TLS / plaintext of the headline medians.
        let cost = &v["tls_cost"]["workloads"][key];
        for lib in ["tether", "async_nats"] {
            assert!(positive(&cost[lib]), "{key}: {cost}");
        }
    }
    assert_eq!(v["tls_cost"]["workloads"]["pub_16b"]["ratio_of"], "msgs/s");
    assert_eq!(
        v["tls_cost"]["workloads"]["reqrep_16b"]["ratio_of"],
        "p50 latency µs"
    );
    // conns over TLS, and its TLS / plaintext ratios.
    assert!(w["conns"]["n"]["3"]["tether"]["median"]["connect_p50_ms"].is_number());
    let conns_tls = &w["conns_tls"];
    assert_eq!(conns_tls["tls"], true, "{conns_tls}");
    assert!(conns_tls["server"]
        .as_str()
        .is_some_and(|s| s.starts_with("tls://")));
    for lib in ["tether", "async_nats"] {
        assert!(
            positive(&conns_tls["n"]["3"][lib]["median"]["connect_p50_ms"]),
            "{conns_tls}"
        );
        assert!(
            positive(&conns_tls["tls_cost"]["n"]["3"][lib]["connect_p50_ms"]),
            "{conns_tls}"
        );
    }
}

#[test]
fn a_bare_tls_runs_over_tls_only_and_the_table_says_so() {
    let out = compare(&[
        "--tls",
        "--workloads",
        "pub",
        "--msgs",
        "2000",
        "--rounds",
        "5",
        "--warmup",
        "0",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("server tls://127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("\npub 16 B tls msgs/s "), "{stdout}");
    // The ceiling runs over TLS too: the pub row has its figure and ratio.
    let row = stdout
        .lines()
        .find(|l| l.starts_with("pub 16 B tls msgs/s "))
        .unwrap();
    assert!(!row.contains('—'), "{row}");
    assert!(
        stdout.contains("pub 16 B tls msgs/s  ceiling"),
        "a ceiling round over TLS: {stdout}"
    );
    assert!(!stdout.contains("\npub 16 B msgs/s "), "{stdout}");
    assert!(
        stdout.contains("over TLS the ceiling writes its chunks through rustls"),
        "{stdout}"
    );
    // Nothing to compare TLS with: no cost section.
    assert!(!stdout.contains("TLS cost"), "{stdout}");
}

#[test]
fn tls_refuses_a_given_server_and_the_workloads_with_servers_of_their_own() {
    let out = compare(&["--tls", "--server", "tls://127.0.0.1:4222"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("drop --server"), "{stderr}");

    let out = compare(&["--tls", "both", "--workloads", "pub,reconnect,subs"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("reconnect, subs run on a plaintext server of their own"),
        "{stderr}"
    );
    assert!(!stderr.contains("round"), "a round ran: {stderr}");

    let out = compare(&["--tls", "sometimes"]);
    assert!(!out.status.success());
}
