//! The transport under a link, and dialing it.
//!
//! # The seam
//! [`Transport`] is the byte stream one link runs over. Everything above it (the
//! driver's loop, the handshake, the retiring link of a planned switch, a caller's direct
//! write) sees plaintext NATS protocol bytes and three operations: [`Transport::read`],
//! [`Transport::write`] (both readiness-based and cancel-safe, for the driver's
//! `select!`) and [`Transport::try_write`] (non-blocking, for a caller's thread). It is
//! plain TCP, or TLS through rustls's sans-IO `ClientConnection`: `read` reads TLS
//! records from the socket into the session and returns the plaintext it yields; `write`
//! and `try_write` hand plaintext to the session and write the records it produces,
//! keeping any the socket did not take for the next write or read (a read also waits for
//! the socket to take them, so records never sit in the session while the driver
//! sleeps); the session sits behind a short lock of its own (never held across an
//! await), so the driver task and a caller's thread share one transport as they share
//! the TCP socket.
//!
//! Who writes through it:
//! - **The driver** writes the chunks the sans-IO core hands out ([`Transport::write`]),
//!   and reads into its buffer ([`Transport::read`]).
//! - **A caller's direct write** (a request written from the caller's thread while the
//!   driver is idle, as nats.c does) holds the connection lock and calls
//!   [`Transport::try_write`] once: what the transport takes is reported to the core as
//!   written, the rest stays in flight for the driver.
//! - **The retiring link** of a planned switch keeps its own `Transport` (the old one)
//!   for the overlap: the driver reads its deliveries and writes its UNSUBs, probes and
//!   last PING through it, until its last PONG, then drops it.
//!
//! # Dialing
//! Every address a host resolves to, IPv6 and IPv4 alternated 250 ms apart (happy
//! eyeballs, RFC 8305), within one deadline. Names are re-resolved at each attempt.

use std::io::{self, BufRead as _, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

use parking_lot::Mutex;
use rustls::ClientConnection;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::{ConnectFailure, DialError};
use crate::server_pool::ServerAddr;

/// The byte stream under one link (see the module docs): plain TCP, or TLS over it.
#[derive(Debug)]
pub(crate) struct Transport {
    tcp: TcpStream,
    /// The TLS session, for a TLS link. Its lock is held only for synchronous work on
    /// the session (never across an await), so the driver task and a caller's direct
    /// write share it as they share the socket.
    tls: Option<Box<Mutex<TlsSession>>>,
}

/// A TLS link's session and the bytes read from the socket for it.
#[derive(Debug)]
struct TlsSession {
    conn: ClientConnection,
    /// Records read from the socket (up to [`TLS_READ_CHUNK`] per syscall); rustls takes
    /// them from `inbox[taken..]` a few KiB at a time.
    inbox: Vec<u8>,
    taken: usize,
}

/// `Read`/`Write` over a tokio socket without blocking: what rustls's `read_tls` and
/// `write_tls` need. `WouldBlock` clears the socket's readiness, so the next
/// `readable`/`writable` waits for the kernel.
struct NonBlocking<'a>(&'a TcpStream);

impl io::Read for NonBlocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl io::Write for NonBlocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A rustls error as the I/O error a TLS transport returns
/// ([`TlsError::from_io`](crate::tls::TlsError::from_io) gets it back).
fn tls_io_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// How much one TLS read takes from the socket at most: rustls alone reads 4 KiB per
/// syscall.
const TLS_READ_CHUNK: usize = 64 * 1024;

/// How much plaintext one TLS write takes at most: rustls keeps the records it made from
/// it until the socket takes them.
const TLS_WRITE_MAX: usize = 256 * 1024;

impl Transport {
    /// A transport over a connected TCP socket.
    pub(crate) fn tcp(tcp: TcpStream) -> Self {
        Self { tcp, tls: None }
    }

    /// Run the TLS handshake with `session` over this (plaintext) transport, which then
    /// carries TLS. Fails with the rustls error as an I/O error, or an I/O error; the
    /// caller bounds it with the connect deadline.
    pub(crate) async fn start_tls(&mut self, session: ClientConnection) -> io::Result<()> {
        let mut session = session;
        session.set_buffer_limit(Some(TLS_WRITE_MAX));
        let mut eof = false;
        while session.is_handshaking() {
            while session.wants_write() {
                match session.write_tls(&mut NonBlocking(&self.tcp)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.tcp.writable().await?;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !session.is_handshaking() {
                break;
            }
            if eof {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            match session.read_tls(&mut NonBlocking(&self.tcp)) {
                Ok(0) => eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tcp.readable().await?;
                    continue;
                }
                Err(e) => return Err(e),
            }
            if let Err(e) = session.process_new_packets() {
                // Send the alert rustls queued for the server, then fail.
                let _ = session.write_tls(&mut NonBlocking(&self.tcp));
                return Err(tls_io_error(e));
            }
        }
        self.tls = Some(Box::new(Mutex::new(TlsSession {
            conn: session,
            inbox: Vec::with_capacity(TLS_READ_CHUNK),
            taken: 0,
        })));
        Ok(())
    }

    /// Read what the link has into `buf` (cancel-safe: nothing is lost when the future is
    /// dropped). `Ok(0)` is the end of the stream. Over TLS it also sends the records the
    /// session still holds (from a write the socket did not take whole, an alert).
    pub(crate) async fn read(&self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        let Some(tls) = &self.tls else {
            loop {
                self.tcp.readable().await?;
                match self.tcp.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    r => return r,
                }
            }
        };
        loop {
            let pending = {
                let mut s = tls.lock();
                if let Some(n) = self.tls_read(&mut s, buf)? {
                    return Ok(n);
                }
                flush_tls(&mut s.conn, &self.tcp)?
            };
            if pending {
                tokio::select! {
                    r = self.tcp.readable() => r?,
                    w = self.tcp.writable() => w?,
                }
            } else {
                self.tcp.readable().await?;
            }
        }
    }

    /// Move what the socket has through the session into `buf`: `Some(n)` when plaintext
    /// (or the end of the stream, `Some(0)`) came out, `None` when the socket is empty.
    /// One syscall reads up to [`TLS_READ_CHUNK`]; a record it leaves incomplete makes
    /// it read again, until the socket is empty.
    fn tls_read(&self, s: &mut TlsSession, buf: &mut bytes::BytesMut) -> io::Result<Option<usize>> {
        let mut got = 0;
        loop {
            // Plaintext the session holds first: rustls stops taking records while full.
            let mut reader = s.conn.reader();
            loop {
                match reader.fill_buf() {
                    Ok([]) => return Ok(Some(got)), // close_notify: the end of the stream
                    Ok(data) => {
                        let n = data.len();
                        buf.extend_from_slice(data);
                        reader.consume(n);
                        got += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // The TCP stream ended without close_notify (a server killed): the
                    // end of the stream, as over TCP.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Some(got)),
                    Err(e) => return Err(e),
                }
            }
            if s.taken < s.inbox.len() {
                let n = s.conn.read_tls(&mut &s.inbox[s.taken..])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the TLS session took no more records",
                    ));
                }
                s.taken += n;
                s.conn.process_new_packets().map_err(tls_io_error)?;
                continue;
            }
            if got > 0 {
                return Ok(Some(got));
            }
            s.inbox.clear();
            s.taken = 0;
            match self.tcp.try_read_buf(&mut s.inbox) {
                // The TCP stream's end: rustls then reports it through the reader.
                Ok(0) => {
                    s.conn.read_tls(&mut io::empty())?;
                    s.conn.process_new_packets().map_err(tls_io_error)?;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Write what the link takes of `data` (cancel-safe). Over TLS, the plaintext taken
    /// may still be in records the socket did not take: [`Self::read`] and the next write
    /// send them.
    pub(crate) async fn write(&self, data: &[u8]) -> io::Result<usize> {
        loop {
            if self.tls.is_some() {
                match self.try_write(data) {
                    Ok(0) if !data.is_empty() => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    r => return r,
                }
            } else {
                match self.tcp.try_write(data) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    r => return r,
                }
            }
            self.tcp.writable().await?;
        }
    }

    /// Write all of `data` (the handshake's frames; cancel-safe only as a whole), and over
    /// TLS the records it makes.
    pub(crate) async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.write(data).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => data = &data[n..],
            }
        }
        while self.has_pending() {
            self.tcp.writable().await?;
            if let Some(tls) = &self.tls {
                flush_tls(&mut tls.lock().conn, &self.tcp)?;
            }
        }
        Ok(())
    }

    /// Write what the link takes of `data` now, without waiting (a caller's direct write).
    /// Over TLS: nothing is taken while the session still holds records the socket did
    /// not take (`Ok(0)`).
    pub(crate) fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        let Some(tls) = &self.tls else {
            return self.tcp.try_write(data);
        };
        let s = &mut tls.lock().conn;
        if flush_tls(s, &self.tcp)? {
            return Ok(0);
        }
        let n = s.writer().write(&data[..data.len().min(TLS_WRITE_MAX)])?;
        flush_tls(s, &self.tcp)?;
        Ok(n)
    }

    /// True while a TLS session holds records the socket has not taken yet.
    pub(crate) fn has_pending(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.lock().conn.wants_write())
    }

    /// End the write side cleanly, so the server sees the end of the stream (over TLS,
    /// after a close_notify).
    pub(crate) async fn shutdown(mut self) {
        use tokio::io::AsyncWriteExt;
        if let Some(tls) = self.tls.take() {
            let mut s = tls.into_inner().conn;
            s.send_close_notify();
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while s.wants_write() {
                    match s.write_tls(&mut NonBlocking(&self.tcp)) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if self.tcp.writable().await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        let _ = self.tcp.shutdown().await;
    }
}

/// Write the records `s` holds while the socket takes them. Returns true when some are
/// left (the socket is full).
fn flush_tls(s: &mut ClientConnection, tcp: &TcpStream) -> io::Result<bool> {
    while s.wants_write() {
        match s.write_tls(&mut NonBlocking(tcp)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Delay between starting connection attempts to successive addresses.
pub(crate) const HAPPY_EYEBALLS_DELAY: Duration = Duration::from_millis(250);

/// Interleave IPv6 and IPv4 addresses, IPv6 first.
fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let (v6, v4): (Vec<_>, Vec<_>) = addrs.into_iter().partition(SocketAddr::is_ipv6);
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => break,
            (x, y) => {
                out.extend(x);
                out.extend(y);
            }
        }
    }
    out
}

async fn connect_one(a: SocketAddr) -> (SocketAddr, std::io::Result<TcpStream>) {
    (a, TcpStream::connect(a).await)
}

/// Connect to `server` by `deadline`.
pub(crate) async fn dial(
    server: &ServerAddr,
    deadline: Instant,
) -> Result<(TcpStream, SocketAddr), DialError> {
    let host = server.host();
    let lookup = tokio::net::lookup_host((host, server.port()));
    let addrs = match tokio::time::timeout_at(deadline, lookup).await {
        Err(_) => return Err(DialError::DnsTimeout { host: host.into() }),
        Ok(Err(e)) => {
            return Err(DialError::Dns {
                host: host.into(),
                error: e.to_string(),
            })
        }
        Ok(Ok(resolved)) => interleave(resolved.collect()),
    };
    if addrs.is_empty() {
        return Err(DialError::NoAddress { host: host.into() });
    }
    let mut attempts = FuturesUnordered::new();
    let mut next = 0usize;
    let mut failures: Vec<ConnectFailure> = Vec::new();
    loop {
        if next < addrs.len() && (attempts.is_empty() || next == 0) {
            let a = addrs[next];
            next += 1;
            attempts.push(connect_one(a));
        }
        let stagger = tokio::time::sleep(HAPPY_EYEBALLS_DELAY);
        tokio::select! {
            r = attempts.next(), if !attempts.is_empty() => match r {
                Some((a, Ok(s))) => {
                    let _ = s.set_nodelay(true);
                    return Ok((s, a));
                }
                Some((a, Err(e))) => {
                    failures.push(ConnectFailure::new(a, &e));
                    if attempts.is_empty() && next >= addrs.len() {
                        break;
                    }
                }
                None => {}
            },
            () = stagger, if next < addrs.len() => {
                let a = addrs[next];
                next += 1;
                attempts.push(connect_one(a));
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err(DialError::Timeout { tried: addrs[..next].to_vec() });
            }
        }
    }
    Err(DialError::Io(failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaves_v6_first() {
        let v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        let v4b: SocketAddr = "127.0.0.2:1".parse().unwrap();
        assert_eq!(interleave(vec![v4, v4b, v6]), vec![v6, v4, v4b]);
    }
}
