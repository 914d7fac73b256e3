//! `tether`: publish, subscribe, request, reply and bench against NATS with the tether
//! client, in the shape of the `nats` CLI.
//!
//! Layout: one module per subcommand under `cmd/`, each with an `Args` struct (clap
//! derive; its doc comment is the subcommand's help, its `after_help` the examples) and
//! an `async fn run(args, &Global)`. The [`commands!`] list below ties a subcommand name
//! to its module, so adding one (e.g. `chaos`) is `mod chaos;` in `cmd/mod.rs` plus one
//! line in that list.
//!
//! Errors end the process with `error: <one line>` on stderr and exit status 1; Ctrl-C
//! exits with status 130. Logging goes to stderr through `tracing-subscriber`: `warn` by
//! default, `-v` info, `-vv` debug, `-vvv` trace; `RUST_LOG` overrides.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod cmd;
mod error;
mod util;

pub use error::CliError;

/// Options every subcommand takes. Its `Debug` shows the token and password as
/// `<redacted>`.
#[derive(Clone, clap::Args)]
pub struct Global {
    /// NATS server URL(s), comma-separated [default: nats://127.0.0.1:4222; `bench`
    /// starts a local nats-server instead]
    #[arg(short, long, global = true, env = "NATS_URL", value_name = "URL")]
    pub server: Option<String>,

    /// User credentials file (JWT and nkey seed, as `nsc` writes it) for pub, sub, req
    /// and reply; read again at every connect attempt
    #[arg(
        long,
        global = true,
        env = "NATS_CREDS",
        value_name = "FILE",
        conflicts_with = "nkey"
    )]
    pub creds: Option<std::path::PathBuf>,

    /// File holding a user nkey seed (`SU...`) for pub, sub, req and reply
    #[arg(long, global = true, env = "NATS_NKEY", value_name = "FILE")]
    pub nkey: Option<std::path::PathBuf>,

    /// Token to authenticate with
    #[arg(long, global = true, env = "NATS_TOKEN", value_name = "TOKEN", hide_env_values = true,
          conflicts_with_all = ["creds", "nkey", "user"])]
    pub token: Option<String>,

    /// User name to authenticate with (with --password)
    #[arg(long, global = true, env = "NATS_USER", value_name = "USER", requires = "password",
          conflicts_with_all = ["creds", "nkey"])]
    pub user: Option<String>,

    /// Password for --user
    #[arg(
        long,
        global = true,
        env = "NATS_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    pub password: Option<String>,

    /// CA certificate file (PEM) to verify the servers' TLS certificates with; turns TLS on
    #[arg(long, global = true, env = "NATS_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for servers that verify clients (mTLS), with --tls-key
    #[arg(
        long,
        global = true,
        env = "NATS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of --tls-cert
    #[arg(
        long,
        global = true,
        env = "NATS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,

    /// TLS handshake before the server's INFO, for servers with `handshake_first`
    #[arg(long, global = true, env = "NATS_TLS_FIRST")]
    pub tls_first: bool,

    /// More logging on stderr: -v info, -vv debug, -vvv trace (RUST_LOG overrides)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl std::fmt::Debug for Global {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("Global")
            .field("server", &self.server)
            .field("creds", &self.creds)
            .field("nkey", &self.nkey)
            .field("token", &redacted(&self.token))
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_first", &self.tls_first)
            .field("verbose", &self.verbose)
            .finish()
    }
}

impl Global {
    /// Connect options with the credentials and TLS options given.
    pub fn connect_options(&self) -> Result<tether::ConnectOptions, CliError> {
        self.apply(tether::ConnectOptions::new())
    }

    /// `opts` with the credentials (`--creds`, `--nkey`, `--token`, `--user`) and TLS
    /// options (`--tls-*`) given.
    pub fn apply(&self, opts: tether::ConnectOptions) -> Result<tether::ConnectOptions, CliError> {
        let mut opts = opts;
        if let Some(ca) = &self.tls_ca {
            opts = opts.tls_ca_file(ca);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            opts = opts.tls_client_cert(cert, key);
        }
        if self.tls_first {
            opts = opts.tls_first(true);
        }
        if let Some(token) = &self.token {
            return Ok(opts.token(token));
        }
        if let (Some(user), Some(pass)) = (&self.user, &self.password) {
            return Ok(opts.user_and_password(user, pass));
        }
        if let Some(path) = &self.creds {
            return Ok(opts.credentials_file(path));
        }
        if let Some(path) = &self.nkey {
            let seed = std::fs::read_to_string(path).map_err(|e| {
                CliError::new(format!(
                    "cannot read the nkey seed file {}: {e}",
                    path.display()
                ))
            })?;
            return Ok(opts.nkey(seed.trim()));
        }
        Ok(opts)
    }

    /// The server URL(s) given, or the default local server.
    pub fn server_or_default(&self) -> &str {
        self.server
            .as_deref()
            .unwrap_or(tether::options::DEFAULT_SERVER)
    }
}

/// Declares the subcommands: `Variant(module)` runs `cmd::module::run` with
/// `cmd::module::Args`. The subcommand name is the variant's name in kebab case.
macro_rules! commands {
    ($($variant:ident($module:ident)),* $(,)?) => {
        #[derive(Debug, Subcommand)]
        enum Command {
            $($variant(cmd::$module::Args),)*
        }

        impl Command {
            async fn run(self, global: &Global) -> Result<(), CliError> {
                match self {
                    $(Command::$variant(args) => cmd::$module::run(args, global).await,)*
                }
            }
        }
    };
}

commands! {
    Pub(publish),
    Sub(subscribe),
    Req(request),
    Reply(reply),
    Bench(bench),
    Chaos(chaos),
    Js(js),
}

/// A NATS command-line client built on tether.
#[derive(Debug, Parser)]
#[command(name = "tether", version, propagate_version = true, after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    global: Global,

    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  tether sub 'orders.>'                       print every message on orders.*
  tether pub orders.new '{\"id\":1}' --count 3  publish a message three times
  tether reply time.now 'twelve o clock'      answer requests on time.now
  tether req time.now '' --timeout 500ms      send a request, print the reply
  tether bench pubsub --msgs 200000 --size 128
  NATS_URL=nats://127.0.0.1:4222 tether bench reqrep --json
  tether chaos                                 kill and restart a local server 5 times
  tether chaos --fault blackhole --json        black-hole the link, report as JSON
  tether js stream add ORDERS --subjects 'orders.>' --storage memory
  tether js pub orders.new '{\"id\":1}'         publish, wait for the stream's ack
  tether js consume ORDERS workers --create   pull, print and ack each message";

/// How long `main` waits for each client still open when the command ends.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Cli { global, command } = cli;
    let outcome = runtime.block_on(async {
        let run = command.run(&global);
        tokio::pin!(run);
        let outcome = tokio::select! {
            r = &mut run => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        };
        // Close what the command left open (after an error or Ctrl-C) while it, and a
        // local server it may have started, still exist.
        util::close_all(CLOSE_TIMEOUT).await;
        outcome
    });
    // Whatever the command left running (clients, a local server) is dropped here.
    drop(runtime);
    match outcome {
        Some(Ok(())) => ExitCode::SUCCESS,
        Some(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        None => {
            eprintln!("interrupted");
            ExitCode::from(130)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::Cli;

    #[test]
    fn debug_redacts_the_token_and_password() {
        for args in [
            &["tether", "--token", "t0p-secret", "pub", "a", "b"][..],
            &[
                "tether",
                "--user",
                "me",
                "--password",
                "t0p-secret",
                "pub",
                "a",
                "b",
            ],
        ] {
            let cli = Cli::try_parse_from(args).expect("parses");
            let shown = format!("{cli:?}");
            assert!(!shown.contains("t0p-secret"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }
}
