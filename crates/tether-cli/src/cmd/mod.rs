//! One module per subcommand; each has `Args` and `async fn run(Args, &Global)`.
//! Register a new one in the `commands!` list in `main.rs`.

pub(crate) mod bench;
pub(crate) mod chaos;
pub(crate) mod publish;
pub(crate) mod reply;
pub(crate) mod request;
pub(crate) mod subscribe;
