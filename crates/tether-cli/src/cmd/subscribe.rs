//! `tether sub SUBJECT [--queue Q] [--count N]`

use futures_util::StreamExt;

use super::SubjectArgs;
use crate::error::Context;
use crate::{util, CliError, Global};

/// Subscribe to a subject and print each message as `[#n] subject: payload`
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tether sub greet.joe
  tether sub 'orders.>' --queue workers
  tether sub 'sensors.*.temp' --count 10

Runs until --count messages arrived, or until Ctrl-C.")]
pub(crate) struct Args {
    #[command(flatten)]
    pub subscription: SubjectArgs,
}

pub(crate) async fn run(args: Args, global: &Global) -> Result<(), CliError> {
    let SubjectArgs {
        subject,
        queue,
        count,
    } = args.subscription;
    let client = util::connect(global.server_or_default(), global.connect_options()?).await?;
    let what = format!("subscribing to {subject}");
    let mut sub = util::subscribe(&client, &subject, queue.as_deref(), &what).await?;
    if count == Some(0) {
        return Ok(());
    }
    if let Some(n) = count {
        sub.unsubscribe_after(n);
    }
    // Confirms the server has the subscription before saying so.
    client.flush().await.context(&what)?;
    tracing::info!(subject = %subject, queue = ?queue, "subscribed");
    let mut n = 0;
    while let Some(msg) = sub.next().await {
        n += 1;
        if !util::print_message(n, &msg)? {
            break;
        }
        if count.is_some_and(|c| n >= c) {
            break;
        }
    }
    if let Some(e) = sub.error() {
        return Err(CliError::new(format!(
            "subscription to {subject} ended: {e}"
        )));
    }
    if count.is_some_and(|c| n < c) {
        return Err(CliError::new(format!(
            "subscription to {} ended after {n} of {} messages (connection closed)",
            subject,
            count.unwrap_or_default()
        )));
    }
    client.close().await;
    Ok(())
}
