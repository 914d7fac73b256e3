//! The README's library example is `examples/quickstart.rs`, which `cargo test` compiles:
//! this keeps the two the same.

#[test]
fn the_readme_shows_the_quickstart_example_as_it_is() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let example =
        std::fs::read_to_string(format!("{root}/crates/tether/examples/quickstart.rs")).unwrap();
    let section = readme
        .split("## Using tether as a library")
        .nth(1)
        .expect("the README has a library section");
    let shown = section
        .split("```rust\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("the section shows a rust block");
    // The example file starts with doc comments that the README does not repeat.
    let mut code: String = example
        .lines()
        .skip_while(|l| l.starts_with("//!") || l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    code.push('\n');
    assert_eq!(shown, code, "README and examples/quickstart.rs differ");
}
