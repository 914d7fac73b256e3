//! `tether req SUBJECT PAYLOAD [--timeout 2s]`

use std::io::Write;
use std::time::{Duration, Instant};

use crate::error::Context;
use crate::{util, CliError, Global};

/// Send a request and print the reply's payload
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tether req time.now ''
  tether req echo hello --timeout 500ms

Fails at once with `no responders` when nobody listens on the subject.")]
pub(crate) struct Args {
    /// Subject to send the request to
    pub subject: String,
    /// Request payload
    pub payload: String,
    /// How long to wait for the reply (e.g. 500ms, 2s, 1m)
    #[arg(long, short = 't', default_value = "2s", value_parser = util::parse_duration)]
    pub timeout: Duration,
}

pub(crate) async fn run(args: Args, global: &Global) -> Result<(), CliError> {
    let client = util::connect(global.server_or_default(), global.connect_options()?).await?;
    let start = Instant::now();
    let reply = client
        .request_with(&args.subject, None, args.payload.as_bytes(), args.timeout)
        .await
        .context(format!("request to {}", args.subject))?;
    tracing::info!(subject = %args.subject, rtt = ?start.elapsed(), bytes = reply.payload.len(), "reply received");
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(&reply.payload)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(CliError::new(format!("writing to stdout: {e}")));
        }
        _ => {}
    }
    client.close().await;
    Ok(())
}
