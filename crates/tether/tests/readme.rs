//! The README's library examples are `examples/quickstart.rs` and `examples/jetstream.rs`,
//! which `cargo test` compiles: this keeps the README and the files the same.

fn shown_in(section: &str, example: &str) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let file = std::fs::read_to_string(format!("{root}/crates/tether/examples/{example}")).unwrap();
    let section = readme
        .split(section)
        .nth(1)
        .unwrap_or_else(|| panic!("the README has a section {section:?}"));
    let shown = section
        .split("```rust\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("the section shows a rust block");
    // The example file starts with doc comments that the README does not repeat.
    let mut code: String = file
        .lines()
        .skip_while(|l| l.starts_with("//!") || l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    code.push('\n');
    assert_eq!(shown, code, "README and examples/{example} differ");
}

#[test]
fn the_readme_shows_the_quickstart_example_as_it_is() {
    shown_in("## Using tether as a library", "quickstart.rs");
}

#[test]
fn the_readme_shows_the_jetstream_example_as_it_is() {
    shown_in("## JetStream", "jetstream.rs");
}

/// The JetStream example runs as the README says against a server with JetStream: it
/// stores three orders, consumes and acks them, and cleans up.
#[test]
fn the_jetstream_example_runs_against_a_real_server() {
    let server = tether_testkit::NatsServer::start_with(tether_testkit::ServerConfig {
        jetstream: true,
        ..tether_testkit::ServerConfig::default()
    })
    .unwrap();
    // `cargo test` builds the examples beside the test binaries: target/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("jetstream"))
        .unwrap();
    let out = std::process::Command::new(&example)
        .arg(server.url())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", example.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the example failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..3 {
        assert!(
            stdout.contains(&format!(
                "stored in ORDERS as #{} (duplicate: false)",
                i + 1
            )),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!("orders.new: order {i}")),
            "{stdout}"
        );
    }
}
