//! The transport under a link, and dialing it.
//!
//! # The seam
//! [`Transport`] is the byte stream one link runs over. Everything above it (the
//! driver's loop, the handshake, the retiring link of a planned switch, a caller's direct
//! write) sees plaintext NATS protocol bytes and three operations: [`Transport::read`],
//! [`Transport::write`] (both readiness-based and cancel-safe, for the driver's
//! `select!`) and [`Transport::try_write`] (non-blocking, for a caller's thread). Today it
//! is plain TCP. TLS fills it with rustls's sans-IO `ClientConnection`: `read` reads TLS
//! records from the socket into the session and returns the plaintext it yields; `write`
//! and `try_write` hand plaintext to the session and write the records it produces,
//! keeping any the socket did not take for the next write; the session sits behind a
//! short lock of its own (never held across an await), so the driver task and a caller's
//! thread can share one transport as they share the TCP socket now.
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

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::{ConnectFailure, DialError};
use crate::server_pool::ServerAddr;

/// The byte stream under one link (see the module docs): plain TCP today.
#[derive(Debug)]
pub(crate) struct Transport {
    tcp: TcpStream,
}

impl Transport {
    /// A transport over a connected TCP socket.
    pub(crate) fn tcp(tcp: TcpStream) -> Self {
        Self { tcp }
    }

    /// Read what the link has into `buf` (cancel-safe: nothing is lost when the future is
    /// dropped). `Ok(0)` is the end of the stream.
    pub(crate) async fn read(&self, buf: &mut bytes::BytesMut) -> std::io::Result<usize> {
        loop {
            self.tcp.readable().await?;
            match self.tcp.try_read_buf(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return r,
            }
        }
    }

    /// Write what the link takes of `data` (cancel-safe).
    pub(crate) async fn write(&self, data: &[u8]) -> std::io::Result<usize> {
        loop {
            self.tcp.writable().await?;
            match self.tcp.try_write(data) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return r,
            }
        }
    }

    /// Write all of `data` (the handshake's frames; cancel-safe only as a whole).
    pub(crate) async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            match self.write(data).await? {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                n => data = &data[n..],
            }
        }
        Ok(())
    }

    /// Write what the link takes of `data` now, without waiting (a caller's direct write).
    pub(crate) fn try_write(&self, data: &[u8]) -> std::io::Result<usize> {
        self.tcp.try_write(data)
    }

    /// End the write side cleanly, so the server sees the end of the stream.
    pub(crate) async fn shutdown(mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.tcp.shutdown().await;
    }
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
