//! `--plot` to a path that cannot be written fails at once, naming the path and the OS
//! error, before any server starts or any round runs.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn an_unwritable_plot_path_fails_before_any_round() {
    let path = "/nonexistent/dir/x.svg";
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tether-compare"))
        .args(["--rounds", "5", "--workloads", "pub", "--plot", path])
        .output()
        .expect("run tether-compare");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);

    assert!(
        !out.status.success(),
        "exited with success; stderr: {stderr}"
    );
    assert!(
        stderr.contains(path) && stderr.contains("No such file or directory"),
        "the error names neither the path nor the OS error: {stderr}"
    );
    assert!(
        !stderr.contains("round") && !stderr.contains("warm-up"),
        "a round ran before the error: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "printed results: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(took < Duration::from_secs(5), "took {took:?} to fail");
}
