//! Helpers shared by the subcommands.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use std::sync::Arc;

use tether::{Client, ConnectOptions, Message, Subscriber};
use tether_testkit::{ServerConfig, TestkitError, TlsCerts};

use crate::error::Context as _;
use crate::{CliError, Global};

/// Connection name the CLI shows in the server's monitoring.
pub(crate) const CLIENT_NAME: &str = "tether-cli";

/// Connect to `servers` (comma-separated URLs) with `opts`. The error is the library's,
/// which lists every server and address tried and why it failed.
pub(crate) async fn connect(servers: &str, opts: ConnectOptions) -> Result<Client, CliError> {
    if servers.split(',').all(|s| s.trim().is_empty()) {
        return Err(CliError::new("no server URL given (--server or NATS_URL)"));
    }
    let client = opts.name(CLIENT_NAME).connect(servers).await?;
    tracing::info!(server = ?client.connected_server(), "connected");
    let mut open = OPEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A command that connects again and again (bench rounds) keeps only live clients,
    // not every closed one with its buffers.
    open.retain(|c| c.status() != tether::State::Closed);
    open.push(client.clone());
    Ok(client)
}

/// Subscribe to `subject`, as a member of `queue` when given; an error says `what` was
/// being done.
pub(crate) async fn subscribe(
    client: &Client,
    subject: &str,
    queue: Option<&str>,
    what: &str,
) -> Result<Subscriber, CliError> {
    match queue {
        Some(q) => client.queue_subscribe(subject, q).await.context(what),
        None => client.subscribe(subject).await.context(what),
    }
}

/// [`subscribe`], then wait until the server confirms it (a flush): messages published
/// from then on reach it.
pub(crate) async fn subscribe_confirmed(
    client: &Client,
    subject: &str,
    queue: Option<&str>,
    what: &str,
) -> Result<Subscriber, CliError> {
    let sub = subscribe(client, subject, queue, what).await?;
    client
        .flush()
        .await
        .context(format_args!("{what}: waiting for the server to confirm"))?;
    Ok(sub)
}

/// Checks a subject given with `flag` (e.g. `--subject`) for publishing, with tether's
/// own rules: one line saying what is wrong, e.g. that wildcards are for subscriptions.
pub(crate) fn check_publish_subject(flag: &str, subject: &str) -> Result<(), CliError> {
    tether_proto::subject::validate_publish_subject(subject)
        .map_err(|e| CliError::new(format!("{flag}: {e}")))
}

/// Every client [`connect`] made, so that `main` can close them whatever way the command
/// ended (an error, Ctrl-C) before the runtime goes away.
static OPEN: Mutex<Vec<Client>> = Mutex::new(Vec::new());

/// Closes every client [`connect`] made (writing what they buffered and waiting for the
/// server's PONG), each bounded by `timeout`. Already-closed clients return at once.
pub(crate) async fn close_all(timeout: Duration) {
    let clients = std::mem::take(
        &mut *OPEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for client in clients {
        if tokio::time::timeout(timeout, client.close()).await.is_err() {
            tracing::warn!(server = ?client.connected_server(), "close did not complete within {timeout:?}");
        }
    }
}

/// `--tls` (bench, chaos) starts the command's own server(s) with TLS and a CA made for
/// the run: refused beside `--server` (a server of one's own is reached with a `tls://`
/// URL) and beside `--tls-ca` (the clients trust the run's CA, no other).
pub(crate) fn check_local_tls(global: &Global) -> Result<(), CliError> {
    if global.server.is_some() {
        return Err(CliError::new(
            "--tls starts the local nats-server with TLS; with --server (or NATS_URL) give \
             a tls:// URL and --tls-ca instead",
        ));
    }
    if global.tls_ca.is_some() {
        return Err(CliError::new(
            "--tls makes a CA for the local nats-server and trusts only it; drop --tls-ca \
             (or NATS_CA), or give --server",
        ));
    }
    Ok(())
}

/// The config of a command's own server(s): plaintext, or with `tls` TLS on the client
/// port with fresh certificates (returned: the clients trust their CA; the config holds
/// them, so the files live as long as the servers), with `handshake_first` when
/// `tls_first` (`--tls-first`, so the clients' TLS-first handshake is what it expects).
pub(crate) fn local_server_config(
    tls: bool,
    tls_first: bool,
) -> Result<(ServerConfig, Option<Arc<TlsCerts>>), TestkitError> {
    if !tls {
        return Ok((ServerConfig::default(), None));
    }
    let certs = TlsCerts::new()?;
    let mut cfg = ServerConfig::default().with_tls(&certs);
    if tls_first {
        cfg = cfg.with_tls_handshake_first();
    }
    Ok((cfg, Some(certs)))
}

/// Parses `2s`, `500ms`, `1.5s`, `250us`, `1m`, or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 2s, 500ms, 1m)"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "ns" => value / 1e9,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}` (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

/// Writes `[#n] subject: payload` (payload as lossy UTF-8) and the headers, if any.
/// A closed stdout (`| head`) is reported as `Ok(false)`: stop quietly.
pub(crate) fn print_message(n: u64, msg: &Message) -> Result<bool, CliError> {
    let mut out = std::io::stdout().lock();
    let mut text = format!(
        "[#{n}] {}: {}\n",
        msg.subject,
        String::from_utf8_lossy(&msg.payload)
    );
    if let Some(h) = &msg.headers {
        for (k, v) in h.iter() {
            let _ = writeln!(text, "  {k}: {v}");
        }
    }
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::new(format!("writing to stdout: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_publish_subject, parse_duration};
    use std::time::Duration;

    #[test]
    fn publish_subjects() {
        assert!(check_publish_subject("--subject", "bench.x").is_ok());
        let e = check_publish_subject("--subject", "bench.*").unwrap_err();
        let e = e.to_string();
        assert!(
            e.starts_with("--subject: invalid publish subject \"bench.*\": wildcard token"),
            "{e}"
        );
        assert!(check_publish_subject("--subject", "a..b").is_err());
        assert!(check_publish_subject("--subject", "").is_err());
        assert!(check_publish_subject("--subject", "a b").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }
}
