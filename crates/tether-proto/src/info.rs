//! `INFO` (from the server) and `CONNECT` (from the client).
//!
//! Field names follow nats-server `server/server.go` (`Info`) and `server/client.go`
//! (`ClientOpts`), and the protocol page
//! (<https://docs.nats.io/reference/reference-protocols/nats-protocol#info>).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;

/// The server's `max_payload` when `INFO` does not give one: nats-server's default,
/// 1 MiB (`MAX_PAYLOAD_SIZE` in `server/const.go`).
pub const DEFAULT_SERVER_MAX_PAYLOAD: usize = 1024 * 1024;

/// The JSON of a server's `INFO`. Missing fields take their defaults; unknown fields are
/// ignored, so newer servers stay compatible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[allow(clippy::struct_excessive_bools)] // mirrors the INFO JSON the server sends: one field per key
pub struct ServerInfo {
    /// The server's unique id.
    pub server_id: String,
    /// The server's name.
    pub server_name: String,
    /// The server's version, e.g. `"2.10.22"`.
    pub version: String,
    /// The protocol level; `1` or more supports INFO updates.
    pub proto: i32,
    /// The Go version the server was built with.
    pub go: String,
    /// The host the server listens on.
    pub host: String,
    /// The port the server listens on.
    pub port: u16,
    /// Whether the server supports headers (`HPUB`/`HMSG`).
    pub headers: bool,
    /// Whether the client must authenticate.
    pub auth_required: bool,
    /// Whether the client must use TLS.
    pub tls_required: bool,
    /// Whether the server verifies client certificates.
    pub tls_verify: bool,
    /// Whether the client may use TLS.
    pub tls_available: bool,
    /// The largest payload (header block + payload) the server accepts from this client.
    /// [`DEFAULT_SERVER_MAX_PAYLOAD`] when absent.
    pub max_payload: usize,
    /// Whether JetStream is enabled.
    pub jetstream: bool,
    /// The id the server gave this connection.
    pub client_id: u64,
    /// The client's address as the server sees it.
    pub client_ip: String,
    /// The nonce to sign for nkey or JWT authentication.
    pub nonce: Option<String>,
    /// The cluster name.
    pub cluster: Option<String>,
    /// The JetStream domain.
    pub domain: Option<String>,
    /// Other servers of the cluster a client may connect to.
    pub connect_urls: Vec<String>,
    /// Lame duck mode: the server is about to shut down.
    pub ldm: bool,
    /// Whether the server waits for `CONNECT` info (always true for clients).
    pub connect_info: bool,
    /// The server's curve key for encrypted auth callouts.
    pub xkey: Option<String>,
}

impl Default for ServerInfo {
    fn default() -> Self {
        Self {
            server_id: String::new(),
            server_name: String::new(),
            version: String::new(),
            proto: 0,
            go: String::new(),
            host: String::new(),
            port: 0,
            headers: false,
            auth_required: false,
            tls_required: false,
            tls_verify: false,
            tls_available: false,
            max_payload: DEFAULT_SERVER_MAX_PAYLOAD,
            jetstream: false,
            client_id: 0,
            client_ip: String::new(),
            nonce: None,
            cluster: None,
            domain: None,
            connect_urls: Vec::new(),
            ldm: false,
            connect_info: false,
            xkey: None,
        }
    }
}

impl ServerInfo {
    /// Parses the JSON of an `INFO` line (what follows `INFO`), surrounding ASCII
    /// whitespace allowed. The decoder's only way from bytes to a `ServerInfo`, and the
    /// oracle of the `info` fuzz target.
    pub(crate) fn from_json(json: &[u8]) -> Result<Self, ProtocolError> {
        serde_json::from_slice(json.trim_ascii()).map_err(|e| ProtocolError::InvalidInfo {
            reason: e.to_string(),
        })
    }
}

/// The JSON of our `CONNECT` (DESIGN "Wire handshake" 3).
///
/// `Debug` hides `pass` and `auth_token`.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[allow(clippy::struct_excessive_bools)] // mirrors the CONNECT JSON the server reads: one field per key
pub struct ConnectInfo {
    /// `+OK` after every operation; tether always sends `false`.
    pub verbose: bool,
    /// Stricter server checks; tether always sends `false`.
    pub pedantic: bool,
    /// `1` makes the server send INFO updates (cluster changes, lame duck mode).
    pub protocol: u8,
    /// The client's language: `"rust"`.
    pub lang: String,
    /// The client's version.
    pub version: String,
    /// The connection's name, shown in the server's monitoring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether the server delivers our own publishes to our subscriptions.
    pub echo: bool,
    /// Whether we use headers; must equal INFO's `headers`.
    pub headers: bool,
    /// Whether the server answers requests without responders with a 503 status.
    pub no_responders: bool,
    /// Whether the client requires TLS.
    pub tls_required: bool,
    /// User name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<String>,
    /// Token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    /// User JWT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<String>,
    /// Public nkey.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey: Option<String>,
    /// Signature of INFO's nonce.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl Default for ConnectInfo {
    fn default() -> Self {
        Self {
            verbose: false,
            pedantic: false,
            protocol: 1,
            lang: "rust".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            name: None,
            echo: true,
            headers: false,
            no_responders: false,
            tls_required: false,
            user: None,
            pass: None,
            auth_token: None,
            jwt: None,
            nkey: None,
            sig: None,
        }
    }
}

impl fmt::Debug for ConnectInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("ConnectInfo")
            .field("verbose", &self.verbose)
            .field("pedantic", &self.pedantic)
            .field("protocol", &self.protocol)
            .field("lang", &self.lang)
            .field("version", &self.version)
            .field("name", &self.name)
            .field("echo", &self.echo)
            .field("headers", &self.headers)
            .field("no_responders", &self.no_responders)
            .field("tls_required", &self.tls_required)
            .field("user", &self.user)
            .field("pass", &redact(&self.pass))
            .field("auth_token", &redact(&self.auth_token))
            .field("jwt", &redact(&self.jwt))
            .field("nkey", &self.nkey)
            .field("sig", &redact(&self.sig))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_info_defaults_and_unknown_fields() {
        let info: ServerInfo =
            serde_json::from_str(r#"{"server_id":"X","port":4222,"future_field":[1,2]}"#).unwrap();
        assert_eq!(info.server_id, "X");
        assert_eq!(info.port, 4222);
        assert_eq!(info.max_payload, DEFAULT_SERVER_MAX_PAYLOAD);
        assert!(info.connect_urls.is_empty());
    }

    #[test]
    fn server_info_full() {
        let json = r#"{"server_id":"NAB","server_name":"n1","version":"2.10.22","proto":1,
            "go":"go1.22","host":"0.0.0.0","port":4222,"headers":true,"auth_required":true,
            "tls_required":false,"tls_available":true,"max_payload":8388608,"jetstream":true,
            "client_id":42,"client_ip":"127.0.0.1","nonce":"abc","cluster":"c","domain":"d",
            "connect_urls":["10.0.0.1:4222"],"ldm":true,"xkey":"XK"}"#;
        let info: ServerInfo = serde_json::from_str(json).unwrap();
        assert_eq!(info.max_payload, 8_388_608);
        assert_eq!(info.client_id, 42);
        assert_eq!(info.nonce.as_deref(), Some("abc"));
        assert!(info.ldm && info.headers && info.jetstream && info.tls_available);
        let again: ServerInfo =
            serde_json::from_slice(&serde_json::to_vec(&info).unwrap()).unwrap();
        assert_eq!(again, info);
    }

    #[test]
    fn connect_info_json() {
        let c = ConnectInfo {
            version: "1.2.3".into(),
            headers: true,
            no_responders: true,
            pass: Some("secret".into()),
            ..ConnectInfo::default()
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"verbose":false,"pedantic":false,"protocol":1,"lang":"rust","version":"1.2.3","echo":true,"headers":true,"no_responders":true,"tls_required":false,"pass":"secret"}"#
        );
        assert!(!format!("{c:?}").contains("secret"));
    }
}
