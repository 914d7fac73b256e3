//! Raw TCP listeners that behave like broken or hostile servers.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{free_port, TestkitError};

/// A valid INFO line, as hostile peers send it before misbehaving.
pub const VALID_INFO: &[u8] = b"INFO {\"server_id\":\"hostile\",\"version\":\"2.15.1\",\"proto\":1,\"headers\":true,\"max_payload\":1048576}\r\n";

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
    }
}

/// Reads and discards until EOF, an error or a read timeout.
fn discard(s: &mut TcpStream) -> io::Result<()> {
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
