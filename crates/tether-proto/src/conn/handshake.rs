//! The handshake on a new link, sans-IO: the server's INFO, then CONNECT and two PINGs,
//! then their PONGs. [`Handshake`] runs it apart from the session, so a planned switch can
//! dial a second link while the first one carries on; [`Connection::adopt_link`] takes the
//! [`Established`] link over.
//!
//! The handshake waits for both PONGs: an INFO with this connection's own limits (its
//! account's max_payload) can come between them, and it applies before anything buffered
//! is written.

use std::fmt;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::decode::Decoder;
use crate::encode;
use crate::error::ProtocolError;
use crate::info::{ConnectInfo, ServerInfo};
use crate::op::ServerOp;
use crate::server_err::{AuthErrorClass, ServerErr};

use crate::time::saturating_add as later;

use super::timer::Timer;
use super::{Auth, Config, ConnEvent, Connection, DisconnectReason, LinkState, PingPurpose};

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The server answered with an -ERR (authorization and the like).
    Server(ServerErr),
    /// The peer sent something that is not a NATS INFO.
    NotNats {
        /// The first bytes received, escaped.
        excerpt: String,
    },
    /// The server sent malformed protocol.
    Protocol(ProtocolError),
    /// TLS is wanted (a `tls://` URL, TLS options) but the server's INFO offers neither
    /// `tls_required` nor `tls_available`: it does not speak TLS.
    TlsUnavailable,
    /// The client's credentials could not be used (the nonce could not be signed).
    Credentials(String),
    /// The peer closed the connection during the handshake.
    Eof,
    /// The peer closed the connection before sending INFO (a server configured with TLS
    /// `handshake_first` does so when the client waits for INFO instead of starting TLS).
    ClosedBeforeInfo,
    /// A read or write failed.
    Io(String),
    /// The handshake did not complete within connection_timeout.
    Timeout {
        /// The stage reached.
        stage: &'static str,
    },
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Server(e) => {
                write!(f, "server refused the connection: {e}")?;
                match e.auth_class() {
                    Some(AuthErrorClass::Strike) => f.write_str(
                        " (it refused the credentials: check the user and password, token, \
                         nkey seed or creds this client sends)",
                    ),
                    Some(AuthErrorClass::Expired) => {
                        f.write_str(" (the credentials have expired: renew them)")
                    }
                    _ => Ok(()),
                }
            }
            Self::NotNats { excerpt } => write!(
                f,
                "not a NATS server: expected `INFO {{...}}`, got `{excerpt}`; check the URL and port"
            ),
            Self::Protocol(e) => write!(f, "protocol error during handshake: {e}"),
            Self::TlsUnavailable => f.write_str(
                "TLS is wanted (a tls:// URL or TLS options) but the server does not offer \
                 TLS (its INFO has neither tls_required nor tls_available); use a nats:// URL \
                 without TLS options for this server, or enable TLS on the server",
            ),
            Self::Credentials(e) => write!(f, "could not sign the server's nonce: {e}"),
            Self::Eof => f.write_str("the peer closed the connection during the handshake"),
            Self::ClosedBeforeInfo => f.write_str(
                "the peer closed the connection before sending INFO; a server configured with \
                 TLS handshake_first expects the TLS handshake first: set tls_first",
            ),
            Self::Io(e) => write!(f, "i/o error during handshake: {e}"),
            Self::Timeout { stage } if *stage == INFO_STAGE => write!(
                f,
                "handshake timed out {stage} (a server configured with TLS handshake_first \
                 waits for the client to start TLS: set tls_first)"
            ),
            Self::Timeout { stage } => write!(f, "handshake timed out {stage}"),
        }
    }
}

/// The stage of [`HandshakeError::Timeout`] while the server's INFO is awaited.
const INFO_STAGE: &str = "waiting for the server's INFO";

/// A link whose handshake completed: give it to [`Connection::adopt_link`].
#[derive(Debug)]
pub struct Established {
    /// The server's INFO (the last one seen during the handshake).
    pub info: Box<ServerInfo>,
    /// Bytes read after the handshake's last PONG: the session's first input.
    pub leftover: BytesMut,
}

/// Whether a link's handshake uses TLS (DESIGN.md, wire handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TlsIntent {
    /// No TLS was asked for: the link upgrades only when the server's INFO says
    /// `tls_required`.
    #[default]
    IfRequired,
    /// TLS was asked for (a `tls://` URL, TLS options): the link upgrades after the
    /// plaintext INFO, and fails with [`HandshakeError::TlsUnavailable`] when the INFO
    /// offers no TLS.
    Always,
    /// The transport is TLS already (`tls_first`: the TLS handshake came before INFO).
    Established,
}

/// Where a handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the server's INFO.
    ExpectInfo,
    /// The INFO asks for (or the client wants) TLS: the driver runs the TLS handshake on
    /// the transport, then calls [`Handshake::handle_tls_established`].
    Upgrade,
    /// CONNECT, PING, PING queued; waiting for this many PONGs.
    ExpectPongs(u8),
    /// Completed or failed: the outcome is (or was) ready.
    Over,
}

/// One link's handshake. Its handlers take `now` like [`Connection`]'s, though only the
/// deadline needs it. The driver owns the socket and calls, until
/// [`Self::poll_outcome`] returns the outcome:
/// - [`Self::poll_transmit`] for bytes to write, then [`Self::handle_written`];
/// - [`Self::handle_read`] with every chunk read;
/// - [`Self::handle_timeout`] when the deadline passes, [`Self::handle_link_lost`] on EOF
///   or an I/O error.
#[derive(Debug)]
pub struct Handshake {
    stage: Stage,
    deadline: Instant,
    auth: Auth,
    version: String,
    name: Option<String>,
    echo: bool,
    tls: TlsIntent,
    decoder: Decoder,
    /// PONGs, CONNECT and its PINGs, not yet handed to the writer.
    out: BytesMut,
    /// The chunk handed to the writer, and how much of it the socket accepted.
    in_flight: Option<(Bytes, usize)>,
    info: Option<Box<ServerInfo>>,
    outcome: Option<Result<Established, HandshakeError>>,
}

impl Handshake {
    /// A transport is connected: the handshake starts and must end by `deadline`. `auth`
    /// is what CONNECT carries; `config` gives the name, version and echo it sends and the
    /// inbound limits.
    pub fn new(_now: Instant, deadline: Instant, auth: Auth, config: &Config) -> Self {
        Self {
            stage: Stage::ExpectInfo,
            deadline,
            auth,
            version: config.version.clone(),
            name: config.name.clone(),
            echo: config.echo,
            tls: TlsIntent::IfRequired,
            decoder: Decoder::new(config.decoder),
            out: BytesMut::new(),
            in_flight: None,
            info: None,
            outcome: None,
        }
    }

    /// This handshake with TLS as `tls` says (default [`TlsIntent::IfRequired`]).
    #[must_use]
    pub fn with_tls(mut self, tls: TlsIntent) -> Self {
        self.tls = tls;
        self
    }

    /// True while the driver must run the TLS handshake on the transport (the server's
    /// plaintext INFO was read and TLS is required or wanted), then call
    /// [`Self::handle_tls_established`].
    pub fn wants_tls(&self) -> bool {
        self.stage == Stage::Upgrade
    }

    /// The TLS handshake on the transport completed: CONNECT and its PINGs are queued.
    pub fn handle_tls_established(&mut self, _now: Instant) {
        if self.stage != Stage::Upgrade {
            return;
        }
        self.tls = TlsIntent::Established;
        match self.info.take() {
            Some(info) => self.send_connect(info),
            None => self.fail(HandshakeError::Protocol(ProtocolError::UnknownOperation {
                excerpt: String::from("TLS established before any INFO"),
            })),
        }
    }

    /// Bytes read from the socket. Decodes until the handshake is over; what follows its
    /// last PONG goes to [`Established::leftover`], a failure discards the rest. Bytes
    /// that follow the plaintext INFO before a TLS upgrade are not the server's (it waits
    /// for the client's TLS hello): they are dropped.
    pub fn handle_read(&mut self, _now: Instant, buf: &mut BytesMut) {
        if self.stage == Stage::Upgrade {
            buf.clear();
            return;
        }
        while !matches!(self.stage, Stage::Over | Stage::Upgrade) {
            match self.decoder.decode(buf) {
                Ok(Some(op)) => self.handle_op(op, buf),
                Ok(None) => return,
                Err(e) => {
                    let error = if self.stage == Stage::ExpectInfo {
                        let excerpt = match &e {
                            ProtocolError::UnknownOperation { excerpt } => excerpt.clone(),
                            other => other.to_string(),
                        };
                        HandshakeError::NotNats { excerpt }
                    } else {
                        HandshakeError::Protocol(e)
                    };
                    self.fail(error);
                }
            }
        }
        if self.outcome.as_ref().is_some_and(Result::is_err) {
            buf.clear();
        }
    }

    fn handle_op(&mut self, op: ServerOp, buf: &mut BytesMut) {
        match op {
            ServerOp::Ping => encode::encode_pong(&mut self.out),
            ServerOp::Info(info) => match self.stage {
                Stage::ExpectInfo => self.first_info(info, buf),
                // The INFO between the PONGs carries this connection's own limits.
                _ => self.info = Some(info),
            },
            ServerOp::Pong => match self.stage {
                Stage::ExpectPongs(n) if n > 1 => self.stage = Stage::ExpectPongs(n - 1),
                Stage::ExpectPongs(_) => {
                    self.stage = Stage::Over;
                    self.outcome = Some(Ok(Established {
                        info: self.info.take().unwrap_or_default(),
                        leftover: buf.split(),
                    }));
                }
                _ => {}
            },
            ServerOp::Err(text) => self.fail(HandshakeError::Server(ServerErr::parse(&text))),
            // A server never delivers before CONNECT; ignore rather than fail.
            ServerOp::Msg(_) | ServerOp::Ok => {}
        }
    }

    /// The server's first INFO: upgrade to TLS first when it or the client asks for it,
    /// else queue CONNECT and two PINGs.
    fn first_info(&mut self, info: Box<ServerInfo>, buf: &mut BytesMut) {
        let upgrade = match self.tls {
            TlsIntent::Established => false,
            TlsIntent::IfRequired => info.tls_required,
            TlsIntent::Always if info.tls_required || info.tls_available => true,
            TlsIntent::Always => {
                self.fail(HandshakeError::TlsUnavailable);
                return;
            }
        };
        if upgrade {
            self.info = Some(info);
            self.stage = Stage::Upgrade;
            buf.clear();
        } else {
            self.send_connect(info);
        }
    }

    /// Queue CONNECT and two PINGs for the server whose INFO is `info`.
    fn send_connect(&mut self, info: Box<ServerInfo>) {
        let sig = match (&self.auth.signer, &info.nonce) {
            (Some(sign), Some(nonce)) => match sign(nonce.as_bytes()) {
                Ok(sig) => Some(sig),
                Err(e) => {
                    self.fail(HandshakeError::Credentials(e));
                    return;
                }
            },
            _ => None,
        };
        let connect = ConnectInfo {
            verbose: false,
            pedantic: false,
            protocol: 1,
            lang: String::from("rust"),
            version: self.version.clone(),
            name: self.name.clone(),
            echo: self.echo,
            headers: info.headers,
            no_responders: info.headers,
            tls_required: self.tls == TlsIntent::Established,
            user: self.auth.user.clone(),
            pass: self.auth.pass.clone(),
            auth_token: self.auth.token.clone(),
            jwt: self.auth.jwt.clone(),
            nkey: self.auth.nkey.clone(),
            sig,
        };
        self.info = Some(info);
        encode::encode_connect(&mut self.out, &connect);
        encode::encode_ping(&mut self.out);
        encode::encode_ping(&mut self.out);
        self.stage = Stage::ExpectPongs(2);
    }

    fn fail(&mut self, error: HandshakeError) {
        if self.stage == Stage::Over {
            // Completed, with a PONG still to write: the link is handed over as it is, and
            // its first read or write reports the loss.
            self.out.clear();
            self.in_flight = None;
        } else {
            self.stage = Stage::Over;
            self.outcome = Some(Err(error));
        }
    }

    /// The next chunk to write, if any. Returns `None` while a chunk is in flight and once
    /// the handshake failed. A PONG owed to the server when the handshake completes is
    /// still written here, before the outcome is given.
    pub fn poll_transmit(&mut self, _now: Instant) -> Option<Bytes> {
        let failed = self.outcome.as_ref().is_some_and(Result::is_err);
        if self.in_flight.is_some() || self.out.is_empty() || failed {
            return None;
        }
        let chunk = self.out.split().freeze();
        self.in_flight = Some((chunk.clone(), 0));
        Some(chunk)
    }

    /// The socket accepted `n` bytes of the chunk from [`Self::poll_transmit`].
    pub fn handle_written(&mut self, _now: Instant, n: usize) {
        if let Some((chunk, pos)) = &mut self.in_flight {
            *pos += n;
            if *pos >= chunk.len() {
                self.in_flight = None;
            }
        }
    }

    /// Time passed: past the deadline, the handshake fails.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.deadline {
            return;
        }
        let stage = match self.stage {
            Stage::ExpectInfo => INFO_STAGE,
            Stage::Upgrade => "during the TLS handshake",
            _ => "waiting for the PONG after CONNECT",
        };
        self.fail(HandshakeError::Timeout { stage });
    }

    /// The link ended (EOF, `error` None, or an I/O error).
    pub fn handle_link_lost(&mut self, _now: Instant, error: Option<String>) {
        self.fail(match error {
            Some(e) => HandshakeError::Io(e),
            None if self.stage == Stage::ExpectInfo => HandshakeError::ClosedBeforeInfo,
            None => HandshakeError::Eof,
        });
    }

    /// The outcome, once: the established link (after everything queued is written), or
    /// why the handshake failed.
    pub fn poll_outcome(&mut self) -> Option<Result<Established, HandshakeError>> {
        let unwritten = self.in_flight.is_some() || !self.out.is_empty();
        if unwritten && self.outcome.as_ref().is_some_and(Result::is_ok) {
            return None;
        }
        self.outcome.take()
    }
}

impl Connection {
    /// Take over a link whose [`Handshake`] completed (a new link, or a planned switch's
    /// after [`Self::retire_link`]): limits from its INFO apply, the subscription replay
    /// starts, waiting flushes get their PING, and the bytes read after the handshake are
    /// handled. A link still up is closed first.
    ///
    /// The replay covers the subscriptions that exist now, in sid order, each with its
    /// remaining auto-unsubscribe count. [`Self::poll_transmit`] hands it out in chunks
    /// of about [`REPLAY_CHUNK_BYTES`](super::REPLAY_CHUNK_BYTES), one per call, so a
    /// driver that releases its lock between writes never holds it for the whole
    /// replay; nothing else is written before the last chunk. Then the buffered frames go
    /// in their original order, and then what was queued meanwhile: a subscription made
    /// during the replay is not part of it (its SUB is queued like any frame), an
    /// unsubscribe of one not reached yet removes it from the replay (no UNSUB is sent;
    /// with a count, its SUB carries the remaining count), an unsubscribe of one already
    /// replayed is queued. Every PING of the link follows the replay, so its first PONG
    /// confirms all of it. [`ConnEvent::Replayed`] says when the replay and the frames
    /// buffered before it are written; [`ConnStats::last_replay`](super::ConnStats) has
    /// its figures.
    ///
    /// Returns what is left of those bytes: an operation not complete yet, which the
    /// link's next reads complete. The caller's read buffer starts with it.
    #[must_use = "the bytes left over start the link's read buffer"]
    pub fn adopt_link(&mut self, now: Instant, link: Established) -> BytesMut {
        if self.state != LinkState::Down {
            self.close_link(now, DisconnectReason::Requested);
        }
        self.decoder = Decoder::new(self.config.decoder);
        self.max_payload = link.info.max_payload;
        self.headers_supported = link.info.headers;
        self.info = Some(link.info);
        self.state = LinkState::Up;
        self.timers
            .set(Timer::Keepalive, later(now, self.config.ping_interval));
        self.stats.connects += 1;
        // Frames over the server's limit are removed before anything is replayed.
        self.remove_over_max_payload();
        self.start_replay(now);
        for token in std::mem::take(&mut self.flush_waiting) {
            self.queue_ping(PingPurpose::Flush(token));
        }
        let info = self.info.clone().unwrap_or_default();
        self.events.push_back(ConnEvent::Connected { info });
        let mut leftover = link.leftover;
        self.handle_read(now, &mut leftover);
        leftover
    }
}
