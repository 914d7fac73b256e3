//! The handshake on a new link: INFO, then CONNECT and two PINGs, then their PONGs.

use std::fmt;
use std::time::Instant;

use crate::decode::Decoder;
use crate::encode;
use crate::error::ProtocolError;
use crate::info::{ConnectInfo, ServerInfo};
use crate::server_err::ServerErr;

use super::{Auth, ConnEvent, Connection, LinkState, PingPurpose};

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
    /// The server requires TLS, which this build does not support yet.
    TlsRequired,
    /// The client's credentials could not be used (the nonce could not be signed).
    Credentials(String),
    /// The peer closed the connection during the handshake.
    Eof,
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
            Self::Server(e) => write!(f, "server refused the connection: {e}"),
            Self::NotNats { excerpt } => write!(
                f,
                "not a NATS server: expected `INFO {{...}}`, got `{excerpt}`; check the URL and port"
            ),
            Self::Protocol(e) => write!(f, "protocol error during handshake: {e}"),
            Self::TlsRequired => f.write_str(
                "the server requires TLS, which this tether build does not support yet",
            ),
            Self::Credentials(e) => write!(f, "could not sign the server's nonce: {e}"),
            Self::Eof => f.write_str("the peer closed the connection during the handshake"),
            Self::Io(e) => write!(f, "i/o error during handshake: {e}"),
            Self::Timeout { stage } => write!(f, "handshake timed out {stage}"),
        }
    }
}

impl Connection {
    /// A transport is connected; the handshake starts and must end by `deadline`.
    pub fn handle_transport_connected(&mut self, now: Instant, deadline: Instant, auth: Auth) {
        self.reset_link(now);
        self.state = LinkState::AwaitInfo;
        self.handshake_deadline = Some(deadline);
        self.auth = auth;
    }

    pub(super) fn is_handshaking(&self) -> bool {
        matches!(self.state, LinkState::AwaitInfo | LinkState::AwaitPongs(_))
    }

    /// The server's first INFO: check it, then queue CONNECT and two PINGs.
    pub(super) fn send_connect(&mut self, info: Box<ServerInfo>) {
        if info.tls_required {
            self.info = Some(info);
            self.fail_handshake(HandshakeError::TlsRequired);
            return;
        }
        self.max_payload = info.max_payload;
        self.headers_supported = info.headers;
        let sig = match (&self.auth.signer, &info.nonce) {
            (Some(sign), Some(nonce)) => match sign(nonce.as_bytes()) {
                Ok(sig) => Some(sig),
                Err(e) => {
                    self.info = Some(info);
                    self.fail_handshake(HandshakeError::Credentials(e));
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
            version: self.config.version.clone(),
            name: self.config.name.clone(),
            echo: self.config.echo,
            headers: info.headers,
            no_responders: info.headers,
            tls_required: false,
            user: self.auth.user.clone(),
            pass: self.auth.pass.clone(),
            auth_token: self.auth.token.clone(),
            jwt: self.auth.jwt.clone(),
            nkey: self.auth.nkey.clone(),
            sig,
        };
        self.info = Some(info);
        encode::encode_connect(&mut self.control, &connect);
        encode::encode_ping(&mut self.control);
        encode::encode_ping(&mut self.control);
        self.state = LinkState::AwaitPongs(2);
    }

    pub(super) fn complete_handshake(&mut self, now: Instant) {
        self.state = LinkState::Up;
        self.handshake_deadline = None;
        self.stats.connects += 1;
        self.last_inbound = now;
        // Frames over the server's limit are removed before anything is replayed.
        self.remove_over_max_payload();
        self.replay_subs();
        for token in std::mem::take(&mut self.flush_waiting) {
            self.queue_ping(PingPurpose::Flush(token));
        }
        let info = self.info.clone().unwrap_or_default();
        self.events.push_back(ConnEvent::Connected { info });
    }

    pub(super) fn fail_handshake(&mut self, error: HandshakeError) {
        self.reset_link_state();
        self.events.push_back(ConnEvent::HandshakeFailed(error));
    }

    /// Make this core stop decoding right after a handshake completes, leaving the rest of
    /// the read buffer for the session core that adopts the link (see [`Self::adopt_link`]).
    pub fn set_pause_after_handshake(&mut self, pause: bool) {
        self.pause_after_handshake = pause;
    }

    /// Take over a link whose handshake another core completed (with
    /// [`Self::set_pause_after_handshake`]): limits from its INFO apply, the subscription
    /// replay goes ahead of the buffered frames, and waiting flushes get their PING.
    pub fn adopt_link(&mut self, now: Instant, info: Box<ServerInfo>) {
        if self.state != LinkState::Down {
            self.handle_close_link();
        }
        self.last_inbound = now;
        self.last_write_progress = now;
        self.decoder = Decoder::new(self.config.decoder);
        self.max_payload = info.max_payload;
        self.headers_supported = info.headers;
        self.info = Some(info);
        self.complete_handshake(now);
    }
}
