//! What the state machine reports ([`ConnEvent`]) and the reasons it gives.

use std::fmt;
use std::time::Duration;

use crate::error::ProtocolError;
use crate::info::ServerInfo;
use crate::outbound::Counts;
use crate::server_err::ServerErr;

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
    /// The server sent more PINGs than [`MAX_UNWRITTEN_PONGS`](super::MAX_UNWRITTEN_PONGS) while not reading our
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

/// Why a subscription ended on the server's or the protocol's account.
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl fmt::Display for RemovedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MaxPayloadLowered { max_payload } => {
                write!(f, "the server lowered max_payload to {max_payload}")
            }
            Self::PoisonFrame => f.write_str(
                "the server closed the connection over frames we sent (poison frame); they are \
                 not resent",
            ),
        }
    }
}

/// What the state machine reports to the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnEvent {
    /// The handshake completed; buffered frames and the subscription replay are queued.
    Connected {
        /// The server's INFO (the last one seen during the handshake).
        info: Box<ServerInfo>,
    },
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
    /// An -ERR that matched nothing more specific (on the retiring link of a planned
    /// switch: any -ERR).
    ServerError(ServerErr),
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
    /// The link adopted last is caught up: its subscription replay and, after it, the
    /// frames buffered when it was adopted are written. Once per adopted link; none if the
    /// link is lost (or retired) first.
    Replayed(ReplayStats),
}

/// One link's subscription replay (see [`Connection::adopt_link`](super::Connection::adopt_link)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Subscriptions replayed (SUB lines written; a remaining auto-unsubscribe count
    /// rides along as an UNSUB line).
    pub subscriptions: u64,
    /// Bytes of SUB and UNSUB lines written.
    pub bytes: u64,
    /// From the link's adoption to the last replay chunk written.
    pub duration: Duration,
}

/// Why a subscription was not started: its SUB control line would exceed
/// max_control_line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeRefused {
    /// The control line's length.
    pub len: usize,
    /// The limit.
    pub limit: usize,
}

/// Why a publish was not buffered.
#[derive(Debug, Clone, PartialEq, Eq)]
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
