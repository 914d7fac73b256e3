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
