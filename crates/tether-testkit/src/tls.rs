//! Test certificates (a CA, a server and a client certificate) made at test time, and the
//! TLS settings of a [`ServerConfig`](crate::ServerConfig).

use std::fmt::{self, Write as _};
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tempfile::TempDir;

use crate::TestkitError;

/// The server certificate's names with [`TlsCerts::new`]: an IP SAN and a DNS SAN.
pub const DEFAULT_SERVER_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// Distinguishes the CAs of different [`TlsCerts`] in one process.
static NEXT_CA: AtomicU64 = AtomicU64::new(0);

/// A throwaway PKI written as PEM files into its own temp dir: a self-signed CA, a server
/// certificate and a client certificate (for mTLS), both signed by that CA. Keys are
/// ECDSA P-256 in PKCS#8 (`-----BEGIN PRIVATE KEY-----`), which nats-server and rustls
/// both read.
///
/// Constructors return an `Arc` so a server config, a hostile peer and the test can share
/// one set; the files live as long as the last handle.
///
/// - [`new`](Self::new): server names `127.0.0.1` (IP SAN) and `localhost` (DNS SAN).
/// - [`with_server_names`](Self::with_server_names): choose the names, e.g. only
///   `localhost`, so a client that reaches the server by IP must verify it by name.
/// - [`expired`](Self::expired): the server certificate expired yesterday (the CA and
///   the client certificate are valid), so a verifying client fails with an expired
///   certificate error.
///
/// Each set has its own CA with its own key and subject name, so trusting one set's CA
/// and talking to a server of another set fails as an unknown issuer.
pub struct TlsCerts {
    dir: TempDir,
    ca_name: String,
    server_names: Vec<String>,
    server_expired: bool,
    ca_der: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivatePkcs8KeyDer<'static>,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: PrivatePkcs8KeyDer<'static>,
}

impl fmt::Debug for TlsCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys stay out of the output; the paths say where to find everything.
        f.debug_struct("TlsCerts")
            .field("dir", &self.dir.path())
            .field("ca_name", &self.ca_name)
            .field("server_names", &self.server_names)
            .field("server_expired", &self.server_expired)
            .finish_non_exhaustive()
    }
}

const CA_FILE: &str = "ca.pem";
const SERVER_CERT_FILE: &str = "server-cert.pem";
const SERVER_KEY_FILE: &str = "server-key.pem";
const CLIENT_CERT_FILE: &str = "client-cert.pem";
const CLIENT_KEY_FILE: &str = "client-key.pem";

impl TlsCerts {
    /// A new CA with a server certificate for `127.0.0.1` and `localhost`
    /// ([`DEFAULT_SERVER_NAMES`]) and a client certificate.
    pub fn new() -> Result<Arc<Self>, TestkitError> {
        Self::generate(&DEFAULT_SERVER_NAMES, false)
    }

    /// Like [`new`](Self::new) with the server certificate's subject alternative names
    /// set to `names`: each that parses as an IP address becomes an IP SAN, any other a
    /// DNS SAN. `&["localhost"]` gives a certificate a client can verify only by the name
    /// `localhost`, whatever address it connected to.
    pub fn with_server_names(names: &[&str]) -> Result<Arc<Self>, TestkitError> {
        Self::generate(names, false)
    }

    /// Like [`new`](Self::new) but the server certificate's validity ended yesterday
    /// (`not_before` two days ago, `not_after` one day ago). nats-server serves it
    /// anyway; a verifying client refuses it as expired.
    pub fn expired() -> Result<Arc<Self>, TestkitError> {
        Self::generate(&DEFAULT_SERVER_NAMES, true)
    }

    fn generate(names: &[&str], server_expired: bool) -> Result<Arc<Self>, TestkitError> {
        let fail = |what: &str, e: rcgen::Error| TestkitError::Tls {
            detail: format!("generating the {what}: {e}"),
        };
        if names.is_empty() {
            return Err(TestkitError::Tls {
                detail: "a server certificate needs at least one name; pass e.g. \
                         &[\"localhost\"]"
                    .into(),
            });
        }
        let ca_name = format!(
            "tether test CA {}-{}",
            std::process::id(),
            NEXT_CA.fetch_add(1, Ordering::Relaxed)
        );

        let ca_key = KeyPair::generate().map_err(|e| fail("CA key", e))?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name.clone());
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(|e| fail("CA certificate", e))?;
        let issuer = Issuer::new(ca_params, ca_key);

        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let server_key = KeyPair::generate().map_err(|e| fail("server key", e))?;
        let mut server_params =
            CertificateParams::new(names.clone()).map_err(|e| fail("server certificate", e))?;
        server_params.distinguished_name = rcgen::DistinguishedName::new();
        server_params
            .distinguished_name
            .push(DnType::CommonName, "tether test server");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if server_expired {
            let now = time::OffsetDateTime::now_utc();
            server_params.not_before = now - time::Duration::days(2);
            server_params.not_after = now - time::Duration::days(1);
        }
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .map_err(|e| fail("server certificate", e))?;

        let client_key = KeyPair::generate().map_err(|e| fail("client key", e))?;
        let mut client_params = CertificateParams::default();
        client_params.distinguished_name = rcgen::DistinguishedName::new();
        client_params
            .distinguished_name
            .push(DnType::CommonName, "tether test client");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let client_cert = client_params
            .signed_by(&client_key, &issuer)
            .map_err(|e| fail("client certificate", e))?;

        let dir = tempfile::Builder::new()
            .prefix("tether-tls-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating the certificates' temp dir", e))?;
        for (file, pem) in [
            (CA_FILE, ca_cert.pem()),
            (SERVER_CERT_FILE, server_cert.pem()),
            (SERVER_KEY_FILE, server_key.serialize_pem()),
            (CLIENT_CERT_FILE, client_cert.pem()),
            (CLIENT_KEY_FILE, client_key.serialize_pem()),
        ] {
            fs::write(dir.path().join(file), pem)
                .map_err(|e| TestkitError::io(format!("writing {file}"), e))?;
        }

        Ok(Arc::new(TlsCerts {
            ca_name,
            server_names: names,
            server_expired,
            ca_der: ca_cert.der().clone(),
            server_chain: vec![server_cert.der().clone()],
            server_key: PrivatePkcs8KeyDer::from(server_key.serialize_der()),
            client_chain: vec![client_cert.der().clone()],
            client_key: PrivatePkcs8KeyDer::from(client_key.serialize_der()),
            dir,
        }))
    }

    /// The CA certificate (PEM): what clients trust and what a `verify` server checks
    /// client certificates against.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join(CA_FILE)
    }

    /// The server certificate (PEM), signed by the CA.
    pub fn server_cert_file(&self) -> PathBuf {
        self.dir.path().join(SERVER_CERT_FILE)
    }

    /// The server's private key (PEM, PKCS#8).
    pub fn server_key_file(&self) -> PathBuf {
        self.dir.path().join(SERVER_KEY_FILE)
    }

    /// The client certificate (PEM) for mTLS, signed by the CA.
    pub fn client_cert_file(&self) -> PathBuf {
        self.dir.path().join(CLIENT_CERT_FILE)
    }

    /// The client's private key (PEM, PKCS#8).
    pub fn client_key_file(&self) -> PathBuf {
        self.dir.path().join(CLIENT_KEY_FILE)
    }

    /// The temp dir holding the PEM files; it lives as long as the last handle.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server certificate's subject alternative names, as given.
    pub fn server_names(&self) -> &[String] {
        &self.server_names
    }

    /// Whether the server certificate is the expired one of [`expired`](Self::expired).
    pub fn server_expired(&self) -> bool {
        self.server_expired
    }

    /// The CA's subject common name (unique per set within a process).
    pub fn ca_name(&self) -> &str {
        &self.ca_name
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// A root store holding only this set's CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        // The CA was made just now by rcgen; webpki accepts it.
        let _ = roots.add(self.ca_der.clone());
        roots
    }

    /// A rustls client config (ring provider, TLS 1.2 and 1.3) trusting this set's CA,
    /// presenting the client certificate when `with_client_cert` (for a `verify` server).
    pub fn rustls_client_config(
        &self,
        with_client_cert: bool,
    ) -> Result<Arc<rustls::ClientConfig>, TestkitError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err("choosing TLS versions"))?
            .with_root_certificates(self.root_store());
        let cfg = if with_client_cert {
            builder
                .with_client_auth_cert(self.client_chain.clone(), self.client_key_der())
                .map_err(tls_err("loading the client certificate"))?
        } else {
            builder.with_no_client_auth()
        };
        Ok(Arc::new(cfg))
    }

    /// A rustls server config (ring provider) serving this set's server certificate,
    /// without client authentication; the [`Hostile`](crate::Hostile) TLS kinds use it.
    pub fn rustls_server_config(&self) -> Result<Arc<rustls::ServerConfig>, TestkitError> {
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err("choosing TLS versions"))?
            .with_no_client_auth()
            .with_single_cert(
                self.server_chain.clone(),
                PrivateKeyDer::Pkcs8(self.server_key.clone_key()),
            )
            .map_err(tls_err("loading the server certificate"))?;
        Ok(Arc::new(cfg))
    }

    fn client_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.client_key.clone_key())
    }

    /// A client config that accepts any server certificate (readiness probes only: they
    /// must work with expired certificates and whatever names the test chose), presenting
    /// the client certificate in case the server asks for one.
    fn probe_client_config(&self) -> Result<Arc<rustls::ClientConfig>, TestkitError> {
        let provider = provider();
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_err("choosing TLS versions"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
            .with_client_auth_cert(self.client_chain.clone(), self.client_key_der())
            .map_err(tls_err("loading the client certificate"))?;
        Ok(Arc::new(cfg))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &'static str) -> impl Fn(rustls::Error) -> TestkitError {
    move |e| TestkitError::Tls {
        detail: format!("{what}: {e}"),
    }
}

/// TLS on a server's client port ([`ServerConfig::tls`](crate::ServerConfig::tls)),
/// rendered as nats-server's `tls { cert_file, key_file, ca_file, verify,
/// handshake_first, timeout }` block. Routes stay plaintext.
#[derive(Debug, Clone)]
pub struct TlsServer {
    /// The certificates: the server serves `server_cert_file`/`server_key_file` and,
    /// with `verify`, checks client certificates against `ca_file`.
    pub certs: Arc<TlsCerts>,
    /// mTLS (`verify: true`): the server refuses a client without a certificate signed
    /// by the CA.
    pub verify: bool,
    /// `handshake_first: true`: the server waits for the client's TLS handshake before
    /// it sends INFO (which then goes over TLS); a client that waits for a plaintext
    /// INFO first never gets one.
    pub handshake_first: bool,
    /// The server's TLS handshake `timeout`; `None` writes 2 s (nats-server's default is
    /// shorter, which a loaded test machine can miss).
    pub timeout: Option<Duration>,
}

impl TlsServer {
    /// TLS after INFO, no client certificates.
    pub fn new(certs: Arc<TlsCerts>) -> Self {
        TlsServer {
            certs,
            verify: false,
            handshake_first: false,
            timeout: None,
        }
    }

    /// The `tls { ... }` block for nats-server's config.
    pub(crate) fn render(&self) -> String {
        let q = |p: &Path| serde_json::Value::from(p.to_string_lossy()).to_string();
        let timeout = self.timeout.unwrap_or(Duration::from_secs(2)).as_secs_f64();
        let mut c = String::from("tls {\n");
        let _ = write!(
            c,
            "  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  timeout: {timeout}\n",
            q(&self.certs.server_cert_file()),
            q(&self.certs.server_key_file()),
            q(&self.certs.ca_file()),
        );
        if self.verify {
            c.push_str("  verify: true\n");
        }
        if self.handshake_first {
            c.push_str("  handshake_first: true\n");
        }
        c.push_str("}\n");
        c
    }

    /// Connects to `addr`, does the TLS handshake first (as `handshake_first` wants) and
    /// reads the INFO line over TLS. Used for readiness.
    pub(crate) fn probe_tls_first(&self, addr: SocketAddr) -> Result<(), String> {
        let cfg = self
            .certs
            .probe_client_config()
            .map_err(|e| e.to_string())?;
        // Any name will do: the probe accepts whatever certificate the server shows.
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let conn = rustls::ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
            .map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(2)))
            .and_then(|()| tcp.set_write_timeout(Some(Duration::from_secs(2))))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(rustls::StreamOwned::new(conn, tcp))
            .read_line(&mut line)
            .map_err(|e| format!("TLS handshake or read: {e}"))?;
        if line.starts_with("INFO ") {
            Ok(())
        } else {
            Err(format!("read {line:?} over TLS instead of INFO"))
        }
    }
}

/// Accepts any server certificate but still checks the handshake signatures.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
