//! `tether js stream add|info|ls|rm`, `tether js pub`, `tether js consume`: JetStream.
//!
//! Every subcommand connects, makes a [`tether::jetstream::Context`] (with `--domain`
//! when given) and prints what it did: a few human lines, or with `--json` one JSON
//! object per line (per stream for `ls`, per ack for `pub`, per message for `consume`).
//! Errors are the library's, which say what to do (JetStream not enabled, no stream for
//! a subject, a stream that exists with another configuration...).

use crate::{util, CliError, Global};

mod consume;
mod publish;
mod stream;

/// JetStream: manage streams, publish with acks, consume with a pull consumer
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tether js stream add ORDERS --subjects 'orders.>' --storage memory
  tether js pub orders.new '{\"id\":1}' --msg-id order-1
  tether js consume ORDERS workers --create --count 10
  tether js stream ls --json")]
pub(crate) struct Args {
    /// The JetStream domain to talk to (API prefix `$JS.<domain>.API`), as from a leaf
    /// node [default: the account's own JetStream, `$JS.API`]
    #[arg(long, global = true, value_name = "DOMAIN")]
    pub domain: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Manage streams: add, info, ls, rm
    Stream(stream::Args),
    /// Publish to a stream's subject and wait for each ack
    Pub(publish::Args),
    /// Pull messages from a consumer, print and ack each
    Consume(consume::Args),
}

pub(crate) async fn run(args: Args, global: &Global) -> Result<(), CliError> {
    let client = util::connect(global.server_or_default(), global.connect_options()?).await?;
    let mut js = client.jetstream();
    if let Some(d) = &args.domain {
        js = js.with_domain(d);
    }
    let result = match args.command {
        Command::Stream(a) => stream::run(a, &js).await,
        Command::Pub(a) => publish::run(a, &js).await,
        Command::Consume(a) => consume::run(a, &js).await,
    };
    // Writes what is buffered (acks of `consume`) and waits for the server's PONG.
    client.close().await;
    result
}

/// Writes `line` and a newline to stdout; a closed stdout (`| head`) is `Ok(false)`.
pub(crate) fn print_line(line: &str) -> Result<bool, CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out
        .write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::new(format!("writing to stdout: {e}"))),
    }
}

/// One JSON value as one line.
pub(crate) fn print_json(v: &serde_json::Value) -> Result<bool, CliError> {
    print_line(&v.to_string())
}
