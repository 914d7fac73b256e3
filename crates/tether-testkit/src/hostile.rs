//! Raw TCP listeners that behave like broken or hostile servers.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{free_port, TestkitError, TlsCerts};

/// A valid INFO line, as hostile peers send it before misbehaving.
pub const VALID_INFO: &[u8] = b"INFO {\"server_id\":\"hostile\",\"version\":\"2.15.1\",\"proto\":1,\"headers\":true,\"max_payload\":1048576}\r\n";

/// [`VALID_INFO`] with `"tls_required":true`, as the [`Hostile`] TLS kinds send it.
pub const VALID_TLS_INFO: &[u8] = b"INFO {\"server_id\":\"hostile\",\"version\":\"2.15.1\",\"proto\":1,\"headers\":true,\"max_payload\":1048576,\"tls_required\":true}\r\n";

/// How a [`HostilePeer`] treats each accepted connection.
#[derive(Debug, Clone)]
pub enum Hostile {
    /// Accept, say nothing, keep the connection open (input is read and discarded).
    Silent,
    /// Send these bytes right after accept, then keep the connection open.
    Garbage(Vec<u8>),
    /// Answer like an HTTP server: `HTTP/1.1 400 Bad Request` at once, then close.
    Http,
    /// Send `INFO {"server_id":"x"` with no end, then keep the connection open.
    HalfInfo,
    /// Send a valid INFO, then read and discard everything, never answering PING.
    NoPong,
    /// Send a valid INFO; after reading a `PING` line (following CONNECT), answer `PONG`
    /// and then send these bytes; keep the connection open.
    Script(Vec<u8>),
    /// Send a valid INFO, then for each `(prefix, bytes)` in turn: read lines until one
    /// starts with `prefix` (case-insensitive, e.g. `"PING"` or `"SUB "`), then send
    /// `bytes`. Afterwards keep the connection open (input is discarded).
    Dialogue(Vec<(String, Vec<u8>)>),
    /// Send [`VALID_TLS_INFO`] in plaintext, then act as the TLS server when the client
    /// upgrades (serving `certs`' server certificate, no client authentication), then
    /// send `garbage` over TLS at once (without waiting for CONNECT) and keep the
    /// connection open (input is discarded).
    ///
    /// A client that does not start TLS after that INFO (or refuses the certificate)
    /// fails the handshake and the connection is closed.
    TlsGarbage {
        /// The server certificate to present.
        certs: Arc<TlsCerts>,
        /// Sent right after the handshake, e.g. `b"\x00\x01GARBAGE\r\n"`.
        garbage: Vec<u8>,
    },
    /// Like [`TlsGarbage`](Self::TlsGarbage) in the `handshake_first` order: wait for the
    /// client's TLS handshake, then send [`VALID_TLS_INFO`] and `garbage` over TLS.
    TlsFirstGarbage {
        /// The server certificate to present.
        certs: Arc<TlsCerts>,
        /// Sent over TLS right after the INFO.
        garbage: Vec<u8>,
    },
}

/// A `TcpListener` on 127.0.0.1 that serves every connection as its [`Hostile`] kind, each
/// on its own thread. Dropping it closes the listener and every connection.
#[derive(Debug)]
pub struct HostilePeer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl HostilePeer {
    /// Starts listening on a [`free_port`].
    pub fn start(kind: Hostile) -> Result<Self, TestkitError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, free_port()))
            .map_err(|e| TestkitError::io("binding the hostile peer", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| TestkitError::io("reading the hostile peer's address", e))?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (a, s, c) = (accepted.clone(), stop.clone(), conns.clone());
        let thread = std::thread::Builder::new()
            .name(format!("tether-hostile-{}", addr.port()))
            .spawn(move || accept_loop(&listener, &kind, &a, &s, &c))
            .map_err(|e| TestkitError::io("spawning the hostile peer thread", e))?;
        Ok(HostilePeer {
            addr,
            accepted,
            stop,
            conns,
            thread: Some(thread),
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// How many connections were accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for HostilePeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for s in self
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    kind: &Hostile,
    accepted: &AtomicUsize,
    stop: &AtomicBool,
    conns: &Mutex<Vec<TcpStream>>,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        accepted.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(clone);
        }
        let kind = kind.clone();
        let _ = std::thread::Builder::new()
            .name("tether-hostile-conn".into())
            .spawn(move || {
                let _ = serve(stream, &kind);
            });
    }
}

fn serve(mut s: TcpStream, kind: &Hostile) -> io::Result<()> {
    let tls_server = |certs: &TlsCerts| {
        let cfg = certs
            .rustls_server_config()
            .map_err(|e| io::Error::other(e.to_string()))?;
        rustls::ServerConnection::new(cfg).map_err(io::Error::other)
    };
    match kind {
        Hostile::Silent => discard(&mut s),
        Hostile::Garbage(bytes) => {
            s.write_all(bytes)?;
            discard(&mut s)
        }
        Hostile::Http => {
            s.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
            s.shutdown(Shutdown::Write)?;
            // Drain briefly so the close is a FIN, not an RST over unread input.
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            discard(&mut s)
        }
        Hostile::HalfInfo => {
            s.write_all(b"INFO {\"server_id\":\"x\"")?;
            discard(&mut s)
        }
        Hostile::NoPong => {
            s.write_all(VALID_INFO)?;
            discard(&mut s)
        }
        Hostile::Script(bytes) => {
            s.write_all(VALID_INFO)?;
            wait_for_line(&mut s, &mut Vec::new(), "PING")?;
            s.write_all(b"PONG\r\n")?;
            s.write_all(bytes)?;
            discard(&mut s)
        }
        Hostile::Dialogue(steps) => {
            s.write_all(VALID_INFO)?;
            let mut pending = Vec::new();
            for (prefix, bytes) in steps {
                wait_for_line(&mut s, &mut pending, prefix)?;
                s.write_all(bytes)?;
            }
            discard(&mut s)
        }
        Hostile::TlsGarbage { certs, garbage } => {
            s.write_all(VALID_TLS_INFO)?;
            let mut tls = rustls::StreamOwned::new(tls_server(certs)?, s);
            finish_handshake(&mut tls)?;
            tls.write_all(garbage)?;
            tls.flush()?;
            discard(&mut tls)
        }
        Hostile::TlsFirstGarbage { certs, garbage } => {
            let mut tls = rustls::StreamOwned::new(tls_server(certs)?, s);
            finish_handshake(&mut tls)?;
            tls.write_all(VALID_TLS_INFO)?;
            tls.write_all(garbage)?;
            tls.flush()?;
            discard(&mut tls)
        }
    }
}

/// Drives the server side of a TLS handshake to its end, so what is written next goes
/// out as application data after it. A failed handshake (a plaintext client, a client
/// that refuses the certificate) closes the connection, after the alert rustls sends;
/// otherwise the peer's clone of the socket would keep it open.
fn finish_handshake(
    tls: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
) -> io::Result<()> {
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            let _ = tls.sock.shutdown(Shutdown::Both);
            return Err(e);
        }
    }
    Ok(())
}

/// Reads and discards until EOF, an error or a read timeout.
fn discard(s: &mut impl Read) -> io::Result<()> {
    let mut buf = [0u8; 8192];
    loop {
        if s.read(&mut buf)? == 0 {
            return Ok(());
        }
    }
}

/// Reads lines until one starts with `prefix` (case-insensitive). `pending` holds what
/// was read past that line, for the next call.
fn wait_for_line(s: &mut TcpStream, pending: &mut Vec<u8>, prefix: &str) -> io::Result<()> {
    let prefix = prefix.as_bytes();
    let mut buf = [0u8; 8192];
    loop {
        while let Some(pos) = pending.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = pending.drain(..pos + 2).collect();
            if line[..pos].len() >= prefix.len()
                && line[..prefix.len()].eq_ignore_ascii_case(prefix)
            {
                return Ok(());
            }
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// A port on 127.0.0.1 with nothing listening (connecting is refused).
pub fn closed_port() -> u16 {
    free_port()
}
