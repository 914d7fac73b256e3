//! One module per subcommand; each has `Args` and `async fn run(Args, &Global)`.
//! Register a new one in the `commands!` list in `main.rs`.

pub mod bench;
pub mod chaos;
pub mod publish;
pub mod reply;
pub mod request;
pub mod subscribe;
