//! `tether reply SUBJECT RESPONSE [--queue Q] [--count N]`

use futures_util::StreamExt;

use super::SubjectArgs;
use crate::error::Context;
use crate::{util, CliError, Global};

/// Answer requests on a subject with a fixed response
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tether reply time.now 'twelve o clock'
  tether reply echo pong --queue echoers --count 1

Prints each request as `[#n] subject: payload`. Runs until --count requests were
answered, or until Ctrl-C.")]
#[command(
    mut_arg("subject", |a| a.help("Subject to answer on (wildcards allowed)")),
    mut_arg("queue", |a| a.help(
        "Join this queue group (each request goes to one member of the group)"
    )),
    mut_arg("count", |a| a.help("Exit after answering this many requests")),
)]
pub(crate) struct Args {
    #[command(flatten)]
    pub subscription: SubjectArgs,
    /// Payload of every reply
    #[arg(index = 2)]
    pub response: String,
}

pub(crate) async fn run(args: Args, global: &Global) -> Result<(), CliError> {
    let SubjectArgs {
        subject,
        queue,
        count,
    } = args.subscription;
    let client = util::connect(global.server_or_default(), global.connect_options()?).await?;
    let what = format!("subscribing to {subject}");
    let mut sub = util::subscribe_confirmed(&client, &subject, queue.as_deref(), &what).await?;
    tracing::info!(subject = %subject, queue = ?queue, "answering requests");
    let mut answered = 0;
    let mut seen = 0;
    while count.is_none_or(|c| answered < c) {
        let Some(msg) = sub.next().await else {
            break;
        };
        seen += 1;
        if !util::print_message(seen, &msg)? {
            break;
        }
        let Some(reply) = &msg.reply else {
            tracing::warn!(subject = %msg.subject, "message without a reply subject; not answered");
            continue;
        };
        client
            .publish(reply, args.response.as_bytes())
            .await
            .context(format!("replying to {reply}"))?;
        answered += 1;
    }
    if let Some(e) = sub.error() {
        return Err(CliError::new(format!(
            "subscription to {subject} ended: {e}"
        )));
    }
    let report = client.close().await;
    if report.unsent_msgs > 0 {
        return Err(CliError::new(format!(
            "connection closed with {} replies unsent",
            report.unsent_msgs
        )));
    }
    Ok(())
}
