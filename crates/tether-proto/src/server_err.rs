//! The server's `-ERR` texts, parsed once into [`ServerErr`].
//!
//! nats-server sends `-ERR '<text>'` (`server/client.go`); which texts close the
//! connection is listed in DESIGN semantics 7. Texts are matched case-insensitively and by
//! prefix, as nats.go (`processErr`) and nats.c (`natsConn_processErr`) do: older servers
//! capitalize some differently (`Maximum Connections Exceeded`), and some carry a tail
//! (`Connection throttling is active. Please try again later.`).

use std::fmt;

/// An `-ERR` from the server, quotes stripped, parsed into what tether acts on.
///
/// Display gives the server's text: the exact text for the variants that carry it, and
/// for the others the text nats-server sends (an older server's capitalization is not
/// kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerErr {
    /// `Authorization Violation`: the credentials were refused. Closes the connection.
    AuthViolation,
    /// `User Authentication Revoked`. Closes the connection.
    AuthRevoked,
    /// `User Authentication Expired`: the user JWT expired. Closes the connection.
    AuthExpired,
    /// `Account Authentication Expired`. Closes the connection.
    AccountAuthExpired,
    /// `Authentication Timeout` (the docs say `Authorization Timeout`; both are matched):
    /// CONNECT did not come within the server's auth timeout. Closes the connection.
    AuthTimeout,
    /// `maximum connections exceeded`. Closes the connection.
    MaxConnections,
    /// `maximum account active connections exceeded`. Closes the connection.
    MaxAccountConnections,
    /// `Connection throttling is active. Please try again later.` Closes the connection.
    Throttled,
    /// `Maximum Payload Violation`: a frame we wrote was over max_payload. Closes the
    /// connection.
    MaxPayload,
    /// `maximum control line exceeded`: a control line we wrote was too long. Closes the
    /// connection.
    MaxControlLine,
    /// `Unknown Protocol Operation`: the server could not parse what we wrote. Closes the
    /// connection.
    UnknownOperation,
    /// `Stale Connection`: the server's PINGs went unanswered. Closes the connection.
    StaleConnection,
    /// `Parser Error` (what older servers and the docs name a parse failure). Closes the
    /// connection.
    ParserError,
    /// `invalid client protocol`. Closes the connection.
    InvalidProtocol,
    /// `no responders requires headers support`. Closes the connection.
    NoRespondersNeedHeaders,
    /// `Secure Connection - TLS Required`. Closes the connection.
    TlsRequired,
    /// `attempted to connect to route port` (or to a leaf node or gateway port): the URL
    /// names a port that is not for clients. Closes the connection.
    WrongPort(String),
    /// `Permissions Violation for Subscription to "S"[ using queue "Q"][ (sid "N")]`,
    /// or `..., too many tokens`. The connection stays.
    SubPermission {
        /// The subject.
        subject: String,
        /// The queue group: the error names only subscriptions in it. Without one it
        /// names only the plain (non-queue) subscriptions on the subject, unless
        /// `any_queue`.
        queue: Option<String>,
        /// The subscription, when the error names it (a config reload revoking a
        /// permission): exactly that one ends.
        sid: Option<u64>,
        /// The subject itself is refused whatever the queue (`..., too many tokens`).
        any_queue: bool,
        /// The server's text.
        text: String,
    },
    /// `Permissions Violation for Publish to "S"` or `... with Reply of "R"`. The
    /// connection stays.
    PubPermission {
        /// The subject, when the error names one.
        subject: Option<String>,
        /// The reply subject, when the error names one.
        reply: Option<String>,
        /// The server's text.
        text: String,
    },
    /// `maximum subscriptions exceeded`: a SUB was refused. The connection stays.
    MaxSubscriptions,
    /// Anything else (`Invalid Subject`, say). The connection stays.
    Other(String),
}

/// Auth failure classes of DESIGN semantics 5 (see [`ServerErr::auth_class`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthErrorClass {
    /// `Authorization Violation`, `User Authentication Revoked`: a strike.
    Strike,
    /// `User/Account Authentication Expired`: re-read credentials, reconnect at once.
    Expired,
    /// Timeouts, connection limits, throttling: back off, no strike.
    Transient,
}

/// The fixed texts, each with the prefix that matches it (lower case).
const FIXED: [(&str, ServerErr); 17] = [
    ("authorization violation", ServerErr::AuthViolation),
    ("user authentication revoked", ServerErr::AuthRevoked),
    ("user authentication expired", ServerErr::AuthExpired),
    (
        "account authentication expired",
        ServerErr::AccountAuthExpired,
    ),
    ("authentication timeout", ServerErr::AuthTimeout),
    ("authorization timeout", ServerErr::AuthTimeout),
    ("maximum connections exceeded", ServerErr::MaxConnections),
    (
        "maximum account active connections exceeded",
        ServerErr::MaxAccountConnections,
    ),
    ("connection throttling is active", ServerErr::Throttled),
    ("maximum payload violation", ServerErr::MaxPayload),
    ("maximum control line exceeded", ServerErr::MaxControlLine),
    ("unknown protocol operation", ServerErr::UnknownOperation),
    ("stale connection", ServerErr::StaleConnection),
    ("parser error", ServerErr::ParserError),
    ("invalid client protocol", ServerErr::InvalidProtocol),
    (
        "no responders requires headers support",
        ServerErr::NoRespondersNeedHeaders,
    ),
    ("secure connection - tls required", ServerErr::TlsRequired),
];

impl ServerErr {
    /// Parse an -ERR text (quotes already stripped).
    pub fn parse(text: &str) -> Self {
        // Control characters (a bare CR, say) are escaped: the text goes into log lines
        // and error messages, where a peer must not be able to forge a line.
        let text = &*printable(text);
        let t = text.trim();
        if let Some((_, e)) = FIXED.iter().find(|(p, _)| starts_with_ci(t, p)) {
            return e.clone();
        }
        if starts_with_ci(t, "attempted to connect to") {
            return Self::WrongPort(text.to_owned());
        }
        if starts_with_ci(t, "permissions violation for subscription") {
            // The subject is quoted: look for the rest only after it.
            if let Some((subject, after)) = quoted_with_rest(t, "subscription to") {
                return Self::SubPermission {
                    queue: quoted(after, "using queue"),
                    sid: sid_after(after),
                    any_queue: after.to_ascii_lowercase().contains("too many tokens"),
                    subject: subject.to_owned(),
                    text: text.to_owned(),
                };
            }
            return Self::Other(text.to_owned());
        }
        if starts_with_ci(t, "permissions violation for publish") {
            return Self::PubPermission {
                subject: quoted(t, "publish to"),
                reply: quoted(t, "reply of"),
                text: text.to_owned(),
            };
        }
        if starts_with_ci(t, "maximum subscriptions exceeded") {
            return Self::MaxSubscriptions;
        }
        Self::Other(text.to_owned())
    }

    /// True when the server closes the connection after this error.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Self::SubPermission { .. }
                | Self::PubPermission { .. }
                | Self::MaxSubscriptions
                | Self::Other(_)
        )
    }

    /// True when our own bytes caused it (a poison frame): what was written since the last
    /// PONG must not be resent.
    pub fn is_ours(&self) -> bool {
        matches!(
            self,
            Self::MaxPayload | Self::MaxControlLine | Self::UnknownOperation
        )
    }

    /// The auth failure class, when it is one (DESIGN semantics 5).
    pub fn auth_class(&self) -> Option<AuthErrorClass> {
        match self {
            Self::AuthViolation | Self::AuthRevoked => Some(AuthErrorClass::Strike),
            Self::AuthExpired | Self::AccountAuthExpired => Some(AuthErrorClass::Expired),
            Self::AuthTimeout
            | Self::MaxConnections
            | Self::MaxAccountConnections
            | Self::Throttled => Some(AuthErrorClass::Transient),
            _ => None,
        }
    }
}

impl fmt::Display for ServerErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AuthViolation => "Authorization Violation",
            Self::AuthRevoked => "User Authentication Revoked",
            Self::AuthExpired => "User Authentication Expired",
            Self::AccountAuthExpired => "Account Authentication Expired",
            Self::AuthTimeout => "Authentication Timeout",
            Self::MaxConnections => "maximum connections exceeded",
            Self::MaxAccountConnections => "maximum account active connections exceeded",
            Self::Throttled => "Connection throttling is active. Please try again later.",
            Self::MaxPayload => "Maximum Payload Violation",
            Self::MaxControlLine => "maximum control line exceeded",
            Self::UnknownOperation => "Unknown Protocol Operation",
            Self::StaleConnection => "Stale Connection",
            Self::ParserError => "Parser Error",
            Self::InvalidProtocol => "invalid client protocol",
            Self::NoRespondersNeedHeaders => "no responders requires headers support",
            Self::TlsRequired => "Secure Connection - TLS Required",
            Self::MaxSubscriptions => "maximum subscriptions exceeded",
            Self::WrongPort(text)
            | Self::SubPermission { text, .. }
            | Self::PubPermission { text, .. }
            | Self::Other(text) => text,
        })
    }
}

fn starts_with_ci(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len()
        && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn quoted(text: &str, after: &str) -> Option<String> {
    quoted_with_rest(text, after).map(|(q, _)| q.to_owned())
}

/// The first quoted string after `after` (case-insensitive), and the text after its
/// closing quote.
fn quoted_with_rest<'a>(text: &'a str, after: &str) -> Option<(&'a str, &'a str)> {
    let lower = text.to_ascii_lowercase();
    let i = lower.find(&after.to_ascii_lowercase())? + after.len();
    let rest = text.get(i..)?;
    let start = rest.find('"')? + 1;
    let end = start + rest.get(start..)?.find('"')?;
    Some((rest.get(start..end)?, rest.get(end + 1..)?))
}

/// The sid of a trailing `(sid "N")` (nats-server quotes it; older servers did not).
fn sid_after(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let i = lower.find("(sid")? + "(sid".len();
    let rest = text.get(i..)?.trim_start().trim_start_matches('"');
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest.get(..digits)?.parse().ok()
}

/// `text` with its control characters escaped (`\r`, `\u{1b}`, ...).
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::AuthErrorClass::{Expired, Strike, Transient};
    use super::*;

    /// Every -ERR text nats-server sends (research FEATURES.md part 3.3), with what it
    /// parses to, whether it closes the link, whether our bytes caused it, and its auth
    /// class.
    #[test]
    fn every_server_text_parses_to_its_variant() {
        use ServerErr as E;
        let sub =
            |subject: &str, queue: Option<&str>, sid, any_queue, text: &str| E::SubPermission {
                subject: subject.into(),
                queue: queue.map(Into::into),
                sid,
                any_queue,
                text: text.into(),
            };
        let publ = |subject: Option<&str>, reply: Option<&str>, text: &str| E::PubPermission {
            subject: subject.map(Into::into),
            reply: reply.map(Into::into),
            text: text.into(),
        };
        #[rustfmt::skip]
        let table: Vec<(&str, ServerErr, bool, bool, Option<AuthErrorClass>)> = vec![
            ("Authorization Violation", E::AuthViolation, true, false, Some(Strike)),
            ("Authentication Timeout", E::AuthTimeout, true, false, Some(Transient)),
            ("Authorization Timeout", E::AuthTimeout, true, false, Some(Transient)),
            ("User Authentication Expired", E::AuthExpired, true, false, Some(Expired)),
            ("Account Authentication Expired", E::AccountAuthExpired, true, false, Some(Expired)),
            ("User Authentication Revoked", E::AuthRevoked, true, false, Some(Strike)),
            ("maximum connections exceeded", E::MaxConnections, true, false, Some(Transient)),
            ("Maximum Connections Exceeded", E::MaxConnections, true, false, Some(Transient)),
            ("maximum account active connections exceeded", E::MaxAccountConnections, true, false, Some(Transient)),
            ("Maximum Payload Violation", E::MaxPayload, true, true, None),
            ("Stale Connection", E::StaleConnection, true, false, None),
            ("Unknown Protocol Operation", E::UnknownOperation, true, true, None),
            ("maximum control line exceeded", E::MaxControlLine, true, true, None),
            ("invalid client protocol", E::InvalidProtocol, true, false, None),
            ("no responders requires headers support", E::NoRespondersNeedHeaders, true, false, None),
            ("Secure Connection - TLS Required", E::TlsRequired, true, false, None),
            ("Connection throttling is active. Please try again later.", E::Throttled, true, false, Some(Transient)),
            ("attempted to connect to route port", E::WrongPort("attempted to connect to route port".into()), true, false, None),
            ("attempted to connect to leaf node port", E::WrongPort("attempted to connect to leaf node port".into()), true, false, None),
            ("Parser Error", E::ParserError, true, false, None),
            (r#"Permissions Violation for Publish to "a.b""#, publ(Some("a.b"), None, r#"Permissions Violation for Publish to "a.b""#), false, false, None),
            (r#"Permissions Violation for Publish with Reply of "_INBOX.x""#, publ(None, Some("_INBOX.x"), r#"Permissions Violation for Publish with Reply of "_INBOX.x""#), false, false, None),
            (r#"Permissions Violation for Subscription to "a.>""#, sub("a.>", None, None, false, r#"Permissions Violation for Subscription to "a.>""#), false, false, None),
            (r#"Permissions Violation for Subscription to "a" using queue "q""#, sub("a", Some("q"), None, false, r#"Permissions Violation for Subscription to "a" using queue "q""#), false, false, None),
            (r#"Permissions Violation for Subscription to "a", too many tokens"#, sub("a", None, None, true, r#"Permissions Violation for Subscription to "a", too many tokens"#), false, false, None),
            ("Permissions Violation for Subscription to nothing quoted", E::Other("Permissions Violation for Subscription to nothing quoted".into()), false, false, None),
            ("Invalid Subject", E::Other("Invalid Subject".into()), false, false, None),
            ("forged\r\n[ERROR] line", E::Other("forged\\r\\n[ERROR] line".into()), false, false, None),
            ("Invalid Publish Subject", E::Other("Invalid Publish Subject".into()), false, false, None),
            ("maximum subscriptions exceeded", E::MaxSubscriptions, false, false, None),
            ("Failed Account Registration", E::Other("Failed Account Registration".into()), false, false, None),
            (" authorization violation ", E::AuthViolation, true, false, Some(Strike)),
        ];
        for (text, want, fatal, ours, auth) in table {
            let got = ServerErr::parse(text);
            assert_eq!(got, want, "{text}");
            assert_eq!(got.is_fatal(), fatal, "is_fatal: {text}");
            assert_eq!(got.is_ours(), ours, "is_ours: {text}");
            assert_eq!(got.auth_class(), auth, "auth_class: {text}");
        }
    }

    #[test]
    fn display_is_the_servers_text() {
        for text in [
            "Authorization Violation",
            "Authentication Timeout",
            "maximum connections exceeded",
            "Connection throttling is active. Please try again later.",
            "attempted to connect to gateway port",
            r#"Permissions Violation for Subscription to "a" using queue "q" (sid "7")"#,
            r#"Permissions Violation for Publish to "a""#,
            "maximum subscriptions exceeded",
            "Invalid Subject",
        ] {
            assert_eq!(ServerErr::parse(text).to_string(), text);
        }
    }
}
