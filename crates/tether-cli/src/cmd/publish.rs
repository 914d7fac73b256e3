//! `tether pub SUBJECT PAYLOAD [--count N]`

use crate::error::Context;
use crate::{util, CliError, Global};

/// Publish a message (or N copies of it) to a subject
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tether pub greet.joe hello
  tether pub orders.new '{\"id\":1}' --count 1000 --server nats://10.0.0.5:4222

The command returns once the server has confirmed every message (PING/PONG after the
last one), so `tether pub` in a script never loses its messages on exit.")]
pub(crate) struct Args {
    /// Subject to publish to (no wildcards)
    pub subject: String,
    /// Message payload
    pub payload: String,
    /// Publish the message this many times
    #[arg(long, short = 'c', default_value_t = 1)]
    pub count: u64,
}

pub(crate) async fn run(args: Args, global: &Global) -> Result<(), CliError> {
    let client = util::connect(global.server_or_default(), global.connect_options()?).await?;
    for _ in 0..args.count {
        client
            .publish(&args.subject, args.payload.as_bytes())
            .await
            .context(format!("publishing to {}", args.subject))?;
    }
    let report = client.close().await;
    if report.unsent_msgs > 0 || report.unconfirmed_msgs > 0 {
        return Err(CliError::new(format!(
            "connection closed with {} of {} messages unsent and {} unconfirmed",
            report.unsent_msgs, args.count, report.unconfirmed_msgs
        )));
    }
    eprintln!(
        "published {} message{} of {} bytes to {}",
        args.count,
        if args.count == 1 { "" } else { "s" },
        args.payload.len(),
        args.subject
    );
    Ok(())
}
