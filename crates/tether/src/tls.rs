//! TLS through rustls: the options, the client configuration built from them, and the
//! typed reasons a TLS handshake fails.
//!
//! # When a link uses TLS (DESIGN.md, wire handshake)
//! - A `tls://` URL, or any TLS option set ([`ConnectOptions::tls_required`],
//!   [`tls_ca_file`], [`tls_client_cert`], [`tls_first`]): the link upgrades after the
//!   server's plaintext INFO, and an INFO that offers no TLS fails the attempt
//!   ([`HandshakeError::TlsUnavailable`](crate::HandshakeError::TlsUnavailable)).
//! - A `nats://` URL without TLS options: plaintext, unless the server's INFO says
//!   `tls_required`; then the link upgrades too, trusting the system's root certificates.
//! - [`tls_first`]: the TLS handshake comes before INFO, for servers configured with
//!   `handshake_first`.
//!
//! # Trust
//! With [`tls_ca_file`], the server's certificate must chain to a CA of that file (the
//! system's roots are not consulted); without it, to one of the platform's roots
//! (`rustls-native-certs`). The name checked is the URL's host; a server discovered by
//! IP address through `connect_urls` is checked against the name of the URL it was learnt
//! through, as its certificate names the cluster's DNS name, not each node's address.
//!
//! # Example
//! ```no_run
//! # async fn doc() -> Result<(), tether::ConnectError> {
//! let client = tether::ConnectOptions::new()
//!     .tls_ca_file("ca.pem")                        // trust this CA (default: the system's)
//!     .tls_client_cert("client.pem", "client.key") // mTLS, when the server verifies clients
//!     .credentials_callback(|| async {
//!         // called at every connect attempt: fetch the current secret here
//!         Ok::<_, std::io::Error>(tether::Credentials::user_and_password("svc", "s3cret"))
//!     })
//!     .connect("tls://nats.example.com:4222")
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! [`ConnectOptions::tls_required`]: crate::ConnectOptions::tls_required
//! [`tls_ca_file`]: crate::ConnectOptions::tls_ca_file
//! [`tls_client_cert`]: crate::ConnectOptions::tls_client_cert
//! [`tls_first`]: crate::ConnectOptions::tls_first

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

use crate::error::OptionsError;

/// The TLS options of a client (see the module docs).
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsOptions {
    pub(crate) required: bool,
    pub(crate) first: bool,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) client_cert: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Paths only: the files' contents (a private key) are never read into Debug.
        f.debug_struct("TlsOptions")
            .field("required", &self.required)
            .field("first", &self.first)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

impl TlsOptions {
    /// True when the client asks for TLS on every server, whatever its URL says.
    pub(crate) fn wanted(&self) -> bool {
        self.required || self.first || self.ca_file.is_some() || self.client_cert.is_some()
    }

    /// Load and check every file the options name, so that a bad file is an error when
    /// the client is created, naming the file, not a failure at each connect attempt.
    pub(crate) fn check(&self) -> Result<(), OptionsError> {
        if let Some(ca) = &self.ca_file {
            ca_roots(ca)?;
        }
        if let Some((cert, key)) = &self.client_cert {
            client_identity(cert, key)?;
        }
        Ok(())
    }

    /// Build the rustls client configuration these options describe.
    fn build(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let roots = match &self.ca_file {
            Some(ca) => ca_roots(ca).map_err(|e| TlsError::Config(e.to_string()))?,
            None => system_roots()?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            Some((cert, key)) => {
                let (chain, key) =
                    client_identity(cert, key).map_err(|e| TlsError::Config(e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError::Config(e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

/// The client configuration, built once at the first TLS link (system roots are read
/// from the platform only when a link needs them).
#[derive(Debug, Default)]
pub(crate) struct TlsContext {
    config: OnceLock<Arc<ClientConfig>>,
}

impl TlsContext {
    /// The configuration for `opts`, built at the first call.
    pub(crate) fn config(&self, opts: &TlsOptions) -> Result<Arc<ClientConfig>, TlsError> {
        if let Some(c) = self.config.get() {
            return Ok(c.clone());
        }
        let built = opts.build()?;
        Ok(self.config.get_or_init(|| built).clone())
    }
}

fn file_error(option: &'static str, path: &Path, fix: impl Into<String>) -> OptionsError {
    OptionsError::Invalid {
        option,
        value: path.display().to_string(),
        fix: fix.into(),
    }
}

/// The CA certificates of a PEM file.
fn ca_roots(path: &Path) -> Result<RootCertStore, OptionsError> {
    let certs = read_certs("tls_ca_file", path)?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            file_error(
                "tls_ca_file",
                path,
                format!("a certificate in it is not a usable CA certificate ({e})"),
            )
        })?;
    }
    Ok(roots)
}

fn read_certs(
    option: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, OptionsError> {
    let bytes = std::fs::read(path)
        .map_err(|e| file_error(option, path, format!("cannot read it: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            file_error(
                option,
                path,
                format!("it is not a PEM certificate file ({e})"),
            )
        })?;
    if certs.is_empty() {
        return Err(file_error(
            option,
            path,
            "it holds no PEM certificate (`-----BEGIN CERTIFICATE-----`); give a PEM file",
        ));
    }
    Ok(certs)
}

/// A client certificate chain and its private key, checked to belong together.
fn client_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), OptionsError> {
    let chain = read_certs("tls_client_cert", cert)?;
    let bytes = std::fs::read(key)
        .map_err(|e| file_error("tls_client_key", key, format!("cannot read it: {e}")))?;
    let private = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        file_error(
            "tls_client_key",
            key,
            format!("it holds no PEM private key (PKCS#8, PKCS#1 or SEC1) ({e})"),
        )
    })?;
    // Sign-and-verify check that the key is the certificate's: a mismatch would otherwise
    // surface as a refused handshake at every connect attempt.
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), private.clone_key(), &provider).map_err(
        |e| {
            file_error(
                "tls_client_key",
                key,
                format!(
                    "it does not belong to the certificate in {} ({e}); give the key the \
                     certificate was issued for",
                    cert.display()
                ),
            )
        },
    )?;
    Ok((chain, private))
}

/// The platform's root certificates.
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| String::from("none found"), ToString::to_string);
        return Err(TlsError::NoRoots { detail: why });
    }
    Ok(roots)
}

/// The name a server's certificate is checked against.
pub(crate) fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::BadName {
        name: name.to_owned(),
    })
}

/// Why a TLS handshake (or the TLS layer of a link) failed. The Display text says which
/// check failed and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsError {
    /// The server's certificate is not signed by a trusted CA.
    UnknownCa {
        /// The name checked.
        name: String,
    },
    /// The server's certificate is not valid for the name checked.
    NameMismatch {
        /// The name checked (the URL's host, or the name a discovered server inherits).
        name: String,
    },
    /// The server's certificate has expired (or is not valid yet).
    Expired {
        /// The name checked.
        name: String,
    },
    /// Another problem with the server's certificate.
    BadCertificate {
        /// The name checked.
        name: String,
        /// What rustls said.
        detail: String,
    },
    /// The server asks for a client certificate and none was given.
    ClientCertRequired,
    /// The server refused the client certificate given.
    ClientCertRejected {
        /// The TLS alert the server sent.
        alert: String,
    },
    /// The peer did not answer with TLS: a plaintext server (or not a NATS server).
    NotTls,
    /// The handshake failed otherwise (versions, ciphers, an alert).
    Handshake {
        /// What rustls said.
        detail: String,
    },
    /// No root certificate could be read from the platform.
    NoRoots {
        /// Why.
        detail: String,
    },
    /// The host cannot be used as a TLS server name.
    BadName {
        /// The name.
        name: String,
    },
    /// The TLS configuration could not be built.
    Config(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownCa { name } => write!(
                f,
                "TLS: the certificate of {name} is not signed by a trusted CA; give the CA \
                 that signed it with tls_ca_file"
            ),
            Self::NameMismatch { name } => write!(
                f,
                "TLS: the server's certificate is not valid for the name {name}; connect with \
                 a name the certificate lists"
            ),
            Self::Expired { name } => write!(
                f,
                "TLS: the certificate of {name} has expired or is not valid yet; renew it on \
                 the server (or check the clock)"
            ),
            Self::BadCertificate { name, detail } => {
                write!(f, "TLS: the certificate of {name} was refused: {detail}")
            }
            Self::ClientCertRequired => f.write_str(
                "TLS: the server requires a client certificate; give one with tls_client_cert",
            ),
            Self::ClientCertRejected { alert } => write!(
                f,
                "TLS: the server refused the client certificate ({alert}); give one signed by \
                 a CA the server trusts"
            ),
            Self::NotTls => f.write_str(
                "TLS: the server did not answer the TLS handshake with TLS: with tls_first, the \
                 server must be configured with handshake_first (else drop tls_first: the \
                 link upgrades after INFO); a plaintext server needs a nats:// URL without \
                 TLS options",
            ),
            Self::Handshake { detail } => write!(f, "TLS handshake failed: {detail}"),
            Self::NoRoots { detail } => write!(
                f,
                "TLS: no root certificates could be read from this system ({detail}); give \
                 the server's CA with tls_ca_file"
            ),
            Self::BadName { name } => {
                write!(f, "TLS: `{name}` cannot be checked as a server name")
            }
            Self::Config(e) => write!(f, "TLS configuration: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

impl TlsError {
    /// What a rustls error says about a handshake with the server named `name`.
    pub(crate) fn classify(e: &rustls::Error, name: &str) -> Self {
        let name = name.to_owned();
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    Self::UnknownCa { name }
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => Self::NameMismatch { name },
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => Self::Expired { name },
                other => Self::BadCertificate {
                    name,
                    detail: format!("{other:?}"),
                },
            },
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
                Self::ClientCertRequired
            }
            rustls::Error::AlertReceived(
                a @ (AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::AccessDenied),
            ) => Self::ClientCertRejected {
                alert: format!("{a:?}"),
            },
            rustls::Error::InvalidMessage(_) => Self::NotTls,
            other => Self::Handshake {
                detail: other.to_string(),
            },
        }
    }

    /// The TLS error an I/O error of a TLS transport carries, if it carries one.
    pub(crate) fn from_io(e: &std::io::Error, name: &str) -> Option<Self> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(|r| Self::classify(r, name))
    }
}
