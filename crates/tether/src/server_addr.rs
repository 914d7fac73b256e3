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
    /// A `tls://` URL: never dialled in plaintext, and this build has no TLS yet.
    #[error(
        "`{input}`: TLS is not supported yet by this tether build, and a tls:// server is \
         never contacted in plaintext; use nats:// for a server without TLS"
    )]
    TlsUnsupported {
        /// The URL as given.
        input: String,
    },
    /// A scheme other than `nats`.
    #[error("`{input}`: unsupported scheme `{scheme}`; use nats:// (TLS is not supported yet)")]
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
        if scheme == "tls" {
            // Never dial a tls:// server in plaintext: credentials would go out in clear.
            return Err(AddrError::TlsUnsupported {
                input: input.to_owned(),
            });
        }
        if scheme != "nats" {
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
        })
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
        Some(d)
    }

    /// What identifies a server in the pool: the host (case-insensitive) and the port.
    pub(crate) fn key(&self) -> (String, u16) {
        (self.host.to_ascii_lowercase(), self.port)
    }
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
        // B1: never dialled in plaintext.
        let e = ServerAddr::parse("tls://127.0.0.1:4443").unwrap_err();
        assert!(matches!(e, AddrError::TlsUnsupported { .. }), "{e:?}");
        assert!(e.to_string().contains("TLS is not supported yet"), "{e}");
    }
}
