//! Per-operation errors. Each carries the context needed to act on it; match on the
//! variants, not on the Display text, which is unspecified.
//!
//! Why a server could not be reached is typed too: every [`AttemptError`] of
//! [`ConnectError::AllFailed`] (and every
//! [`EventKind::ReconnectFailed`](crate::EventKind::ReconnectFailed)) carries an
//! [`AttemptCause`], which tells refused credentials ([`AttemptCause::is_auth`]) from an
//! unreachable server ([`AttemptCause::Dial`]), a peer that is not a NATS server, or a
//! link lost right after its handshake ([`AttemptCause::LinkLost`] with the
//! [`DisconnectReason`]).
//!
//! ```no_run
//! # async fn doc() {
//! match tether::connect("nats://127.0.0.1:4222").await {
//!     Err(tether::ConnectError::AllFailed { attempts })
//!         if attempts.iter().any(|a| a.error.is_auth()) =>
//!     {
//!         eprintln!("the server refused the credentials; fix them before retrying");
//!     }
//!     Err(e) => eprintln!("{e}"),
//!     Ok(_client) => {}
//! }
//! # }
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tether_proto::conn::{DisconnectReason, HandshakeError};
use tether_proto::server_err::{AuthErrorClass, ServerErr};
use tether_proto::ValidationError;

/// One failed attempt to reach a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// The server as configured or discovered.
    pub server: String,
    /// The socket address tried, when resolution got that far.
    pub address: Option<String>,
    /// What went wrong.
    pub error: AttemptCause,
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            Some(a) => write!(f, "{} ({a}): {}", self.server, self.error),
            None => write!(f, "{}: {}", self.server, self.error),
        }
    }
}

/// Why an attempt to reach a server failed ([`AttemptError`],
/// [`EventKind::ReconnectFailed`](crate::EventKind::ReconnectFailed)).
///
/// Match on it, or ask [`Self::is_auth`] / [`Self::auth_class`]; its Display is the text
/// the events and errors print.
///
/// ```no_run
/// # async fn doc() {
/// use tether::{AttemptCause, ConnectError, DialError};
///
/// match tether::connect("nats://127.0.0.1:4222").await {
///     Err(ConnectError::AllFailed { attempts }) => {
///         for a in &attempts {
///             match &a.error {
///                 e if e.is_auth() => eprintln!("{}: fix the credentials: {e}", a.server),
///                 AttemptCause::Dial(DialError::Timeout { .. }) => {
///                     eprintln!("{}: unreachable", a.server)
///                 }
///                 e => eprintln!("{}: {e}", a.server),
///             }
///         }
///     }
///     Err(e) => eprintln!("{e}"),
///     Ok(_client) => {}
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptCause {
    /// The credentials (a creds file, an nkey seed) could not be read; the text names
    /// the file and what to fix.
    Credentials(String),
    /// No TCP connection: the name did not resolve, or no address took the connection
    /// in time.
    Dial(DialError),
    /// The handshake failed: an -ERR from the server ([`HandshakeError::Server`], such as
    /// `Authorization Violation`), a peer that is not a NATS server, a timeout, ...
    Handshake(HandshakeError),
    /// TLS failed: the server's certificate was refused (unknown CA, name mismatch,
    /// expired), the server wants a client certificate, or the peer does not speak TLS.
    Tls(crate::tls::TlsError),
    /// The handshake completed, but the bytes that followed it ended the link at once.
    LinkLost(DisconnectReason),
    /// A planned switch reached, under this address, a server in lame duck mode: it goes
    /// on to the next server.
    LameDuckNode,
    /// A planned switch reached, under this address, the server the client is moving
    /// away from: it goes on to the next server.
    NodeBeingLeft,
}

impl AttemptCause {
    /// The server's -ERR, when the attempt ended with one (in the handshake, or right
    /// after it).
    pub fn server_err(&self) -> Option<&ServerErr> {
        match self {
            Self::Handshake(HandshakeError::Server(e))
            | Self::LinkLost(DisconnectReason::ServerError(e)) => Some(e),
            _ => None,
        }
    }

    /// The auth class of the server's -ERR (DESIGN semantics 5), when it is one:
    /// [`AuthErrorClass::Strike`] for refused credentials, [`AuthErrorClass::Expired`]
    /// for expired ones, [`AuthErrorClass::Transient`] for timeouts, connection limits
    /// and throttling.
    pub fn auth_class(&self) -> Option<AuthErrorClass> {
        self.server_err().and_then(ServerErr::auth_class)
    }

    /// True when the credentials are at fault: they could not be read or used, or the
    /// server refused them (an auth class of `Strike` or `Expired`; a `Transient` one,
    /// such as a connection limit, is not).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            Self::Credentials(_) | Self::Handshake(HandshakeError::Credentials(_))
        ) || matches!(
            self.auth_class(),
            Some(AuthErrorClass::Strike | AuthErrorClass::Expired)
        )
    }
}

impl fmt::Display for AttemptCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Credentials(e) => f.write_str(e),
            Self::Dial(e) => fmt::Display::fmt(e, f),
            Self::Handshake(e) => fmt::Display::fmt(e, f),
            Self::Tls(e) => fmt::Display::fmt(e, f),
            Self::LinkLost(e) => fmt::Display::fmt(e, f),
            Self::LameDuckNode => f.write_str("this address reaches a server in lame duck mode"),
            Self::NodeBeingLeft => {
                f.write_str("this address reaches the server the client is moving away from")
            }
        }
    }
}

/// Why no TCP connection to a server was made. Names are resolved again at every
/// attempt, and every address a name resolves to is tried (IPv6 and IPv4 alternated).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DialError {
    /// The DNS lookup of `host` failed.
    Dns {
        /// The host name.
        host: String,
        /// What the resolver said.
        error: String,
    },
    /// The DNS lookup of `host` did not complete within connection_timeout.
    DnsTimeout {
        /// The host name.
        host: String,
    },
    /// `host` resolved to no address.
    NoAddress {
        /// The host name.
        host: String,
    },
    /// Every address refused the connection or failed: one entry per address, in the
    /// order tried.
    Io(Vec<ConnectFailure>),
    /// connection_timeout passed before any address took the connection.
    Timeout {
        /// The addresses tried by then.
        tried: Vec<SocketAddr>,
    },
}

impl DialError {
    /// True when every address tried refused the connection (nothing listens there).
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Io(failures) if !failures.is_empty()
            && failures.iter().all(|e| e.kind == io::ErrorKind::ConnectionRefused))
    }

    /// The address to name in the attempt: the one address tried, or the last one a
    /// timeout left pending.
    pub(crate) fn address(&self) -> Option<String> {
        match self {
            Self::Io(f) if f.len() == 1 => Some(f[0].address.to_string()),
            Self::Timeout { tried } => tried.last().map(ToString::to_string),
            _ => None,
        }
    }
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns { host, error } => write!(f, "DNS lookup of {host} failed: {error}"),
            Self::DnsTimeout { host } => write!(f, "DNS lookup of {host} timed out"),
            Self::NoAddress { host } => write!(f, "{host} resolved to no address"),
            // One address: it is named in the attempt already, the error need not repeat it.
            Self::Io(failures) if failures.len() == 1 => f.write_str(&failures[0].message),
            Self::Io(failures) => {
                for (i, e) in failures.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{}: {}", e.address, e.message)?;
                }
                Ok(())
            }
            Self::Timeout { tried } => {
                f.write_str("TCP connect timed out (tried ")?;
                for (i, a) in tried.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// One address that did not take the TCP connection ([`DialError::Io`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectFailure {
    /// The address.
    pub address: SocketAddr,
    /// The error's kind (`ConnectionRefused`, ...).
    pub kind: io::ErrorKind,
    /// The error's text.
    pub message: String,
}

impl ConnectFailure {
    pub(crate) fn new(address: SocketAddr, e: &io::Error) -> Self {
        Self {
            address,
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

fn list(attempts: &[AttemptError]) -> String {
    attempts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Options that contradict each other or make no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// Two options that cannot hold together.
    #[error("contradictory options: {first} with {second}: {fix}")]
    Contradiction {
        /// The first option and its value.
        first: String,
        /// The second option and its value.
        second: String,
        /// What to change.
        fix: String,
    },
    /// An option with a value that cannot work.
    #[error("invalid option {option} = {value}: {fix}")]
    Invalid {
        /// The option.
        option: &'static str,
        /// Its value.
        value: String,
        /// What to change.
        fix: String,
    },
}

/// Connecting failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The options contradict each other.
    #[error(transparent)]
    Options(OptionsError),
    /// A server URL could not be parsed.
    #[error("invalid server URL: {0}")]
    InvalidUrl(String),
    /// Every server was tried once and none completed a handshake. Each attempt's
    /// [`AttemptCause`] says why.
    #[error("could not connect to any server: {}", list(.attempts))]
    AllFailed {
        /// Every server and address tried, and why it failed.
        attempts: Vec<AttemptError>,
    },
    /// The client was closed while connecting.
    #[error("the client was closed")]
    Closed,
    /// Must be called from within a tokio runtime.
    #[error("no tokio runtime: call connect from within a tokio runtime")]
    NoRuntime,
}

/// A publish was refused. Nothing was buffered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The outbound buffer is at its bounds.
    #[error("outbound buffer full ({bytes} bytes, {msgs} messages buffered, {}): {}",
        if *.connected { "connected" } else { "disconnected" },
        if *.connected { "the server is not keeping up; slow down or raise outbound_buffer" } else { "wait for the reconnect, or raise outbound_buffer" })]
    BufferFull {
        /// Encoded bytes buffered.
        bytes: u64,
        /// Messages buffered.
        msgs: u64,
        /// Whether a link was up.
        connected: bool,
    },
    /// This single frame exceeds the buffer's byte bound.
    #[error("frame of {frame} bytes exceeds the outbound buffer of {limit} bytes; raise outbound_buffer")]
    TooLargeForBuffer {
        /// Encoded frame size.
        frame: usize,
        /// The byte bound.
        limit: usize,
    },
    /// Header block plus payload exceeds the server's max_payload.
    #[error("message of {size} bytes exceeds the server's max_payload of {limit} bytes; split it or raise max_payload on the server")]
    MaxPayload {
        /// Header block plus payload.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The control line (subject, reply, sizes) is too long.
    #[error("control line of {len} bytes exceeds max_control_line {limit}; use shorter subjects")]
    ControlLineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A subject, reply subject or header is invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The server does not support headers.
    #[error("the server does not support headers (INFO headers: false); publish without headers")]
    HeadersNotSupported,
    /// Disconnected, and buffer_while_disconnected is off.
    #[error("disconnected and buffer_while_disconnected is off; retry after Reconnected")]
    Disconnected,
    /// The client is draining its publishes.
    #[error("the client is draining: publishing is closed")]
    Draining,
    /// The client is closed.
    #[error("the client is closed")]
    Closed,
    /// The first (lazy) connect failed.
    #[error(transparent)]
    Connect(Box<ConnectError>),
}

/// A subscription failed or ended with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The subject or queue group is invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The control line is too long.
    #[error("control line of {len} bytes exceeds max_control_line {limit}; use a shorter subject")]
    ControlLineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The server denied the subscription.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The server refused it: too many subscriptions.
    #[error("the server refused the subscription: {0}")]
    MaxSubscriptionsExceeded(String),
    /// Pending limits of zero would drop every message.
    #[error("pending limits of {msgs} messages / {bytes} bytes would drop every message; allow at least 1 of each (usize::MAX for no bound)")]
    InvalidPendingLimits {
        /// The message limit given.
        msgs: usize,
        /// The byte limit given.
        bytes: usize,
    },
    /// The client is closed or draining.
    #[error("the client is closed")]
    Closed,
    /// The first (lazy) connect failed.
    #[error(transparent)]
    Connect(Box<ConnectError>),
}

/// A request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No subscriber on the subject (the server's 503 status).
    #[error("no responders on subject {subject}")]
    NoResponders {
        /// The request subject.
        subject: String,
    },
    /// No reply within the timeout. A reply may still arrive later and is then dropped.
    #[error("request to {subject} timed out after {elapsed:?}")]
    Timeout {
        /// The request subject.
        subject: String,
        /// Time waited.
        elapsed: Duration,
    },
    /// The link dropped after the request was written.
    #[error("connection lost while waiting for the reply from {subject} (the request may have been processed: {maybe_processed})")]
    ConnectionLost {
        /// The request subject.
        subject: String,
        /// True when the frame was written, so a responder may have acted on it.
        maybe_processed: bool,
    },
    /// The server denied publishing the request.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The server refused the subscription of the reply inbox (permissions on
    /// `<inbox_prefix>.>`, or too many subscriptions): no reply can arrive. The next
    /// request subscribes a new inbox.
    #[error("the reply inbox for the request to {subject} was refused: {message} (the request may have been processed: {maybe_processed}); allow subscribing to the inbox prefix or set inbox_prefix")]
    InboxDenied {
        /// The request subject.
        subject: String,
        /// The server's text.
        message: String,
        /// True when the request's frame was written, so a responder may have acted on it.
        maybe_processed: bool,
    },
    /// The request could not be published.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The client is closed.
    #[error("the client is closed")]
    Closed,
}

/// A flush failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlushError {
    /// No PONG within flush_timeout.
    #[error("flush timed out after {0:?}")]
    Timeout(Duration),
    /// The link dropped before the PONG; these frames may be lost.
    #[error("connection lost before the flush was confirmed ({unconfirmed_msgs} messages, {unconfirmed_bytes} bytes unconfirmed)")]
    ConnectionLost {
        /// Messages written and not confirmed.
        unconfirmed_msgs: u64,
        /// Their bytes.
        unconfirmed_bytes: u64,
    },
    /// The client is closed.
    #[error("the client is closed")]
    Closed,
    /// The first (lazy) connect failed.
    #[error(transparent)]
    Connect(Box<ConnectError>),
}

/// A drain did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DrainError {
    /// Already closed.
    #[error("the client is already closed")]
    Closed,
}

/// Any tether error, for code that does not care which operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// See [`ConnectError`].
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// See [`PublishError`].
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// See [`SubscribeError`].
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// See [`RequestError`].
    #[error(transparent)]
    Request(#[from] RequestError),
    /// See [`FlushError`].
    #[error(transparent)]
    Flush(#[from] FlushError),
    /// See [`DrainError`].
    #[error(transparent)]
    Drain(#[from] DrainError),
}

/// What a retry layer should do with an error. Retrying never duplicates work the
/// server may already have done unless the answer says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryMethod {
    /// Retrying cannot help (invalid input, permissions, closed client).
    NoRetry,
    /// Retry now: nothing was done, and the client itself waits for the link (a request
    /// lost with its link before it was written, a flush whose link dropped).
    RetryImmediately,
    /// Retry after a backoff: nothing was done (buffer full, no responders, no server
    /// reachable, a flush that timed out).
    WaitAndRetry,
    /// The operation may already have taken effect (a request that timed out, or whose
    /// link dropped after it was written): retry after a backoff only if it is
    /// idempotent, else it may run twice.
    RetryIfIdempotent,
}

impl Error {
    /// What a retry layer should do.
    pub fn retry_method(&self) -> RetryMethod {
        match self {
            Error::Publish(p) | Error::Request(RequestError::Publish(p)) => publish_retry(p),
            Error::Request(r) => match r {
                RequestError::NoResponders { .. } => RetryMethod::WaitAndRetry,
                RequestError::Timeout { .. }
                | RequestError::ConnectionLost {
                    maybe_processed: true,
                    ..
                } => RetryMethod::RetryIfIdempotent,
                RequestError::ConnectionLost {
                    maybe_processed: false,
                    ..
                } => RetryMethod::RetryImmediately,
                _ => RetryMethod::NoRetry,
            },
            Error::Flush(FlushError::Timeout(_)) => RetryMethod::WaitAndRetry,
            Error::Flush(FlushError::ConnectionLost { .. }) => RetryMethod::RetryImmediately,
            Error::Flush(FlushError::Connect(_))
            | Error::Connect(ConnectError::AllFailed { .. }) => RetryMethod::WaitAndRetry,
            _ => RetryMethod::NoRetry,
        }
    }
}

fn publish_retry(p: &PublishError) -> RetryMethod {
    match p {
        PublishError::BufferFull { .. } | PublishError::Disconnected | PublishError::Connect(_) => {
            RetryMethod::WaitAndRetry
        }
        _ => RetryMethod::NoRetry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(address: &str, kind: io::ErrorKind) -> ConnectFailure {
        ConnectFailure::new(address.parse().unwrap(), &io::Error::from(kind))
    }

    /// The text of a dial failure is what it was as a string, and the attempt names the
    /// address only when one was tried alone (or was the last a timeout left pending).
    #[test]
    fn dial_errors_keep_their_text_and_name_the_address() {
        use io::ErrorKind::{ConnectionRefused, PermissionDenied};
        let one = DialError::Io(vec![failure("127.0.0.1:4222", ConnectionRefused)]);
        assert_eq!(
            one.to_string(),
            io::Error::from(ConnectionRefused).to_string()
        );
        assert_eq!(one.address().as_deref(), Some("127.0.0.1:4222"));
        assert!(one.is_refused());
        let two = DialError::Io(vec![
            failure("[::1]:4222", ConnectionRefused),
            failure("127.0.0.1:4222", PermissionDenied),
        ]);
        let refused = io::Error::from(ConnectionRefused);
        let denied = io::Error::from(PermissionDenied);
        assert_eq!(
            two.to_string(),
            format!("[::1]:4222: {refused}; 127.0.0.1:4222: {denied}")
        );
        assert_eq!(two.address(), None);
        assert!(!two.is_refused(), "one address did not refuse");
        let timeout = DialError::Timeout {
            tried: vec!["[::1]:1".parse().unwrap(), "127.0.0.1:1".parse().unwrap()],
        };
        assert_eq!(
            timeout.to_string(),
            "TCP connect timed out (tried [::1]:1, 127.0.0.1:1)"
        );
        assert_eq!(timeout.address().as_deref(), Some("127.0.0.1:1"));
        let dns = DialError::DnsTimeout { host: "a".into() };
        assert_eq!(dns.to_string(), "DNS lookup of a timed out");
        assert_eq!(dns.address(), None);
    }

    #[test]
    fn auth_failures_are_told_from_other_causes() {
        use tether_proto::server_err::ServerErr as E;
        let refused = |e: E| AttemptCause::Handshake(HandshakeError::Server(e));
        #[rustfmt::skip]
        let table: Vec<(AttemptCause, bool, Option<AuthErrorClass>)> = vec![
            (refused(E::AuthViolation), true, Some(AuthErrorClass::Strike)),
            (refused(E::AuthRevoked), true, Some(AuthErrorClass::Strike)),
            (refused(E::AuthExpired), true, Some(AuthErrorClass::Expired)),
            (refused(E::MaxConnections), false, Some(AuthErrorClass::Transient)),
            (refused(E::AuthTimeout), false, Some(AuthErrorClass::Transient)),
            (refused(E::TlsRequired), false, None),
            (AttemptCause::Credentials("cannot read".into()), true, None),
            (AttemptCause::Handshake(HandshakeError::Credentials("bad seed".into())), true, None),
            (AttemptCause::Handshake(HandshakeError::Eof), false, None),
            (AttemptCause::Dial(DialError::NoAddress { host: "a".into() }), false, None),
            (AttemptCause::LinkLost(DisconnectReason::ServerError(E::AuthViolation)), true, Some(AuthErrorClass::Strike)),
            (AttemptCause::LinkLost(DisconnectReason::Eof), false, None),
        ];
        for (cause, auth, class) in table {
            assert_eq!(cause.is_auth(), auth, "is_auth: {cause:?}");
            assert_eq!(cause.auth_class(), class, "auth_class: {cause:?}");
        }
        assert_eq!(
            refused(E::AuthViolation).server_err(),
            Some(&E::AuthViolation)
        );
        assert_eq!(
            refused(E::AuthViolation).to_string(),
            "server refused the connection: Authorization Violation (it refused the \
             credentials: check the user and password, token, nkey seed or creds this client \
             sends)"
        );
        assert_eq!(
            refused(E::MaxConnections).to_string(),
            "server refused the connection: maximum connections exceeded"
        );
    }

    #[test]
    fn retrying_never_runs_a_maybe_processed_request_twice_unless_told_so() {
        let lost = |maybe_processed| {
            Error::Request(RequestError::ConnectionLost {
                subject: "s".into(),
                maybe_processed,
            })
        };
        let timeout = Error::Request(RequestError::Timeout {
            subject: "s".into(),
            elapsed: Duration::from_secs(1),
        });
        assert_eq!(lost(true).retry_method(), RetryMethod::RetryIfIdempotent);
        assert_eq!(timeout.retry_method(), RetryMethod::RetryIfIdempotent);
        assert_eq!(lost(false).retry_method(), RetryMethod::RetryImmediately);
        // A request that could not be published is retried like a publish.
        for p in [
            PublishError::Disconnected,
            PublishError::BufferFull {
                bytes: 1,
                msgs: 1,
                connected: true,
            },
            PublishError::Connect(Box::new(ConnectError::Closed)),
        ] {
            assert_eq!(
                Error::Request(RequestError::Publish(p.clone())).retry_method(),
                Error::Publish(p).retry_method()
            );
        }
        assert_eq!(
            Error::Publish(PublishError::Closed).retry_method(),
            RetryMethod::NoRetry
        );
        assert_eq!(
            Error::Request(RequestError::PermissionDenied("x".into())).retry_method(),
            RetryMethod::NoRetry
        );
    }
}
