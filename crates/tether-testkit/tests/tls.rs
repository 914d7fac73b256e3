//! TLS: generated certificates, nats-server with TLS after INFO, mTLS, handshake_first,
//! a TLS cluster, and the hostile TLS peers. The client side here is plain rustls over
//! std sockets, loading the PEM files as a client would.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{read_outcome, ReadOutcome};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, RootCertStore, StreamOwned,
};
use tether_testkit::{
    Hostile, HostilePeer, NatsCluster, NatsServer, ServerConfig, TlsCerts, VALID_TLS_INFO,
};

const QUIET: Duration = Duration::from_millis(300);
const GARBAGE: &[u8] = b"\x00\x01GARBAGE\r\n";

type Tls = BufReader<StreamOwned<ClientConnection, TcpStream>>;

/// A client config built from the PEM files: trusts `ca_file`, presents the client
/// certificate from `client` (cert, key) if given.
fn client_config(ca_file: &Path, client: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    Arc::new(cfg)
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Reads one plaintext line byte by byte, so nothing past it is consumed before TLS.
fn plain_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "EOF after {line:?}");
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Starts TLS on `s` as a client verifying `name` and completes the handshake.
fn upgrade(s: TcpStream, cfg: Arc<ClientConfig>, name: &str) -> Result<Tls, rustls::Error> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut tls = StreamOwned::new(ClientConnection::new(cfg, name).unwrap(), s);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            return Err(rustls_error(&e).unwrap_or_else(|| panic!("handshake I/O: {e}")));
        }
    }
    Ok(BufReader::new(tls))
}

/// The rustls error inside an I/O error from a TLS stream, if that is what it is.
fn rustls_error(e: &io::Error) -> Option<rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>().cloned()
}

fn line(t: &mut Tls) -> io::Result<String> {
    let mut l = String::new();
    t.read_line(&mut l)?;
    Ok(l)
}

/// Sends CONNECT + PING and reads until PONG (skipping INFO updates).
fn connect_ping(t: &mut Tls) -> io::Result<()> {
    t.get_mut()
        .write_all(b"CONNECT {\"protocol\":1,\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")?;
    t.get_mut().flush()?;
    loop {
        let l = line(t)?;
        if l.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if l == "PONG\r\n" {
            return Ok(());
        }
        assert!(
            l.starts_with("INFO ") || l == "PING\r\n",
            "unexpected {l:?}"
        );
    }
}

/// Plaintext INFO, then TLS verified as `name`, then CONNECT + PING -> PONG.
fn tls_after_info(server: &NatsServer, cfg: Arc<ClientConfig>, name: &str) -> io::Result<String> {
    let mut s = tcp(server.addr());
    let info = plain_line(&mut s);
    let mut t = upgrade(s, cfg, name).map_err(io::Error::other)?;
    connect_ping(&mut t)?;
    Ok(info)
}

fn info_json(info: &str) -> serde_json::Value {
    serde_json::from_str(info.strip_prefix("INFO ").unwrap().trim_end()).unwrap()
}

#[test]
fn certs_files_and_debug() {
    let certs = TlsCerts::new().unwrap();
    for f in [
        certs.ca_file(),
        certs.server_cert_file(),
        certs.server_key_file(),
        certs.client_cert_file(),
        certs.client_key_file(),
    ] {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.starts_with("-----BEGIN "), "{}: {text}", f.display());
        assert!(f.starts_with(certs.dir()));
    }
    assert_eq!(certs.server_names(), ["127.0.0.1", "localhost"]);
    assert!(!certs.server_expired());
    let debug = format!("{certs:?}");
    assert!(debug.contains("server_names"), "{debug}");
    assert!(!debug.contains("PRIVATE"), "{debug}");
    let other = TlsCerts::new().unwrap();
    assert_ne!(certs.ca_name(), other.ca_name());
    assert_ne!(certs.ca_der(), other.ca_der());
    let dir = certs.dir().to_owned();
    drop(certs);
    assert!(!dir.exists(), "the temp dir goes with the last handle");
}

#[test]
fn tls_after_plaintext_info() {
    let certs = TlsCerts::new().unwrap();
    let server = NatsServer::start_with(ServerConfig::default().with_tls(&certs)).unwrap();
    assert_eq!(server.url(), format!("tls://127.0.0.1:{}", server.port()));
    assert_eq!(
        server.url_with_host("localhost"),
        format!("tls://localhost:{}", server.port())
    );
    let cfg = client_config(&certs.ca_file(), None);

    // Both SANs verify.
    let info = tls_after_info(&server, cfg.clone(), "127.0.0.1").unwrap();
    let info = info_json(&info);
    assert_eq!(info["tls_required"], true, "{info}");
    tls_after_info(&server, cfg.clone(), "localhost").unwrap();

    // A name the certificate lacks does not.
    let err = tls_after_info(&server, cfg, "example.com").unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{err}"
    );

    // A client that ignores tls_required and talks plaintext gets no PONG.
    let mut s = tcp(server.addr());
    plain_line(&mut s);
    s.write_all(b"CONNECT {}\r\nPING\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(!String::from_utf8_lossy(&rest).contains("PONG"), "{rest:?}");

    // The server sees the TLS connection as TLS.
    let mut t = {
        let mut s = tcp(server.addr());
        plain_line(&mut s);
        upgrade(s, client_config(&certs.ca_file(), None), "localhost").unwrap()
    };
    connect_ping(&mut t).unwrap();
    let connz = server.connz().unwrap();
    let conns = connz["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "{connz}");
    assert!(
        conns[0]["tls_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{connz}"
    );
}

#[test]
fn verify_requires_the_client_certificate() {
    let certs = TlsCerts::new().unwrap();
    let server =
        NatsServer::start_with(ServerConfig::default().with_tls(&certs).with_tls_verify()).unwrap();
    let tls = server.config().tls.as_ref().unwrap();
    assert!(tls.verify && !tls.handshake_first);

    // Without a certificate: refused (in TLS 1.3 the client learns it at its first read).
    let err =
        tls_after_info(&server, client_config(&certs.ca_file(), None), "localhost").unwrap_err();
    // Go answers TLS 1.3's missing certificate with a certificate_required alert (a reset
    // can overtake it when the client's CONNECT reaches the closed socket first).
    assert!(
        rustls_error(&err)
            == Some(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired
            ))
            || err.kind() == io::ErrorKind::ConnectionReset,
        "{err:?}"
    );
    // With one from another CA: refused too.
    let other = TlsCerts::new().unwrap();
    let err = tls_after_info(
        &server,
        client_config(
            &certs.ca_file(),
            Some((&other.client_cert_file(), &other.client_key_file())),
        ),
        "localhost",
    )
    .unwrap_err();
    assert!(
        rustls_error(&err) == Some(rustls::Error::AlertReceived(AlertDescription::UnknownCA))
            || err.kind() == io::ErrorKind::ConnectionReset,
        "the server refuses it as from an unknown CA: {err:?}"
    );
    // With the set's client certificate: PONG.
    let info = tls_after_info(
        &server,
        client_config(
            &certs.ca_file(),
            Some((&certs.client_cert_file(), &certs.client_key_file())),
        ),
        "localhost",
    )
    .unwrap();
    assert_eq!(info_json(&info)["tls_verify"], true, "{info}");
}

#[test]
fn handshake_first_ready_and_info_over_tls() {
    let certs = TlsCerts::new().unwrap();
    let server = NatsServer::start_with(
        ServerConfig::default()
            .with_tls(&certs)
            .with_tls_handshake_first(),
    )
    .unwrap();
    assert!(server.url().starts_with("tls://"));

    // No plaintext INFO: the server waits for a ClientHello.
    let mut s = tcp(server.addr());
    assert_eq!(read_outcome(&mut s, QUIET), ReadOutcome::Timeout);
    drop(s);

    let s = tcp(server.addr());
    let mut t = upgrade(s, client_config(&certs.ca_file(), None), "127.0.0.1").unwrap();
    let info = line(&mut t).unwrap();
    assert!(info.starts_with("INFO "), "{info:?}");
    assert_eq!(info_json(&info)["tls_required"], true, "{info}");
    connect_ping(&mut t).unwrap();

    // Restart waits the same way.
    let mut server = server;
    server.restart().unwrap();
    let s = tcp(server.addr());
    let mut t = upgrade(s, client_config(&certs.ca_file(), None), "localhost").unwrap();
    assert!(line(&mut t).unwrap().starts_with("INFO "));
}

#[test]
fn handshake_first_with_verify_and_expired_cert_gets_ready() {
    // The readiness probe copes with an expired certificate and with mTLS.
    let certs = TlsCerts::expired().unwrap();
    assert!(certs.server_expired());
    let server = NatsServer::start_with(
        ServerConfig::default()
            .with_tls(&certs)
            .with_tls_verify()
            .with_tls_handshake_first(),
    )
    .unwrap();
    let s = tcp(server.addr());
    let err = upgrade(
        s,
        client_config(
            &certs.ca_file(),
            Some((&certs.client_cert_file(), &certs.client_key_file())),
        ),
        "localhost",
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{err:?}"
    );
}

#[test]
fn expired_and_unknown_ca_certificates_are_refused() {
    let expired = TlsCerts::expired().unwrap();
    let server = NatsServer::start_with(ServerConfig::default().with_tls(&expired)).unwrap();
    let err = tls_after_info(
        &server,
        client_config(&expired.ca_file(), None),
        "localhost",
    )
    .unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ),
        "{err:?}"
    );

    // Unknown CA: trusting one set's CA, talking to a server of another (valid) set.
    // (webpki checks the expiry before the issuer, so this needs a valid certificate.)
    let certs = TlsCerts::new().unwrap();
    let server = NatsServer::start_with(ServerConfig::default().with_tls(&certs)).unwrap();
    let other = TlsCerts::new().unwrap();
    let err =
        tls_after_info(&server, client_config(&other.ca_file(), None), "localhost").unwrap_err();
    assert_eq!(
        rustls_error(&err),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        )),
        "{err:?}"
    );
}

#[test]
fn tls_cluster_verified_by_name_reached_by_ip() {
    // The certificate names only `localhost`: nodes learned by IP from connect_urls must
    // be verified with the name the client started with.
    let certs = TlsCerts::with_server_names(&["localhost"]).unwrap();
    let c = NatsCluster::start_with(3, ServerConfig::default().with_tls(&certs)).unwrap();
    c.wait_routes(Duration::from_secs(10)).unwrap();
    for (i, url) in c.urls().iter().enumerate() {
        assert_eq!(url, &format!("tls://127.0.0.1:{}", c.node(i).port()));
    }
    let cfg = client_config(&certs.ca_file(), None);
    let info = info_json(&tls_after_info(c.node(0), cfg.clone(), "localhost").unwrap());
    let urls: Vec<&str> = info["connect_urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    for i in 1..3 {
        let want = format!("127.0.0.1:{}", c.node(i).port());
        assert!(urls.contains(&want.as_str()), "{want} not in {urls:?}");
    }
    for i in 1..3 {
        tls_after_info(c.node(i), cfg.clone(), "localhost").unwrap();
        let err = tls_after_info(c.node(i), cfg.clone(), "127.0.0.1").unwrap_err();
        assert!(
            matches!(
                rustls_error(&err),
                Some(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                ))
            ),
            "{err:?}"
        );
    }
}

#[test]
fn hostile_tls_garbage_after_handshake() {
    let certs = TlsCerts::new().unwrap();
    let h = HostilePeer::start(Hostile::TlsGarbage {
        certs: certs.clone(),
        garbage: GARBAGE.to_vec(),
    })
    .unwrap();
    let mut s = tcp(h.addr());
    assert_eq!(plain_line(&mut s).as_bytes(), VALID_TLS_INFO);
    let mut t = upgrade(s, client_config(&certs.ca_file(), None), "127.0.0.1").unwrap();
    let mut got = vec![0u8; GARBAGE.len()];
    t.read_exact(&mut got).unwrap();
    assert_eq!(got, GARBAGE);

    // A client of another CA fails the handshake.
    let other = TlsCerts::new().unwrap();
    let mut s = tcp(h.addr());
    plain_line(&mut s);
    let err = upgrade(s, client_config(&other.ca_file(), None), "127.0.0.1").unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );

    // A plaintext client that ignores tls_required is closed on, not left hanging.
    let mut s = tcp(h.addr());
    plain_line(&mut s);
    s.write_all(b"CONNECT {}\r\nPING\r\n").unwrap();
    let mut rest = Vec::new();
    let end = s.read_to_end(&mut rest);
    assert!(
        end.is_ok()
            || end
                .as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset),
        "{end:?}"
    );
    assert!(!rest.windows(4).any(|w| w == b"PONG"), "{rest:?}");
    assert_eq!(h.accepted(), 3);
}

#[test]
fn hostile_tls_first_garbage() {
    let certs = TlsCerts::new().unwrap();
    let h = HostilePeer::start(Hostile::TlsFirstGarbage {
        certs: certs.clone(),
        garbage: GARBAGE.to_vec(),
    })
    .unwrap();
    let mut s = tcp(h.addr());
    // Nothing in plaintext.
    assert_eq!(read_outcome(&mut s, QUIET), ReadOutcome::Timeout);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut t = upgrade(s, client_config(&certs.ca_file(), None), "localhost").unwrap();
    assert_eq!(line(&mut t).unwrap().as_bytes(), VALID_TLS_INFO);
    let mut got = vec![0u8; GARBAGE.len()];
    t.read_exact(&mut got).unwrap();
    assert_eq!(got, GARBAGE);
}
