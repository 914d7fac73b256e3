//! One module per subcommand; each has `Args` and `async fn run(Args, &Global)`.
//! Register a new one in the `commands!` list in `main.rs`.

pub(crate) mod bench;
pub(crate) mod chaos;
pub(crate) mod js;
pub(crate) mod publish;
pub(crate) mod reply;
pub(crate) mod request;
pub(crate) mod subscribe;

/// The arguments `sub` and `reply` share. The help texts are `sub`'s; `reply` words them
/// for requests with `mut_arg`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubjectArgs {
    /// Subject to subscribe to (wildcards `*` and `>` allowed)
    // The first positional argument even where `mut_arg` moves it to the end of the list.
    #[arg(index = 1)]
    pub subject: String,
    /// Join this queue group (each message goes to one member of the group)
    #[arg(long, short = 'q')]
    pub queue: Option<String>,
    /// Exit after this many messages
    #[arg(long, short = 'c')]
    pub count: Option<u64>,
}
