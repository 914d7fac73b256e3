//! The scale workloads end to end, against real nats-servers: a small run of both, and
//! the open-file limit (lowered with the shell's `ulimit -n` for the process under test).

use std::process::{Command, Output};

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_tether-compare");

/// This binary with `args`, under an open-file limit of `nofile` (soft and hard).
fn under_limit(nofile: u32, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(EXE)
        .args(args)
        .output()
        .expect("running tether-compare through sh")
}

#[test]
fn a_small_scale_run_reports_every_figure() {
    let plot =
        std::env::temp_dir().join(format!("tether-compare-scale-{}.svg", std::process::id()));
    let out = Command::new(EXE)
        .arg("--plot")
        .arg(&plot)
        .args([
            "--workloads",
            "conns,subs",
            "--conns",
            "3",
            "--subs",
            "50",
            "--rounds",
            "5",
            "--warmup",
            "0",
            "--json",
        ])
        .output()
        .expect("running tether-compare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tether-compare failed: {stderr}");
    // The plot draws the scale ratios too.
    let svg = std::fs::read_to_string(&plot).expect("the plot was written");
    std::fs::remove_file(&plot).unwrap();
    for text in [
        "conns 3",
        "subs 50",
        "connect p50",
        "sub→live p50",
        "RSS/sub",
        "resubscribe",
    ] {
        assert!(
            svg.contains(&format!(">\n{text}\n</text>")),
            "no {text:?} in the plot"
        );
    }
    let json_start = out
        .stdout
        .iter()
        .position(|&b| b == b'{')
        .expect("a JSON object");
    let v: Value = serde_json::from_slice(&out.stdout[json_start..]).expect("one JSON object");
    let w = &v["workloads"];
    for lib in ["tether", "async_nats"] {
        let conns = &w["conns"]["n"]["3"][lib];
        let rounds = conns["rounds"].as_array().expect("conns rounds");
        assert_eq!(rounds.len(), 5, "{lib}: {conns}");
        for r in rounds {
            assert_eq!(r["n"], 3);
            assert!(r["connect_p50_ms"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["sub_live_p50_ms"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["threads_after"].as_u64().unwrap() >= 1, "{r}");
        }
        let subs = &w["subs"]["n"]["50"][lib];
        let rounds = subs["rounds"].as_array().expect("subs rounds");
        assert_eq!(rounds.len(), 5, "{lib}: {subs}");
        for r in rounds {
            assert!(r["setup_ms"].as_f64().unwrap() > 0.0, "{r}");
            let resub = &r["resub"];
            assert!(resub["resubscribe_ms"].as_f64().unwrap() >= 0.0, "{r}");
            assert!(resub["target"].as_u64().unwrap() >= 50, "{r}");
        }
        let median = subs["median"]["resubscribe_ms"].as_f64().unwrap();
        assert!(median.is_finite(), "{lib}: {subs}");
    }
}

#[test]
fn a_hard_limit_too_low_fails_before_the_run_with_what_to_raise() {
    let out = under_limit(
        64,
        &[
            "--workloads",
            "conns",
            "--conns",
            "100",
            "--rounds",
            "5",
            "--warmup",
            "0",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a failure: {stderr}");
    assert!(
        stderr.contains("the conns workload with 100 connections needs about"),
        "{stderr}"
    );
    assert!(stderr.contains("hard 64"), "{stderr}");
    assert!(stderr.contains("ulimit -n "), "{stderr}");
    assert!(stderr.contains("LimitNOFILE="), "{stderr}");
    assert!(!stderr.contains("round  1"), "the run started: {stderr}");
}

#[test]
fn running_out_of_descriptors_mid_run_says_so() {
    let server = tether_testkit::NatsServer::start().expect("nats-server");
    for client in ["tether", "async-nats"] {
        let out = under_limit(
            48,
            &[
                "scale-child",
                "--kind",
                "conns",
                "--client",
                client,
                "--n",
                "100",
                "--server",
                &server.url(),
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{client}: expected a failure: {stderr}"
        );
        assert!(
            stderr.contains("failed: Too many open files (EMFILE)"),
            "{client}: {stderr}"
        );
        assert!(stderr.contains("ulimit -n "), "{client}: {stderr}");
    }
}
