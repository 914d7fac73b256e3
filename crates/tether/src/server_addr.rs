//! Server URLs: `nats://[user:pass@|token@]host[:port]`, parsed once into a [`ServerAddr`].

use std::fmt;

/// A server URL: `nats://[user:pass@|token@]host[:port]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerAddr {
    scheme: String,
    host: String,
    port: u16,
    user: Option<String>,
    pass: Option<String>,
    /// The name a TLS certificate is checked against when it is not the host: a server
    /// discovered by IP address keeps the host name of the URL it was learnt through.
    tls_name: Option<String>,
}

/// Why a server URL was refused by [`ServerAddr::parse`]. The Display text names the
/// input and says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddrError {
    /// Not a URL at all.
    #[error("`{input}`: {error}")]
    Malformed {
        /// The URL as given.
        input: String,
        /// What the URL parser objected to.
        error: url::ParseError,
    },
    /// A scheme other than `nats` and `tls`.
    #[error("`{input}`: unsupported scheme `{scheme}`; use nats:// (or tls:// for TLS)")]
    UnsupportedScheme {
        /// The URL as given.
        input: String,
        /// Its scheme, lowercased.
        scheme: String,
    },
    /// No host name or address.
    #[error("`{input}`: no host")]
    NoHost {
        /// The URL as given.
        input: String,
    },
}

impl ServerAddr {
    /// Parse a URL. A bare `host:port` means `nats://host:port`; the port defaults to 4222.
    pub fn parse(input: &str) -> Result<Self, AddrError> {
        Self::parse_inner(input).map_err(AddrError::redacted)
    }

    fn parse_inner(input: &str) -> Result<Self, AddrError> {
        let with_scheme = if input.contains("://") {
            input.to_owned()
        } else {
            format!("nats://{input}")
        };
        let url = url::Url::parse(&with_scheme).map_err(|error| AddrError::Malformed {
            input: input.to_owned(),
            error,
        })?;
        let scheme = url.scheme().to_ascii_lowercase();
        if scheme != "nats" && scheme != "tls" {
            return Err(AddrError::UnsupportedScheme {
                input: input.to_owned(),
                scheme,
            });
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| AddrError::NoHost {
                input: input.to_owned(),
            })?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let user = (!url.username().is_empty()).then(|| decode(url.username()));
        let pass = url.password().map(decode);
        Ok(Self {
            scheme,
            host,
            port: url.port().unwrap_or(4222),
            user,
            pass,
            tls_name: None,
        })
    }

    /// True for a `tls://` URL: the link always uses TLS (never plaintext).
    pub fn is_tls(&self) -> bool {
        self.scheme == "tls"
    }

    /// The name the server's TLS certificate is checked against: the host, or for a
    /// server discovered by IP address, the host name of the URL it was learnt through.
    pub fn tls_name(&self) -> &str {
        self.tls_name.as_deref().unwrap_or(&self.host)
    }

    /// The host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// User (or token, when no password is given) from the URL.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Password from the URL.
    pub fn pass(&self) -> Option<&str> {
        self.pass.as_deref()
    }

    /// A discovered address inherits the scheme and credentials of the URL it was
    /// learnt through.
    pub(crate) fn inherit(&self, discovered: &str) -> Option<Self> {
        let mut d = ServerAddr::parse(discovered).ok()?;
        d.scheme.clone_from(&self.scheme);
        if d.user.is_none() {
            d.user.clone_from(&self.user);
            d.pass.clone_from(&self.pass);
        }
        if d.host.parse::<std::net::IpAddr>().is_ok() {
            // A node's certificate names the cluster, not each node's address.
            d.tls_name = Some(self.tls_name().to_owned());
        }
        Some(d)
    }

    /// What identifies a server in the pool: the host (case-insensitive) and the port.
    pub(crate) fn key(&self) -> (String, u16) {
        (self.host.to_ascii_lowercase(), self.port)
    }
}

impl AddrError {
    /// The same error with any password or token in the URL it quotes masked: errors are
    /// logged and shown, credentials never are.
    fn redacted(mut self) -> Self {
        let (Self::Malformed { input, .. }
        | Self::UnsupportedScheme { input, .. }
        | Self::NoHost { input }) = &mut self;
        *input = redact_userinfo(input);
        self
    }
}

/// `scheme://user:secret@host` as `scheme://user:<redacted>@host`, and a lone token
/// (`scheme://token@host`) as `scheme://<redacted>@host`.
fn redact_userinfo(input: &str) -> String {
    let body_at = input.find("://").map_or(0, |i| i + 3);
    let body = &input[body_at..];
    let authority_end = body.find(['/', '?', '#']).unwrap_or(body.len());
    let Some(at) = body[..authority_end].rfind('@') else {
        return input.to_owned();
    };
    let userinfo = &body[..at];
    let masked = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:<redacted>"),
        None => String::from("<redacted>"),
    };
    format!("{}{masked}{}", &input[..body_at], &body[at..])
}

fn decode(s: &str) -> String {
    // Percent-decoding of credentials; invalid sequences are kept as they are.
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(Ok(v)) = s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}

impl fmt::Display for ServerAddr {
    /// The URL with credentials left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

impl fmt::Debug for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_urls() {
        let a = ServerAddr::parse("nats://u:p%40ss@example.com:4333").unwrap();
        assert_eq!(
            (a.host(), a.port(), a.user(), a.pass()),
            ("example.com", 4333, Some("u"), Some("p@ss"))
        );
        assert_eq!(
            a.to_string(),
            "nats://example.com:4333",
            "no credentials in Display"
        );
        let b = ServerAddr::parse("127.0.0.1").unwrap();
        assert_eq!(b.to_string(), "nats://127.0.0.1:4222");
        let e = ServerAddr::parse("http://x").unwrap_err();
        assert!(
            matches!(&e, AddrError::UnsupportedScheme { scheme, .. } if scheme == "http"),
            "{e:?}"
        );
        assert!(e.to_string().contains("unsupported scheme"), "{e}");
        assert!(matches!(
            ServerAddr::parse("nats://"),
            Err(AddrError::Malformed { .. } | AddrError::NoHost { .. })
        ));
        let t = ServerAddr::parse("tls://nats.example.com:4443").unwrap();
        assert!(t.is_tls() && !a.is_tls());
        assert_eq!(t.tls_name(), "nats.example.com");
    }

    #[test]
    fn errors_never_quote_a_password_or_token_from_the_url() {
        for (input, secret) in [
            ("nats://bob:hunter2@host:notaport", "hunter2"),
            ("http://bob:hunter2@host", "hunter2"),
            ("nats://s3cr3t-token@host:99999", "s3cr3t-token"),
            ("bob:hunter2@host:x", "hunter2"),
        ] {
            let e = ServerAddr::parse(input).unwrap_err();
            let text = format!("{e} {e:?}");
            assert!(!text.contains(secret), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
        assert_eq!(
            redact_userinfo("nats://u:p@h:1/x@y"),
            "nats://u:<redacted>@h:1/x@y"
        );
        assert_eq!(redact_userinfo("nats://h:1"), "nats://h:1");
    }

    #[test]
    fn a_server_discovered_by_ip_is_checked_with_the_name_it_was_learnt_through() {
        let via = ServerAddr::parse("tls://u:p@nats.example.com:4443").unwrap();
        let ip = via.inherit("10.0.0.7:4222").unwrap();
        assert!(ip.is_tls(), "scheme inherited");
        assert_eq!((ip.host(), ip.tls_name()), ("10.0.0.7", "nats.example.com"));
        assert_eq!(ip.user(), Some("u"));
        // Learnt through an IP-only URL: still the first name.
        let again = ip.inherit("10.0.0.8:4222").unwrap();
        assert_eq!(again.tls_name(), "nats.example.com");
        // A discovered name is its own TLS name.
        let named = via.inherit("node2.example.com:4222").unwrap();
        assert_eq!(named.tls_name(), "node2.example.com");
    }
}
