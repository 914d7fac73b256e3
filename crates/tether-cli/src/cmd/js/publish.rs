//! `tether js pub SUBJECT [PAYLOAD] [--count N] [--msg-id ID]`

use serde_json::json;
use tether::jetstream::{Context, PublishOptions};

use super::{print_json, print_line};
use crate::error::Context as _;
use crate::{util, CliError};

/// Publish to a subject a stream captures and wait for the stream's ack of each message
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tether js pub orders.new '{\"id\":1}'
  tether js pub orders.new hello --count 5 --json
  tether js pub orders.new once --msg-id order-1       stored once per duplicate window
  tether js pub orders.new x --count 100 --msg-id 'batch-7-{n}'

Each message is acked before the next is sent; the ack names the stream, the message's
sequence in it, and whether it was a duplicate (a Nats-Msg-Id seen within the stream's
duplicate window: not stored again). A subject no stream captures fails at once.")]
pub(crate) struct Args {
    /// Subject to publish to (no wildcards)
    pub subject: String,
    /// Message payload [default: empty]
    #[arg(default_value = "")]
    pub payload: String,
    /// Publish the message this many times
    #[arg(long, short = 'c', default_value_t = 1)]
    pub count: u64,
    /// Nats-Msg-Id of each message, for dedupe; `{n}` in it becomes the message's number
    /// (1, 2, ...), so `--count` messages get distinct ids
    #[arg(long, value_name = "ID")]
    pub msg_id: Option<String>,
    /// One JSON object per ack, one per line
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(args: Args, js: &Context) -> Result<(), CliError> {
    util::check_publish_subject("SUBJECT", &args.subject)?;
    let payload = bytes::Bytes::from(args.payload.into_bytes());
    let (mut acked, mut stored) = (0u64, 0u64);
    for n in 1..=args.count {
        let mut opts = PublishOptions::new();
        let id = args
            .msg_id
            .as_ref()
            .map(|id| id.replace("{n}", &n.to_string()));
        if let Some(id) = &id {
            opts = opts.msg_id(id.clone());
        }
        let what = || {
            if args.count == 1 {
                format!("publishing to {}", args.subject)
            } else {
                format!("publish #{n} of {} to {}", args.count, args.subject)
            }
        };
        let ack = js
            .publish_with(args.subject.as_str(), payload.clone(), opts)
            .await
            .context(what())?
            .await
            .context(what())?;
        acked += 1;
        if !ack.duplicate {
            stored += 1;
        }
        let more = if args.json {
            let mut v = json!({
                "n": n,
                "subject": args.subject,
                "stream": ack.stream,
                "seq": ack.seq,
                "duplicate": ack.duplicate,
            });
            if let Some(id) = id {
                v["msg_id"] = json!(id);
            }
            if let Some(d) = &ack.domain {
                v["domain"] = json!(d);
            }
            print_json(&v)?
        } else if ack.duplicate {
            print_line(&format!(
                "[#{n}] duplicate of stream {} seq {}: not stored again",
                ack.stream, ack.seq
            ))?
        } else {
            print_line(&format!(
                "[#{n}] stored in stream {} seq {}",
                ack.stream, ack.seq
            ))?
        };
        if !more {
            break;
        }
    }
    if !args.json {
        eprintln!(
            "published {acked} message{} to {}: {stored} stored, {} duplicate{}",
            if acked == 1 { "" } else { "s" },
            args.subject,
            acked - stored,
            if acked - stored == 1 { "" } else { "s" },
        );
    }
    Ok(())
}
