//! The connection state machine: one client session across links.
//!
//! [`Connection`] holds everything that outlives a single TCP link (the subscription table,
//! the outbound buffer, pending flushes) and the state of the current link (handshake
//! stage, PINGs in flight, unconfirmed counts, timers). It does no I/O and reads no clock.
//!
//! # Call order
//! The driver owns the socket and calls, in a loop:
//! - [`Connection::handle_transport_connected`] once a TCP link is up;
//! - [`Connection::handle_read`] with every chunk of bytes read;
//! - [`Connection::poll_transmit`] for a chunk to write, then [`Connection::handle_written`]
//!   with the number of bytes the socket accepted;
//! - [`Connection::poll_timeout`] for the next deadline, and [`Connection::handle_timeout`]
//!   when it passes;
//! - [`Connection::handle_link_lost`] on EOF or an I/O error;
//! - [`Connection::poll_event`] and [`Connection::poll_message`] to drain outputs.
//!
//! Handles call [`Connection::publish`], [`Connection::subscribe`],
//! [`Connection::unsubscribe`] and [`Connection::flush`], then wake the driver.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::decode::{Decoder, DecoderLimits};
use crate::encode;
use crate::error::ProtocolError;
use crate::headers::HeaderMap;
use crate::info::{ConnectInfo, ServerInfo};
use crate::op::{Msg, ServerOp};
use crate::outbound::{BufferLimits, Counts, FrameKind, OutboundBuffer};
use crate::server_err::ServerErr;
use crate::time::saturating_add as later;

/// Default for [`Config::ping_interval`]: a PING after 30 s without inbound bytes.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Upper bound of the default [`Config::pong_timeout`] (the smaller of this and the ping interval).
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`Config::max_pings_outstanding`].
pub const DEFAULT_MAX_PINGS_OUTSTANDING: usize = 2;
/// Default for [`Config::write_stall_timeout`].
pub const DEFAULT_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`Config::confirm_interval`]: 20 ms.
///
/// What a dropped link reports as unconfirmed is what was written after the last PING
/// whose PONG came back. The timer starts at the first frame written after a PING, so
/// the next PING covers that frame at most `confirm_interval` (plus a timer tick) later,
/// and its PONG confirms it one round trip after that: the worst case is
/// `confirm_interval + RTT` of traffic (plus the moment the loss takes to be noticed). At 1,000 msg/s, 20 ms leaves the report
/// under 50 messages for round trips up to about 25 ms; no cadence can beat the round
/// trip itself. The cost is at most 50 PINGs (6 bytes each way) a second, and only while
/// publishing: an idle link sends none.
pub const DEFAULT_CONFIRM_INTERVAL: Duration = Duration::from_millis(20);
/// Default for [`Config::confirm_bytes`]: a confirm PING after 1 MiB written.
///
/// Above 1 MiB per `confirm_interval` (about 50 MB/s with the default 20 ms) this
/// trigger fires first and keeps the bytes at risk near 1 MiB: with `resend_unconfirmed`
/// those bytes are retained in the outbound buffer (8 MiB by default), so a time trigger
/// alone would fill it at high rates. Even at 1 GB/s it means about 1,000 PINGs a second,
/// some 6 KB/s each way, which throughput does not notice.
pub const DEFAULT_CONFIRM_BYTES: usize = 1024 * 1024;
/// Default byte bound of the outbound buffer (8 MiB).
pub const DEFAULT_BUFFER_BYTES: usize = 8 * 1024 * 1024;
/// Default message bound of the outbound buffer.
pub const DEFAULT_BUFFER_MSGS: usize = 1_000_000;
/// Default for [`Config::assumed_max_payload`], used until the first INFO.
pub const DEFAULT_ASSUMED_MAX_PAYLOAD: usize = 1024 * 1024;
/// Default for [`Config::max_control_line`] (the server's default limit).
pub const DEFAULT_MAX_CONTROL_LINE: usize = 4096;
/// How long a link is read after a closing -ERR, so deliveries and PONGs already sent
/// are not thrown away.
pub const CLOSING_READ_GRACE: Duration = Duration::from_secs(1);
/// PONGs owed to the server and not yet written: more means the server floods PINGs
/// while it does not read what we write, and the link is dropped as stale (each PONG
/// would otherwise sit in memory until the write stall is noticed).
pub const MAX_UNWRITTEN_PONGS: usize = 4096;

/// Settings of the state machine (the async client maps its options onto these).
#[derive(Debug, Clone)]
#[allow(clippy::struct_excessive_bools)] // issue 12 step 3; remove then
pub struct Config {
    /// A PING goes out after this long without inbound bytes.
    pub ping_interval: Duration,
    /// How long a written PING may wait for its PONG.
    pub pong_timeout: Duration,
    /// More unanswered PINGs than this is a stale link.
    pub max_pings_outstanding: usize,
    /// Data pending and no byte accepted by the socket for this long is a stale link.
    pub write_stall_timeout: Duration,
    /// While unconfirmed data exists, a confirm PING at least this often.
    pub confirm_interval: Duration,
    /// ... or after this many bytes written since the last PING.
    pub confirm_bytes: usize,
    /// Bounds of the outbound buffer.
    pub buffer: BufferLimits,
    /// Accept publishes while no link is up.
    pub buffer_while_disconnected: bool,
    /// Retain written, unconfirmed PUB/HPUB frames and resend them after a reconnect.
    pub resend_unconfirmed: bool,
    /// Retain written, unconfirmed request frames and resend them after a reconnect
    /// (`request_retry_after_reconnect`).
    pub retain_requests: bool,
    /// max_payload until the first INFO says otherwise.
    pub assumed_max_payload: usize,
    /// Outbound control lines longer than this are refused before they are buffered.
    pub max_control_line: usize,
    /// Inbound limits.
    pub decoder: DecoderLimits,
    /// Whether the server may deliver this connection's own publishes back to it.
    pub echo: bool,
    /// Connection name sent in CONNECT.
    pub name: Option<String>,
    /// Client version sent in CONNECT.
    pub version: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ping_interval: DEFAULT_PING_INTERVAL,
            pong_timeout: DEFAULT_PONG_TIMEOUT,
            max_pings_outstanding: DEFAULT_MAX_PINGS_OUTSTANDING,
            write_stall_timeout: DEFAULT_WRITE_STALL_TIMEOUT,
            confirm_interval: DEFAULT_CONFIRM_INTERVAL,
            confirm_bytes: DEFAULT_CONFIRM_BYTES,
            buffer: BufferLimits {
                max_bytes: DEFAULT_BUFFER_BYTES,
                max_msgs: DEFAULT_BUFFER_MSGS,
            },
            buffer_while_disconnected: true,
            resend_unconfirmed: false,
            retain_requests: false,
            assumed_max_payload: DEFAULT_ASSUMED_MAX_PAYLOAD,
            max_control_line: DEFAULT_MAX_CONTROL_LINE,
            decoder: DecoderLimits::default(),
            echo: true,
            name: None,
            version: String::from("0.0.0"),
        }
    }
}

/// Signs the server's nonce (the bytes of INFO's `nonce` string) with the client's nkey;
/// returns the signature as base64url without padding, or why it could not sign. The
/// core stays free of cryptography: the caller brings the key.
pub type NonceSigner = Arc<dyn Fn(&[u8]) -> Result<String, String> + Send + Sync>;

/// Credentials sent in CONNECT for one link.
#[derive(Clone, Default)]
pub struct Auth {
    /// User name.
    pub user: Option<String>,
    /// Password.
    pub pass: Option<String>,
    /// Token.
    pub token: Option<String>,
    /// User JWT (decentralized auth); sent with the nonce's signature.
    pub jwt: Option<String>,
    /// Public nkey (nkey auth without a JWT); sent with the nonce's signature.
    pub nkey: Option<String>,
    /// Signs INFO's nonce for `sig`, when the server sends one.
    pub signer: Option<NonceSigner>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("user", &self.user)
            .field("pass", &self.pass.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("jwt", &self.jwt.as_ref().map(|_| "<redacted>"))
            .field("nkey", &self.nkey)
            .field("signer", &self.signer.as_ref().map(|_| "<key>"))
            .finish()
    }
}

/// Where the current link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// No link.
    Down,
    /// TCP up, waiting for the server's INFO.
    AwaitInfo,
    /// CONNECT, PING, PING written; waiting for this many PONGs.
    AwaitPongs(u8),
    /// Handshake complete.
    Up,
    /// A closing -ERR arrived: no more writes, reading on until EOF or the grace ends.
    Closing,
}

/// Why a link went down.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The server closed the connection.
    Eof,
    /// A read or write failed.
    Io(String),
    /// The server sent bytes that are not the NATS protocol.
    Protocol(ProtocolError),
    /// The server sent an -ERR that closes the connection.
    ServerError(ServerErr),
    /// A PING went unanswered for pong_timeout.
    PongTimeout {
        /// The configured bound.
        timeout: Duration,
    },
    /// More PINGs unanswered than max_pings_outstanding.
    TooManyPingsOutstanding {
        /// The configured bound.
        max: usize,
    },
    /// Data pending and no byte accepted by the socket for write_stall_timeout.
    WriteStall {
        /// The configured bound.
        timeout: Duration,
    },
    /// The server sent more PINGs than [`MAX_UNWRITTEN_PONGS`] while not reading our
    /// PONGs.
    PongBacklog {
        /// The bound.
        max: usize,
    },
    /// The link was closed on purpose (close, force_reconnect, a planned switch).
    Requested,
}

impl DisconnectReason {
    /// True when the link was found dead by tether's own liveness checks.
    pub fn is_stale(&self) -> bool {
        matches!(
            self,
            Self::PongTimeout { .. }
                | Self::TooManyPingsOutstanding { .. }
                | Self::WriteStall { .. }
                | Self::PongBacklog { .. }
        )
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Eof => f.write_str("the server closed the connection"),
            Self::Io(e) => write!(f, "i/o error: {e}"),
            Self::Protocol(e) => write!(f, "protocol error: {e}"),
            Self::ServerError(e) => write!(f, "server error: {e}"),
            Self::PongTimeout { timeout } => {
                write!(f, "stale connection: no PONG within {timeout:?}")
            }
            Self::TooManyPingsOutstanding { max } => {
                write!(f, "stale connection: more than {max} PINGs unanswered")
            }
            Self::WriteStall { timeout } => write!(
                f,
                "stale connection: write stalled, no byte accepted by the socket for {timeout:?}"
            ),
            Self::PongBacklog { max } => write!(
                f,
                "stale connection: the server sent more than {max} PINGs without reading our PONGs"
            ),
            Self::Requested => f.write_str("closed on request"),
        }
    }
}

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

/// Why a subscription ended on the server's or the protocol's account.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubEndReason {
    /// Its auto-unsubscribe count was reached.
    MaxReached,
    /// The server denied it: `Permissions Violation for Subscription to ...`.
    PermissionDenied(String),
    /// The server refused it: `maximum subscriptions exceeded`.
    MaxSubscriptionsExceeded(String),
}

/// Why buffered or unconfirmed frames were removed and will never be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemovedReason {
    /// An INFO lowered max_payload below their size.
    MaxPayloadLowered {
        /// The new limit.
        max_payload: usize,
    },
    /// The server closed the link with an -ERR our own bytes caused (a poison frame):
    /// the frames written since the last PONG are dropped so they cannot loop.
    PoisonFrame,
}

/// What the state machine reports to the driver.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConnEvent {
    /// The handshake completed; buffered frames and the subscription replay are queued.
    Connected {
        /// The server's INFO (the last one seen during the handshake).
        info: Box<ServerInfo>,
    },
    /// The handshake failed; the driver closes the socket.
    HandshakeFailed(HandshakeError),
    /// The link went down. Buffered publish frames stay for the next link.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
        /// PUB/HPUB frames written after the last confirmed PING: possibly lost.
        unconfirmed: Counts,
        /// Requests whose frames are still buffered (they go out after reconnect).
        buffered_requests: Vec<u64>,
    },
    /// An INFO arrived after the handshake.
    InfoUpdated(Box<ServerInfo>),
    /// The server entered lame duck mode.
    LameDuck,
    /// A flush was confirmed by its PONG.
    FlushDone(u64),
    /// A flush's link went down before its PONG.
    FlushFailed {
        /// The flush token.
        token: u64,
        /// What was unconfirmed when the link went down.
        unconfirmed: Counts,
    },
    /// A non-fatal -ERR that matched nothing more specific.
    ServerError(String),
    /// `Permissions Violation for Publish to "subject"` (or `with Reply of "reply"`).
    PublishDenied {
        /// The subject, when the error names one.
        subject: Option<String>,
        /// The reply subject, when the error names one.
        reply: Option<String>,
        /// The server's text.
        message: String,
    },
    /// A subscription ended (the driver ends its stream).
    SubscriptionEnded {
        /// Its sid.
        sid: u64,
        /// Why.
        reason: SubEndReason,
    },
    /// Frames removed and never sent.
    FramesRemoved {
        /// Why.
        reason: RemovedReason,
        /// How many.
        counts: Counts,
    },
    /// Room freed in the outbound buffer (publishers waiting may retry).
    BufferSpace,
}

/// Why a publish was not buffered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishRefused {
    /// The buffer is at one of its bounds.
    BufferFull {
        /// Bytes counted.
        bytes: u64,
        /// Frames counted.
        msgs: u64,
        /// Whether a link is up.
        connected: bool,
    },
    /// The frame alone exceeds the byte bound.
    TooLargeForBuffer {
        /// Encoded frame size.
        frame: usize,
        /// The byte bound.
        limit: usize,
    },
    /// Header block plus payload exceeds max_payload.
    MaxPayload {
        /// Header block plus payload.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The control line would exceed max_control_line.
    ControlLineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The server does not support headers.
    HeadersNotSupported,
    /// No link is up and buffer_while_disconnected is off.
    Disconnected,
}

/// What a PING was sent for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingPurpose {
    /// Inbound silence for ping_interval.
    Keepalive,
    /// Unconfirmed data exists.
    Confirm,
    /// A user flush (or drain, or close) with this token.
    Flush(u64),
    /// The last PING on a link being retired after a planned switch.
    Retire,
}

#[derive(Debug, Clone, Copy)]
struct PingOut {
    purpose: PingPurpose,
    sent_at: Instant,
    /// Cumulative PUB/HPUB frames written on this link when the PING was written.
    written: Counts,
    /// Cumulative retained (plain PUB) frames written when the PING was written.
    retained: u64,
}

#[derive(Debug, Clone)]
struct SubState {
    subject: String,
    queue: Option<String>,
    max: Option<u64>,
    delivered: u64,
    /// `delivered` when the SUB went out on the current link: the server counts an
    /// UNSUB's maximum from there, so a count given later is sent relative to it.
    base: u64,
    /// UNSUB sent by drain; deliveries still accepted until [`Connection::forget`].
    draining: bool,
}

/// Totals kept by the state machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Messages delivered by the server.
    pub in_msgs: u64,
    /// Payload bytes delivered (header block included).
    pub in_bytes: u64,
    /// Publish frames fully written.
    pub out_msgs: u64,
    /// Payload bytes of the publish frames written (header block included).
    pub out_bytes: u64,
    /// Messages for sids no longer subscribed.
    pub unknown_sid: u64,
    /// `Permissions Violation for Publish` errors that matched no request.
    pub publish_denied: u64,
    /// Frames removed (lowered max_payload, poison frames).
    pub frames_removed: u64,
    /// Handshakes completed.
    pub connects: u64,
    /// Messages delivered without their header block because it could not be parsed.
    pub malformed_headers: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    None,
    Control,
    Data,
}

/// The sans-IO connection. See the module docs for the call order.
#[derive(Debug)]
pub struct Connection {
    config: Config,
    decoder: Decoder,
    state: LinkState,
    handshake_deadline: Option<Instant>,
    closing: Option<(Instant, DisconnectReason)>,
    auth: Auth,
    info: Option<Box<ServerInfo>>,
    max_payload: usize,
    headers_supported: bool,

    out: OutboundBuffer,
    /// Handshake frames, written before any data while the link is not up.
    control: BytesMut,
    control_in_flight: Bytes,
    control_pos: usize,
    source: Source,
    last_write_progress: Instant,

    pings_queued: VecDeque<PingPurpose>,
    pings_out: VecDeque<PingOut>,
    /// PONGs queued on this link and not yet written.
    pongs_unwritten: usize,
    written: Counts,
    written_retained: u64,
    confirmed: Counts,
    confirmed_retained: u64,
    /// When the first publish frame written since the last PING went out.
    unpinged_since: Option<Instant>,
    unpinged_bytes: usize,
    last_inbound: Instant,
    last_keepalive: Option<Instant>,
    flush_waiting: Vec<u64>,

    subs: HashMap<u64, SubState>,
    sub_order: Vec<u64>,
    /// SUBs not yet confirmed by a PONG, with the number of PINGs queued before each.
    subs_since_pong: Vec<(u64, u64)>,
    /// PINGs queued and PONGs received on this link (after the handshake).
    pings_total: u64,
    pongs_total: u64,
    next_sid: u64,

    events: VecDeque<ConnEvent>,
    messages: VecDeque<Msg>,
    stats: ConnStats,
    pause_after_handshake: bool,
    drop_partial_after_rewind: bool,
    /// Flushes asked before a planned switch, until the retired link confirms its part.
    flushes_on_old_link: Vec<u64>,
    /// A planned switch's cut: the current (new) link's deliveries held until the
    /// retired link shows where the two streams join.
    gate: Option<Gate>,
    /// Requests cancelled while their frames were in flight: not resent after a rewind.
    cancelled_in_flight: Vec<u64>,
    /// Of those, the ones the current link already confirmed.
    flushes_done_on_new_link: Vec<u64>,
}

impl Connection {
    /// A session with no link yet.
    pub fn new(config: Config, now: Instant) -> Self {
        let decoder = Decoder::new(config.decoder);
        let max_payload = config.assumed_max_payload;
        Self {
            out: OutboundBuffer::new(config.buffer),
            decoder,
            state: LinkState::Down,
            handshake_deadline: None,
            closing: None,
            auth: Auth::default(),
            info: None,
            max_payload,
            headers_supported: true,
            control: BytesMut::new(),
            control_in_flight: Bytes::new(),
            control_pos: 0,
            source: Source::None,
            last_write_progress: now,
            pings_queued: VecDeque::new(),
            pings_out: VecDeque::new(),
            pongs_unwritten: 0,
            written: Counts::default(),
            written_retained: 0,
            confirmed: Counts::default(),
            confirmed_retained: 0,
            unpinged_since: None,
            unpinged_bytes: 0,
            last_inbound: now,
            last_keepalive: None,
            flush_waiting: Vec::new(),
            subs: HashMap::new(),
            sub_order: Vec::new(),
            subs_since_pong: Vec::new(),
            pings_total: 0,
            pongs_total: 0,
            next_sid: 1,
            events: VecDeque::new(),
            messages: VecDeque::new(),
            stats: ConnStats::default(),
            pause_after_handshake: false,
            drop_partial_after_rewind: false,
            flushes_on_old_link: Vec::new(),
            gate: None,
            cancelled_in_flight: Vec::new(),
            flushes_done_on_new_link: Vec::new(),
            config,
        }
    }

    // ===== state =====

    /// The current link state.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// True when the handshake has completed on the current link.
    pub fn is_up(&self) -> bool {
        self.state == LinkState::Up
    }

    /// The last INFO seen.
    pub fn server_info(&self) -> Option<&ServerInfo> {
        self.info.as_deref()
    }

    /// The max_payload in force.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Totals.
    pub fn stats(&self) -> ConnStats {
        self.stats
    }

    /// PUB/HPUB frames counted against the buffer bounds.
    pub fn buffered(&self) -> Counts {
        self.out.counted()
    }

    /// PUB/HPUB frames not yet written.
    pub fn unsent(&self) -> Counts {
        self.out.unsent()
    }

    /// PUB/HPUB frames written on this link and not yet confirmed by a PONG.
    pub fn unconfirmed(&self) -> Counts {
        Counts {
            msgs: self.written.msgs - self.confirmed.msgs,
            bytes: self.written.bytes - self.confirmed.bytes,
        }
    }

    /// False after a closing -ERR: the driver stops writing, even a chunk half written
    /// (what it holds is rewound and resent on the next link).
    pub fn may_write(&self) -> bool {
        self.state != LinkState::Closing
    }

    /// True when nothing waits to be written.
    pub fn is_write_idle(&self) -> bool {
        self.out.is_idle() && self.control.is_empty() && self.source == Source::None
    }

    /// Number of live subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    // ===== handle: inputs from the driver =====

    /// A transport is connected; the handshake starts and must end by `deadline`.
    pub fn handle_transport_connected(&mut self, now: Instant, deadline: Instant, auth: Auth) {
        self.reset_link(now);
        self.state = LinkState::AwaitInfo;
        self.handshake_deadline = Some(deadline);
        self.auth = auth;
    }

    /// Bytes read from the socket. Decodes every complete op in `buf` and leaves the
    /// rest there for the next call.
    pub fn handle_read(&mut self, now: Instant, buf: &mut BytesMut) {
        if buf.is_empty() {
            return;
        }
        self.last_inbound = now;
        loop {
            if matches!(self.state, LinkState::Down) {
                buf.clear();
                return;
            }
            match self.decoder.decode(buf) {
                Ok(Some(op)) => {
                    let was_handshaking = self.is_handshaking();
                    self.handle_op(now, op);
                    if was_handshaking && self.pause_after_handshake && self.state == LinkState::Up
                    {
                        // The rest belongs to the session core that adopts this link.
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    if self.state == LinkState::AwaitInfo {
                        let excerpt = match &e {
                            ProtocolError::UnknownOperation { excerpt } => excerpt.clone(),
                            other => other.to_string(),
                        };
                        self.fail_handshake(HandshakeError::NotNats { excerpt });
                    } else if self.is_handshaking() {
                        self.fail_handshake(HandshakeError::Protocol(e));
                    } else {
                        self.link_down(DisconnectReason::Protocol(e));
                    }
                    buf.clear();
                    return;
                }
            }
        }
    }

    fn is_handshaking(&self) -> bool {
        matches!(self.state, LinkState::AwaitInfo | LinkState::AwaitPongs(_))
    }

    fn handle_op(&mut self, now: Instant, op: ServerOp) {
        match op {
            ServerOp::Msg(msg) => self.handle_current_msg(msg),
            ServerOp::Ping => self.queue_pong(),
            ServerOp::Pong => self.handle_pong(now),
            ServerOp::Info(info) => self.handle_info(info),
            ServerOp::Ok => {}
            ServerOp::Err(text) => self.handle_err(text),
        }
    }

    fn is_queue_sub(&self, sid: u64) -> bool {
        self.subs.get(&sid).is_some_and(|s| s.queue.is_some())
    }

    /// A delivery on the current link: held while a planned switch's gate is closed.
    fn handle_current_msg(&mut self, msg: Msg) {
        let queue = self.is_queue_sub(msg.sid);
        if let Some(g) = self.gate.as_mut() {
            if msg.sid == g.marker {
                if let Some(seq) = marker_seq(&msg.payload) {
                    g.segment = g.segment.max(seq);
                }
                return;
            }
            // Queue groups get one copy per group, and the probe is the driver's own.
            if !queue && msg.sid != g.exempt {
                g.held.push_back((g.segment, msg));
                return;
            }
        }
        self.handle_msg(msg);
    }

    fn handle_msg(&mut self, msg: Msg) {
        if self.is_handshaking() {
            // A server never delivers before CONNECT; ignore rather than fail.
            return;
        }
        self.stats.in_msgs += 1;
        self.stats.in_bytes += msg.wire_size as u64;
        if msg.malformed_headers {
            self.stats.malformed_headers += 1;
        }
        let sid = msg.sid;
        let Some(sub) = self.subs.get_mut(&sid) else {
            self.stats.unknown_sid += 1;
            return;
        };
        sub.delivered += 1;
        let done = sub.max.is_some_and(|m| sub.delivered >= m);
        self.messages.push_back(msg);
        if done {
            self.remove_sub(sid);
            self.events.push_back(ConnEvent::SubscriptionEnded {
                sid,
                reason: SubEndReason::MaxReached,
            });
        }
    }

    fn queue_pong(&mut self) {
        match self.state {
            LinkState::Up => {
                if self.pongs_unwritten >= MAX_UNWRITTEN_PONGS {
                    self.link_down(DisconnectReason::PongBacklog {
                        max: MAX_UNWRITTEN_PONGS,
                    });
                    return;
                }
                self.pongs_unwritten += 1;
                let start = self.out.pending_mut().len();
                encode::encode_pong(self.out.pending_mut());
                let len = self.out.pending_mut().len() - start;
                self.out.commit(len, 0, FrameKind::Pong);
            }
            LinkState::AwaitInfo | LinkState::AwaitPongs(_) => {
                encode::encode_pong(&mut self.control);
            }
            LinkState::Down | LinkState::Closing => {}
        }
    }

    fn handle_pong(&mut self, now: Instant) {
        match self.state {
            LinkState::AwaitPongs(n) => {
                if n <= 1 {
                    self.complete_handshake(now);
                } else {
                    self.state = LinkState::AwaitPongs(n - 1);
                }
            }
            LinkState::Up | LinkState::Closing => {
                let Some(ping) = self.pings_out.pop_front() else {
                    return;
                };
                // This PONG answers PING number `pongs_total`: the SUBs written before that
                // PING are now known to be accepted.
                self.pongs_total += 1;
                let answered = self.pongs_total;
                self.subs_since_pong.retain(|(mark, _)| *mark >= answered);
                self.confirmed = ping.written;
                if ping.retained > self.confirmed_retained {
                    self.out
                        .release_retained(ping.retained - self.confirmed_retained);
                    self.confirmed_retained = ping.retained;
                    self.events.push_back(ConnEvent::BufferSpace);
                }
                if let PingPurpose::Flush(token) = ping.purpose {
                    if self.flushes_on_old_link.contains(&token) {
                        // Asked before a planned switch: the retired link must confirm too.
                        self.flushes_done_on_new_link.push(token);
                    } else {
                        self.events.push_back(ConnEvent::FlushDone(token));
                    }
                }
            }
            LinkState::Down | LinkState::AwaitInfo => {}
        }
    }

    fn handle_info(&mut self, info: Box<ServerInfo>) {
        match self.state {
            LinkState::AwaitInfo => {
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
            LinkState::AwaitPongs(_) => {
                // The INFO between the PONGs carries this connection's own limits.
                self.max_payload = info.max_payload;
                self.info = Some(info);
            }
            LinkState::Up | LinkState::Closing => {
                // Only frames not yet handed to the writer can be removed: a chunk in
                // flight cannot be recalled. A frame in it over the new limit reaches the
                // server, whose `Maximum Payload Violation` reports it (FramesRemoved,
                // poison frame) with everything else unconfirmed; it is never resent.
                let lowered = info.max_payload < self.max_payload;
                self.max_payload = info.max_payload;
                // Later INFOs may repeat `ldm`: act on the first one of this link only.
                let ldm = info.ldm && !self.info.as_ref().is_some_and(|i| i.ldm);
                self.info = Some(info.clone());
                if lowered {
                    self.remove_over_max_payload();
                }
                self.events.push_back(ConnEvent::InfoUpdated(info));
                if ldm {
                    self.events.push_back(ConnEvent::LameDuck);
                }
            }
            LinkState::Down => {}
        }
    }

    fn remove_over_max_payload(&mut self) {
        let limit = self.max_payload;
        let removed = self.out.remove_pending(|f| f.payload_len as usize > limit);
        if removed.msgs > 0 {
            self.stats.frames_removed += removed.msgs;
            self.events.push_back(ConnEvent::FramesRemoved {
                reason: RemovedReason::MaxPayloadLowered { max_payload: limit },
                counts: removed,
            });
            self.events.push_back(ConnEvent::BufferSpace);
        }
    }

    fn handle_err(&mut self, text: String) {
        let err = ServerErr::parse(&text);
        if self.is_handshaking() {
            self.fail_handshake(HandshakeError::Server(err));
            return;
        }
        match err {
            err if err.is_fatal() => {
                if err.is_ours() {
                    self.remove_poison();
                }
                self.begin_closing(DisconnectReason::ServerError(err));
            }
            ServerErr::SubPermission {
                subject,
                queue,
                sid,
                any_queue,
                text,
            } => self.end_refused_subs(&subject, queue.as_deref(), sid, any_queue, &text),
            ServerErr::PubPermission {
                subject,
                reply,
                text,
            } => {
                self.events.push_back(ConnEvent::PublishDenied {
                    subject,
                    reply,
                    message: text,
                });
            }
            ServerErr::MaxSubscriptions => {
                if let Some((_, sid)) = self.subs_since_pong.pop() {
                    self.remove_sub(sid);
                    self.events.push_back(ConnEvent::SubscriptionEnded {
                        sid,
                        reason: SubEndReason::MaxSubscriptionsExceeded(text),
                    });
                } else {
                    self.events.push_back(ConnEvent::ServerError(text));
                }
            }
            _ => self.events.push_back(ConnEvent::ServerError(text)),
        }
    }

    /// A closing -ERR our own bytes caused: what was written since the last PONG is the
    /// likely poison, reported as removed (not unconfirmed) and never resent.
    fn remove_poison(&mut self) {
        let removed = self.out.discard_retained();
        let unconfirmed = self.unconfirmed();
        let mut counts = Counts {
            msgs: unconfirmed.msgs.max(removed.msgs),
            bytes: unconfirmed.bytes.max(removed.bytes),
        };
        // The server rejects a large frame after its control line, often before it is
        // fully written: that frame is the likely poison. It is dropped after the rewind,
        // never resent.
        if let Some(f) = self.out.partial_front().filter(|f| f.kind.is_publish()) {
            counts.msgs += 1;
            counts.bytes += u64::from(f.len);
            self.drop_partial_after_rewind = true;
        }
        self.events.push_back(ConnEvent::BufferSpace);
        // They are reported as removed, not as unconfirmed.
        self.confirmed = self.written;
        self.confirmed_retained = self.written_retained;
        if counts.msgs > 0 {
            self.stats.frames_removed += counts.msgs;
            self.events.push_back(ConnEvent::FramesRemoved {
                reason: RemovedReason::PoisonFrame,
                counts,
            });
        }
    }

    /// A `Permissions Violation for Subscription`: end the subscriptions it names.
    fn end_refused_subs(
        &mut self,
        subject: &str,
        queue: Option<&str>,
        sid: Option<u64>,
        any_queue: bool,
        text: &str,
    ) {
        // A sid names exactly one subscription; else the subject and the queue (none: the
        // plain subscriptions only, so a permission that allows only queue subscriptions
        // on S does not end those).
        let sids: Vec<u64> = match sid {
            Some(sid) => self
                .subs
                .get(&sid)
                .filter(|s| s.subject == subject)
                .map(|_| sid)
                .into_iter()
                .collect(),
            None => self
                .sub_order
                .iter()
                .copied()
                .filter(|sid| {
                    self.subs.get(sid).is_some_and(|s| {
                        s.subject == subject && (any_queue || s.queue.as_deref() == queue)
                    })
                })
                .collect(),
        };
        if sids.is_empty() {
            self.events
                .push_back(ConnEvent::ServerError(text.to_owned()));
        }
        for sid in sids {
            self.remove_sub(sid);
            self.events.push_back(ConnEvent::SubscriptionEnded {
                sid,
                reason: SubEndReason::PermissionDenied(text.to_owned()),
            });
        }
    }

    /// The publisher's denied publish matched no request: count it.
    pub fn note_publish_denied(&mut self) {
        self.stats.publish_denied += 1;
    }

    fn begin_closing(&mut self, reason: DisconnectReason) {
        if self.state == LinkState::Up {
            self.state = LinkState::Closing;
            // The deadline is set by the next handle_timeout/poll_timeout with a real now;
            // use last_inbound, which is "now" for a read.
            self.closing = Some((self.last_inbound + CLOSING_READ_GRACE, reason));
        }
    }

    fn complete_handshake(&mut self, now: Instant) {
        self.state = LinkState::Up;
        self.handshake_deadline = None;
        self.stats.connects += 1;
        self.last_inbound = now;
        // Frames over the server's limit are removed before anything is replayed.
        self.remove_over_max_payload();
        // Subscription replay (with remaining auto-unsubscribe counts) goes ahead of the
        // buffered frames, in one pipelined write.
        let mut replay = BytesMut::new();
        let mut frames = Vec::new();
        for sid in &self.sub_order {
            // Subscriptions being drained are not subscribed again.
            let Some(s) = self.subs.get_mut(sid).filter(|s| !s.draining) else {
                continue;
            };
            s.base = s.delivered;
            let start = replay.len();
            encode::encode_sub(&mut replay, &s.subject, s.queue.as_deref(), *sid);
            if let Some(max) = s.max {
                encode::encode_unsub(&mut replay, *sid, Some(max.saturating_sub(s.delivered)));
            }
            frames.push(crate::outbound::Frame {
                len: (replay.len() - start) as u32,
                payload_len: 0,
                kind: FrameKind::Control,
            });
            // The replay goes ahead of every PING of this link: the first PONG confirms
            // it. Until then a `maximum subscriptions exceeded` can name a replayed SUB
            // (a server restarted with a lower limit), which must end that subscription
            // rather than leave a stream that silently receives nothing.
            self.subs_since_pong.push((0, *sid));
        }
        if !replay.is_empty() {
            self.out.prepend(&replay, frames);
        }
        for token in std::mem::take(&mut self.flush_waiting) {
            self.queue_ping(PingPurpose::Flush(token));
        }
        let info = self.info.clone().unwrap_or_default();
        self.events.push_back(ConnEvent::Connected { info });
    }

    fn fail_handshake(&mut self, error: HandshakeError) {
        self.reset_link_state();
        self.events.push_back(ConnEvent::HandshakeFailed(error));
    }

    /// The link ended (EOF or an I/O error). During a handshake this is a handshake failure.
    pub fn handle_link_lost(&mut self, now: Instant, error: Option<String>) {
        let _ = now;
        if self.is_handshaking() {
            self.fail_handshake(match error {
                Some(e) => HandshakeError::Io(e),
                None => HandshakeError::Eof,
            });
            return;
        }
        let reason = match self.closing.take() {
            Some((_, reason)) => reason,
            None => match error {
                Some(e) => DisconnectReason::Io(e),
                None => DisconnectReason::Eof,
            },
        };
        self.link_down(reason);
    }

    /// Close the current link on purpose (close, force_reconnect). Reports like any loss.
    pub fn handle_close_link(&mut self) {
        if self.is_handshaking() {
            self.reset_link_state();
        } else if self.state != LinkState::Down {
            self.link_down(DisconnectReason::Requested);
        }
    }

    fn link_down(&mut self, reason: DisconnectReason) {
        if self.state == LinkState::Down {
            return;
        }
        let unconfirmed = self.unconfirmed();
        // Retained frames (resend_unconfirmed) go first, then what was never written.
        let cancelled = std::mem::take(&mut self.cancelled_in_flight);
        self.out.rewind(|f| Self::kept_at_rewind(&cancelled, f));
        if std::mem::take(&mut self.drop_partial_after_rewind) {
            // The poison frame cut in half is first now (retained frames were discarded).
            self.out.drop_first_pending();
        }
        let buffered_requests: Vec<u64> = self.out.buffered_requests().collect();
        // Flushes waiting for a PONG on this link.
        let mut failed = Vec::new();
        for p in self.pings_queued.drain(..) {
            if let PingPurpose::Flush(t) = p {
                failed.push(t);
            }
        }
        for p in self.pings_out.drain(..) {
            if let PingPurpose::Flush(t) = p.purpose {
                failed.push(t);
            }
        }
        if self.config.resend_unconfirmed {
            // The frames are resent, so the flush re-arms on the next link.
            self.flush_waiting.extend(failed);
        } else {
            for token in failed {
                self.events
                    .push_back(ConnEvent::FlushFailed { token, unconfirmed });
            }
        }
        self.reset_link_state();
        self.events.push_back(ConnEvent::Disconnected {
            reason,
            unconfirmed,
            buffered_requests,
        });
    }

    fn reset_link_state(&mut self) {
        self.drop_partial_after_rewind = false;
        self.state = LinkState::Down;
        self.handshake_deadline = None;
        self.closing = None;
        self.control.clear();
        self.control_in_flight = Bytes::new();
        self.control_pos = 0;
        if self.source == Source::Data || self.out.has_in_flight() {
            let cancelled = std::mem::take(&mut self.cancelled_in_flight);
            self.out.rewind(|f| Self::kept_at_rewind(&cancelled, f));
        }
        self.cancelled_in_flight.clear();
        self.source = Source::None;
        self.pings_queued.clear();
        self.pings_out.clear();
        self.pongs_unwritten = 0;
        self.reset_link_counters();
        self.decoder = Decoder::new(self.config.decoder);
    }

    /// Per-link accounting starts again (a new link, or a planned switch).
    fn reset_link_counters(&mut self) {
        // PINGs still queued (a planned switch keeps them) go out on the next link.
        self.pings_total = self.pings_queued.len() as u64;
        self.pongs_total = 0;
        self.written = Counts::default();
        self.written_retained = 0;
        self.confirmed = Counts::default();
        self.confirmed_retained = 0;
        self.unpinged_since = None;
        self.unpinged_bytes = 0;
        self.last_keepalive = None;
        self.subs_since_pong.clear();
    }

    fn reset_link(&mut self, now: Instant) {
        if self.state != LinkState::Down {
            self.handle_close_link();
        }
        self.last_inbound = now;
        self.last_write_progress = now;
    }

    /// A deadline from [`Self::poll_timeout`] passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(d) = self.handshake_deadline {
            if now >= d && self.is_handshaking() {
                let stage = match self.state {
                    LinkState::AwaitInfo => "waiting for the server's INFO",
                    _ => "waiting for the PONG after CONNECT",
                };
                self.fail_handshake(HandshakeError::Timeout { stage });
                return;
            }
        }
        if self.state == LinkState::Closing {
            if let Some((deadline, _)) = &self.closing {
                if now >= *deadline {
                    let reason = self
                        .closing
                        .take()
                        .map_or(DisconnectReason::Eof, |(_, r)| r);
                    self.link_down(reason);
                }
            }
            return;
        }
        if self.state != LinkState::Up {
            return;
        }
        // Write stall: data pending and no byte accepted for write_stall_timeout.
        if self.source != Source::None
            && now.duration_since(self.last_write_progress) >= self.config.write_stall_timeout
        {
            self.link_down(DisconnectReason::WriteStall {
                timeout: self.config.write_stall_timeout,
            });
            return;
        }
        // A missing PONG.
        if let Some(front) = self.pings_out.front() {
            if now.duration_since(front.sent_at) >= self.config.pong_timeout {
                self.link_down(DisconnectReason::PongTimeout {
                    timeout: self.config.pong_timeout,
                });
                return;
            }
        }
        // Keepalive after ping_interval of inbound silence (outbound traffic proves nothing).
        let since = self
            .last_keepalive
            .map_or(self.last_inbound, |k| k.max(self.last_inbound));
        if now.duration_since(since) >= self.config.ping_interval {
            let outstanding = self.pings_out.len() + self.pings_queued.len();
            if outstanding >= self.config.max_pings_outstanding {
                self.link_down(DisconnectReason::TooManyPingsOutstanding {
                    max: self.config.max_pings_outstanding,
                });
                return;
            }
            self.last_keepalive = Some(now);
            self.queue_ping(PingPurpose::Keepalive);
        }
        self.maybe_confirm(now);
    }

    fn maybe_confirm(&mut self, now: Instant) {
        if let Some(since) = self.unpinged_since {
            if now.duration_since(since) >= self.config.confirm_interval
                || self.unpinged_bytes >= self.config.confirm_bytes
            {
                self.queue_ping(PingPurpose::Confirm);
            }
        }
    }

    /// The next deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| {
            next = Some(next.map_or(t, |n: Instant| n.min(t)));
        };
        if let Some(d) = self.handshake_deadline {
            at(d);
        }
        match self.state {
            LinkState::Closing => {
                if let Some((d, _)) = &self.closing {
                    at(*d);
                }
            }
            LinkState::Up => {
                if self.source != Source::None {
                    at(later(
                        self.last_write_progress,
                        self.config.write_stall_timeout,
                    ));
                }
                if let Some(front) = self.pings_out.front() {
                    at(later(front.sent_at, self.config.pong_timeout));
                }
                let since = self
                    .last_keepalive
                    .map_or(self.last_inbound, |k| k.max(self.last_inbound));
                at(later(since, self.config.ping_interval));
                if let Some(s) = self.unpinged_since {
                    at(later(s, self.config.confirm_interval));
                }
            }
            _ => {}
        }
        next
    }

    /// True when [`Self::poll_transmit`] would return a chunk now.
    pub fn has_transmit(&self) -> bool {
        self.source == Source::None
            && (!self.control.is_empty() || (self.state == LinkState::Up && !self.out.is_idle()))
    }

    /// The unwritten rest of the chunk in flight, for a writer that takes over a chunk
    /// another writer started (the caller's direct write of a request, see the driver).
    pub fn in_flight_rest(&self) -> Option<Bytes> {
        match self.source {
            Source::None => None,
            Source::Control => (self.control_pos < self.control_in_flight.len())
                .then(|| self.control_in_flight.slice(self.control_pos..)),
            Source::Data => self.out.in_flight_rest(),
        }
    }

    /// The next chunk to write, if any. Returns `None` while a chunk is in flight.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        if self.source != Source::None {
            return None;
        }
        if !self.control.is_empty() {
            self.control_in_flight = self.control.split().freeze();
            self.control_pos = 0;
            self.source = Source::Control;
            self.last_write_progress = now;
            return Some(self.control_in_flight.clone());
        }
        if self.state != LinkState::Up {
            return None;
        }
        let chunk = self.out.take_chunk()?;
        self.source = Source::Data;
        self.last_write_progress = now;
        Some(chunk)
    }

    /// The socket accepted `n` bytes of the chunk from [`Self::poll_transmit`].
    ///
    /// After a closing -ERR ([`LinkState::Closing`]) the driver stops writing (see
    /// [`Self::may_write`]); bytes reported written anyway are ignored: the server acts on
    /// nothing after its -ERR, so those frames count as never written and are resent.
    pub fn handle_written(&mut self, now: Instant, n: usize) {
        if self.state == LinkState::Closing {
            return;
        }
        if n > 0 {
            self.last_write_progress = now;
        }
        match self.source {
            Source::None => {}
            Source::Control => {
                self.control_pos += n;
                if self.control_pos >= self.control_in_flight.len() {
                    self.control_in_flight = Bytes::new();
                    self.control_pos = 0;
                    self.source = Source::None;
                }
            }
            Source::Data => {
                let retain = self.config.resend_unconfirmed;
                let retain_requests = self.config.retain_requests;
                let mut freed = false;
                let written = &mut self.written;
                let written_retained = &mut self.written_retained;
                let stats = &mut self.stats;
                let unpinged_since = &mut self.unpinged_since;
                let unpinged_bytes = &mut self.unpinged_bytes;
                let pongs_unwritten = &mut self.pongs_unwritten;
                let cancelled = &mut self.cancelled_in_flight;
                // PINGs are rare: this Vec allocates only when a chunk holds one.
                let mut ping_marks: Vec<(Counts, u64)> = Vec::new();
                self.out
                    .advance(n, retain, retain_requests, |w| match w.frame.kind {
                        FrameKind::Pub | FrameKind::Request(_) => {
                            if let FrameKind::Request(t) = w.frame.kind {
                                // Written after all: beyond recall, nothing to drop later.
                                if !cancelled.is_empty() {
                                    cancelled.retain(|c| *c != t);
                                }
                            }
                            written.msgs += 1;
                            written.bytes += u64::from(w.frame.len);
                            stats.out_msgs += 1;
                            stats.out_bytes += u64::from(w.frame.payload_len);
                            let retained = match w.frame.kind {
                                FrameKind::Pub => retain,
                                _ => retain_requests,
                            };
                            if retained {
                                *written_retained += 1;
                            }
                            if !(retained && w.frame.kind == FrameKind::Pub) {
                                freed = true;
                            }
                            if unpinged_since.is_none() {
                                *unpinged_since = Some(now);
                            }
                            *unpinged_bytes += w.frame.len as usize;
                        }
                        FrameKind::Ping => {
                            ping_marks.push((*written, *written_retained));
                            *unpinged_since = None;
                            *unpinged_bytes = 0;
                        }
                        FrameKind::Pong => *pongs_unwritten = pongs_unwritten.saturating_sub(1),
                        FrameKind::Control => {}
                    });
                for (w, r) in ping_marks {
                    let purpose = self
                        .pings_queued
                        .pop_front()
                        .unwrap_or(PingPurpose::Confirm);
                    self.pings_out.push_back(PingOut {
                        purpose,
                        sent_at: now,
                        written: w,
                        retained: r,
                    });
                }
                if !self.out.has_in_flight() {
                    self.source = Source::None;
                }
                if freed {
                    self.events.push_back(ConnEvent::BufferSpace);
                }
                if self.unpinged_bytes >= self.config.confirm_bytes {
                    self.queue_ping(PingPurpose::Confirm);
                }
            }
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ConnEvent> {
        self.events.pop_front()
    }

    /// The next delivered message, if any.
    pub fn poll_message(&mut self) -> Option<Msg> {
        self.messages.pop_front()
    }

    // ===== operations from handles =====

    /// Check that a publish could be buffered: size limits, header support, link state.
    /// Returns the encoded frame length. Does not check the buffer bounds.
    pub fn check_publish(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&HeaderMap>,
        payload_len: usize,
    ) -> Result<usize, PublishRefused> {
        let headers_len = headers.map(HeaderMap::encoded_len);
        let size = headers_len.unwrap_or(0) + payload_len;
        if size > self.max_payload {
            return Err(PublishRefused::MaxPayload {
                size,
                limit: self.max_payload,
            });
        }
        if headers.is_some() && !self.headers_supported {
            return Err(PublishRefused::HeadersNotSupported);
        }
        let line = encode::pub_control_line_len(subject, reply, headers_len, payload_len);
        if line > self.config.max_control_line {
            return Err(PublishRefused::ControlLineTooLong {
                len: line,
                limit: self.config.max_control_line,
            });
        }
        let frame = encode::pub_frame_len(subject, reply, headers_len, payload_len);
        if frame > self.config.buffer.max_bytes {
            return Err(PublishRefused::TooLargeForBuffer {
                frame,
                limit: self.config.buffer.max_bytes,
            });
        }
        if !self.config.buffer_while_disconnected && !self.is_up() {
            return Err(PublishRefused::Disconnected);
        }
        Ok(frame)
    }

    /// Buffer a PUB/HPUB frame. Subjects and headers must already be validated.
    pub fn publish(
        &mut self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        kind: FrameKind,
    ) -> Result<(), PublishRefused> {
        let frame = self.check_publish(subject, reply, headers, payload.len())?;
        if !self.out.has_room(frame) {
            let c = self.out.counted();
            return Err(PublishRefused::BufferFull {
                bytes: c.bytes,
                msgs: c.msgs,
                connected: self.is_up(),
            });
        }
        let buf = self.out.pending_mut();
        let start = buf.len();
        let payload_len = if let Some(h) = headers {
            encode::encode_hpub(buf, subject, reply, h, payload);
            h.encoded_len() + payload.len()
        } else {
            encode::encode_pub(buf, subject, reply, payload);
            payload.len()
        };
        let len = buf.len() - start;
        self.out.commit(len, payload_len, kind);
        Ok(())
    }

    /// Start a subscription; its SUB is written now if a link is up, else at the next
    /// handshake. Returns the sid.
    pub fn subscribe(&mut self, subject: &str, queue: Option<&str>) -> Result<u64, PublishRefused> {
        let sid = self.next_sid;
        let line = encode::sub_control_line_len(subject, queue, sid);
        if line > self.config.max_control_line {
            return Err(PublishRefused::ControlLineTooLong {
                len: line,
                limit: self.config.max_control_line,
            });
        }
        self.next_sid += 1;
        self.subs.insert(
            sid,
            SubState {
                subject: subject.to_owned(),
                queue: queue.map(str::to_owned),
                max: None,
                delivered: 0,
                base: 0,
                draining: false,
            },
        );
        self.sub_order.push(sid);
        if self.state == LinkState::Up {
            let buf = self.out.pending_mut();
            let start = buf.len();
            encode::encode_sub(buf, subject, queue, sid);
            let len = buf.len() - start;
            self.out.commit(len, 0, FrameKind::Control);
            self.subs_since_pong.push((self.pings_total, sid));
        }
        Ok(sid)
    }

    /// Unsubscribe now (`max` None) or after `max` messages in all.
    pub fn unsubscribe(&mut self, sid: u64, max: Option<u64>) {
        let Some(sub) = self.subs.get_mut(&sid) else {
            return;
        };
        let base = sub.base;
        let remove = match max {
            Some(m) if m > sub.delivered => {
                sub.max = Some(m);
                false
            }
            _ => true,
        };
        if remove {
            self.remove_sub(sid);
            if max.is_some() {
                // The count is already reached: the stream ends after what it holds.
                self.events.push_back(ConnEvent::SubscriptionEnded {
                    sid,
                    reason: SubEndReason::MaxReached,
                });
            }
        }
        if self.state == LinkState::Up {
            let buf = self.out.pending_mut();
            let start = buf.len();
            // The server counts from the SUB on this link; `max` counts from the first.
            let wire_max = max.map(|m| m.saturating_sub(base));
            encode::encode_unsub(buf, sid, if remove { None } else { wire_max });
            let len = buf.len() - start;
            self.out.commit(len, 0, FrameKind::Control);
        }
    }

    /// Send UNSUB for `sid` but keep accepting its deliveries (drain): messages the server
    /// sent before it processed the UNSUB still arrive. End it with [`Self::forget`].
    pub fn unsubscribe_draining(&mut self, sid: u64) {
        let Some(sub) = self.subs.get_mut(&sid) else {
            return;
        };
        sub.draining = true;
        if self.state == LinkState::Up {
            let buf = self.out.pending_mut();
            let start = buf.len();
            encode::encode_unsub(buf, sid, None);
            let len = buf.len() - start;
            self.out.commit(len, 0, FrameKind::Control);
        }
    }

    /// Forget `sid` without writing anything (its UNSUB was already sent).
    pub fn forget(&mut self, sid: u64) {
        self.remove_sub(sid);
    }

    fn remove_sub(&mut self, sid: u64) {
        if self.subs.remove(&sid).is_some() {
            self.sub_order.retain(|s| *s != sid);
            self.subs_since_pong.retain(|(_, s)| *s != sid);
        }
    }

    /// The sids of every subscription, oldest first.
    pub fn sids(&self) -> Vec<u64> {
        self.sub_order.clone()
    }

    /// Ask for a PONG confirming every frame buffered or written so far. The answer is a
    /// [`ConnEvent::FlushDone`] or [`ConnEvent::FlushFailed`] with this token. While no
    /// link is up the PING is sent after the next handshake.
    pub fn flush(&mut self, token: u64) {
        if self.state == LinkState::Up {
            self.queue_ping(PingPurpose::Flush(token));
        } else {
            self.flush_waiting.push(token);
        }
    }

    /// Forget a flush (its caller timed out).
    pub fn cancel_flush(&mut self, token: u64) {
        self.flush_waiting.retain(|t| *t != token);
        for p in &mut self.pings_queued {
            if *p == PingPurpose::Flush(token) {
                *p = PingPurpose::Confirm;
            }
        }
        for p in &mut self.pings_out {
            if p.purpose == PingPurpose::Flush(token) {
                p.purpose = PingPurpose::Confirm;
            }
        }
    }

    fn queue_ping(&mut self, purpose: PingPurpose) {
        if self.state != LinkState::Up {
            return;
        }
        let buf = self.out.pending_mut();
        let start = buf.len();
        encode::encode_ping(buf);
        let len = buf.len() - start;
        self.out.commit(len, 0, FrameKind::Ping);
        self.pings_queued.push_back(purpose);
        self.pings_total += 1;
        // Once queued, the data before it is covered: no further confirm PING needed.
        self.unpinged_since = None;
        self.unpinged_bytes = 0;
    }

    /// Tokens of the requests whose frames are pending: not yet handed to the writer, so
    /// surely not written (those [`Self::remove_requests`] can remove).
    pub fn pending_requests(&self) -> impl Iterator<Item = u64> + '_ {
        self.out.pending_requests()
    }

    /// A request's caller gave up (timeout, a dropped future) or was told it failed: its
    /// frame must never be sent. A pending frame is removed now; one in the chunk being
    /// written goes out if the socket takes it, and is dropped, not resent, if the link
    /// drops first. A written frame is beyond recall.
    pub fn cancel_request(&mut self, token: u64) {
        if self.remove_requests(|t| t == token).msgs == 0 && self.out.in_flight_request(token) {
            self.cancelled_in_flight.push(token);
        }
    }

    /// Whether a frame survives a rewind: publishes do, except cancelled requests.
    fn kept_at_rewind(cancelled: &[u64], f: &crate::outbound::Frame) -> bool {
        match f.kind {
            FrameKind::Request(t) => !cancelled.contains(&t),
            kind => kind.is_publish(),
        }
    }

    /// Remove the frames of the requests for which `pred(token)` is true, if they are still
    /// pending (not yet handed to the writer): their callers gave up or were told the
    /// request failed, so they must never be sent. Frames in flight, written or retained
    /// stay (see [`Self::cancel_request`]). Returns what was removed.
    pub fn remove_requests(&mut self, mut pred: impl FnMut(u64) -> bool) -> Counts {
        let removed = self.out.remove_pending(|f| match f.kind {
            FrameKind::Request(t) => pred(t),
            _ => false,
        });
        if removed.msgs > 0 {
            self.events.push_back(ConnEvent::BufferSpace);
        }
        removed
    }

    /// Drop all buffered frames (the client is closing for good). Returns what was unsent.
    pub fn clear_buffer(&mut self) -> Counts {
        let unsent = self.out.unsent();
        self.out.clear();
        unsent
    }
}

// ===== planned switch (make-before-break) =====

/// The hold on the new link's deliveries during a planned switch's cut.
#[derive(Debug)]
struct Gate {
    marker: u64,
    exempt: u64,
    /// The highest marker sequence number seen on the current link.
    segment: u64,
    held: VecDeque<(u64, Msg)>,
}

/// A cut marker's sequence number (its payload, in decimal).
fn marker_seq(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload).ok()?.parse().ok()
}

/// A link retired by a planned switch (lame duck mode, force_reconnect, a new server
/// pool): it keeps delivering for the overlap, then gets UNSUB for everything and a last
/// PING, and is closed once that PONG confirms what was written on it.
#[derive(Debug)]
pub struct DetachedLink {
    decoder: Decoder,
    pings_out: VecDeque<PingOut>,
    written: Counts,
    confirmed: Counts,
    written_retained: u64,
    confirmed_retained: u64,
    out: BytesMut,
    retiring: bool,
    done: bool,
    /// The sid of the cut marker subscribed on this link too (see [`Connection::gate_switch`]).
    marker: Option<u64>,
    /// The marker sequence number at which the two streams were cut.
    cut: Option<u64>,
    /// The retiring PONG arrived: everything written on this link was processed.
    retired: bool,
    /// Frames written on this link and retained for resending until it confirms them.
    retained: crate::outbound::Retained,
    /// Flushes asked before the switch whose PING goes out on the new link: they also
    /// wait for this link's last PONG.
    flushes: Vec<u64>,
}

impl DetachedLink {
    /// True once the retiring PONG arrived or the link failed: close it.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// True once UNSUB and the last PING were queued.
    pub fn is_retiring(&self) -> bool {
        self.retiring
    }

    /// True once the cut marker arrived on this link: the new link delivers from here on.
    pub fn is_cut(&self) -> bool {
        self.cut.is_some()
    }

    /// True once the retiring PONG arrived: the server processed every frame written on
    /// this link. A link done without it (closed, an -ERR, bad bytes) may have lost some.
    pub fn is_retired(&self) -> bool {
        self.retired
    }

    /// Publish frames written on this link and not confirmed.
    pub fn unconfirmed(&self) -> Counts {
        Counts {
            msgs: self.written.msgs - self.confirmed.msgs,
            bytes: self.written.bytes - self.confirmed.bytes,
        }
    }

    /// Bytes to write on this link (PONGs, the retiring UNSUBs and PING).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }
}

impl Connection {
    /// Make this core stop decoding right after a handshake completes, leaving the rest of
    /// the read buffer for the session core that adopts the link (see [`Self::adopt_link`]).
    pub fn set_pause_after_handshake(&mut self, pause: bool) {
        self.pause_after_handshake = pause;
    }

    /// True when a planned switch may detach the current link now: it is up and no data
    /// chunk is half written (publishing switches at a frame boundary).
    pub fn can_detach(&self) -> bool {
        self.state == LinkState::Up && self.source == Source::None
    }

    /// Detach the current link for a planned switch. Pending frames (and the PINGs queued
    /// among them) stay for the next link; frames written on this link are confirmed, or
    /// reported, through the returned [`DetachedLink`].
    pub fn detach(&mut self) -> Option<DetachedLink> {
        if !self.can_detach() {
            return None;
        }
        let flushes: Vec<u64> = self
            .pings_queued
            .iter()
            .filter_map(|p| match p {
                PingPurpose::Flush(t) => Some(*t),
                _ => None,
            })
            .collect();
        self.flushes_on_old_link.extend(&flushes);
        let link = DetachedLink {
            decoder: std::mem::replace(&mut self.decoder, Decoder::new(self.config.decoder)),
            pings_out: std::mem::take(&mut self.pings_out),
            written: self.written,
            confirmed: self.confirmed,
            written_retained: self.written_retained,
            confirmed_retained: self.confirmed_retained,
            out: BytesMut::new(),
            retiring: false,
            done: false,
            marker: None,
            cut: None,
            retired: false,
            retained: self.out.take_retained(),
            flushes,
        };
        self.state = LinkState::Down;
        self.closing = None;
        self.control.clear();
        self.reset_link_counters();
        Some(link)
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

    /// Bytes read from a detached link: deliveries go to the subscriptions as usual,
    /// server PINGs are answered on that link, PONGs confirm what was written on it.
    pub fn handle_detached_read(&mut self, link: &mut DetachedLink, buf: &mut BytesMut) {
        loop {
            match link.decoder.decode(buf) {
                Ok(Some(ServerOp::Msg(msg))) => {
                    if link.marker == Some(msg.sid) {
                        if link.cut.is_none() {
                            if let Some(k) = marker_seq(&msg.payload) {
                                // The streams join here: what the new link delivered
                                // before marker k reached this node before it too.
                                link.cut = Some(k);
                                self.release_gate(Some(k));
                            }
                        }
                        continue;
                    }
                    if link.cut.is_some() && !self.is_queue_sub(msg.sid) {
                        continue; // after the cut the new link delivers it
                    }
                    self.handle_msg(msg);
                }
                Ok(Some(ServerOp::Ping)) => encode::encode_pong(&mut link.out),
                Ok(Some(ServerOp::Pong)) => {
                    let Some(ping) = link.pings_out.pop_front() else {
                        continue;
                    };
                    link.confirmed = ping.written;
                    if ping.retained > link.confirmed_retained {
                        self.out.release_from(
                            &mut link.retained,
                            ping.retained - link.confirmed_retained,
                        );
                        link.confirmed_retained = ping.retained;
                        self.events.push_back(ConnEvent::BufferSpace);
                    }
                    match ping.purpose {
                        PingPurpose::Flush(token) => {
                            self.events.push_back(ConnEvent::FlushDone(token));
                        }
                        PingPurpose::Retire => {
                            link.done = true;
                            link.retired = true;
                            // Flushes that spanned the switch: the old part is confirmed.
                            for token in std::mem::take(&mut link.flushes) {
                                self.flushes_on_old_link.retain(|t| *t != token);
                                if let Some(i) = self
                                    .flushes_done_on_new_link
                                    .iter()
                                    .position(|t| *t == token)
                                {
                                    self.flushes_done_on_new_link.swap_remove(i);
                                    self.events.push_back(ConnEvent::FlushDone(token));
                                }
                            }
                        }
                        _ => {}
                    }
                }
                Ok(Some(ServerOp::Err(text))) => {
                    if ServerErr::parse(&text).is_fatal() {
                        link.done = true;
                    }
                    self.events.push_back(ConnEvent::ServerError(text));
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => {
                    link.done = true;
                    buf.clear();
                    return;
                }
            }
        }
    }

    /// Start a planned switch's cut. `marker_sid` is a subscription to `subject` made on
    /// the current (new) link with [`Self::subscribe`]; it is subscribed on `link` too,
    /// with the same sid. From now on the current link's deliveries (but for queue
    /// subscriptions and `exempt`) are held, each tagged with the last marker sequence
    /// number seen on the current link. Markers published on the current link
    /// ([`Self::publish_marker`]) reach `link` through the old node; the first to arrive
    /// there, k, is the cut: held deliveries tagged below k are dropped (the new node
    /// processed them before marker k, so they reached the old node, and `link`, before it
    /// too), the rest are delivered, and `link` drops what it delivers after k.
    pub fn gate_switch(
        &mut self,
        link: &mut DetachedLink,
        subject: &str,
        marker_sid: u64,
        exempt: u64,
    ) {
        encode::encode_sub(&mut link.out, subject, None, marker_sid);
        link.marker = Some(marker_sid);
        self.gate = Some(Gate {
            marker: marker_sid,
            exempt,
            segment: 0,
            held: VecDeque::new(),
        });
    }

    /// Publish cut marker `seq` on the current link (a control frame: never counted,
    /// retained or resent).
    pub fn publish_marker(&mut self, subject: &str, seq: u64) {
        if self.state != LinkState::Up {
            return;
        }
        let buf = self.out.pending_mut();
        let start = buf.len();
        encode::encode_pub(buf, subject, None, seq.to_string().as_bytes());
        let len = buf.len() - start;
        self.out.commit(len, 0, FrameKind::Control);
    }

    /// End the cut's hold. With the cut's marker `from`, held deliveries tagged below it
    /// are dropped as duplicates; without it (the old link died, or the wait reached its
    /// bound) everything held is delivered.
    pub fn release_gate(&mut self, from: Option<u64>) {
        let Some(g) = self.gate.take() else {
            return;
        };
        for (segment, msg) in g.held {
            if from.is_none_or(|k| segment >= k) {
                self.handle_msg(msg);
            }
        }
    }

    /// The overlap is over: UNSUB every subscription and a last PING on the detached link.
    pub fn retire_detached(&mut self, now: Instant, link: &mut DetachedLink) {
        if link.retiring {
            return;
        }
        link.retiring = true;
        for sid in &self.sub_order {
            encode::encode_unsub(&mut link.out, *sid, None);
        }
        encode::encode_ping(&mut link.out);
        link.pings_out.push_back(PingOut {
            purpose: PingPurpose::Retire,
            sent_at: now,
            written: link.written,
            retained: link.written_retained,
        });
    }

    /// The detached link is closed. Returns what stayed unconfirmed on it. Flushes that
    /// waited on it fail (or, with resend_unconfirmed, re-arm on the current link).
    pub fn finish_detached(&mut self, link: DetachedLink) -> Counts {
        let unconfirmed = link.unconfirmed();
        let spanning = link.flushes;
        let waiting = link.pings_out.into_iter().filter_map(|p| match p.purpose {
            PingPurpose::Flush(token) => Some(token),
            _ => None,
        });
        for token in waiting.chain(spanning.iter().copied()) {
            self.flushes_on_old_link.retain(|t| *t != token);
            self.flushes_done_on_new_link.retain(|t| *t != token);
            if self.config.resend_unconfirmed {
                // The frames are resent below: confirm them on the current link.
                self.flush(token);
            } else {
                self.events
                    .push_back(ConnEvent::FlushFailed { token, unconfirmed });
            }
        }
        // Written on the old link and never confirmed: resend on the current one, within
        // its limit (its server may allow less than the old one did).
        self.out.requeue(link.retained);
        self.remove_over_max_payload();
        unconfirmed
    }
}
