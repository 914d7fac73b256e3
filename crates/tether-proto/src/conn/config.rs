//! [`Config`], its defaults, and the credentials ([`Auth`]) a link's CONNECT carries.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::decode::DecoderLimits;
use crate::outbound::BufferLimits;

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
#[allow(clippy::struct_excessive_bools)] // independent switches, one per ConnectOptions field (echo is a CONNECT field)
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
