//! Helpers shared by the integration tests: a raw NATS line client and an echo server.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A raw protocol client: write lines, read lines with a timeout.
pub(crate) struct Raw {
    pub reader: BufReader<TcpStream>,
}

impl Raw {
    pub(crate) fn connect(addr: SocketAddr) -> io::Result<Raw> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Raw {
            reader: BufReader::new(s),
        })
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// Reads one line (with its CRLF); `Ok("")` on EOF.
    pub(crate) fn line(&mut self) -> io::Result<String> {
        let mut l = String::new();
        self.reader.read_line(&mut l)?;
        Ok(l)
    }

    pub(crate) fn set_timeout(&self, d: Duration) {
        self.stream().set_read_timeout(Some(d)).unwrap();
    }

    /// Reads INFO, sends CONNECT + PING, and reads until PONG.
    pub(crate) fn handshake(&mut self) -> io::Result<()> {
        let info = self.line()?;
        assert!(info.starts_with("INFO "), "expected INFO, got {info:?}");
        self.send(b"CONNECT {\"protocol\":1,\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\nPING\r\n")?;
        self.until(|l| l == "PONG\r\n").map(|_| ())
    }

    /// Reads lines until `pred` matches one; returns it.
    pub(crate) fn until(&mut self, mut pred: impl FnMut(&str) -> bool) -> io::Result<String> {
        loop {
            let l = self.line()?;
            if l.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if pred(&l) {
                return Ok(l);
            }
        }
    }

    /// Sends PING and waits for PONG (skipping INFO and server PINGs).
    pub(crate) fn ping(&mut self) -> io::Result<()> {
        self.send(b"PING\r\n")?;
        self.until(|l| l == "PONG\r\n").map(|_| ())
    }
}

/// Whether a read error means "nothing arrived before the timeout".
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads once; classifies the outcome.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    Data(usize),
    Eof,
    Reset,
    Timeout,
    Other(io::ErrorKind),
}

pub(crate) fn read_outcome(s: &mut TcpStream, timeout: Duration) -> ReadOutcome {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => ReadOutcome::Eof,
        Ok(n) => ReadOutcome::Data(n),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => ReadOutcome::Reset,
        Err(e) if is_timeout(&e) => ReadOutcome::Timeout,
        Err(e) => ReadOutcome::Other(e.kind()),
    }
}

/// A TCP echo server on its own thread; counts accepted connections.
pub(crate) struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
}

impl Echo {
    pub(crate) fn start() -> Echo {
        let l = TcpListener::bind(("127.0.0.1", tether_testkit::free_port())).unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let _ = io::copy(&mut r, &mut s);
                });
            }
        });
        Echo { addr, accepted }
    }

    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}
