//! The physical limits of pub and reqrep: the same work over plain blocking sockets, with
//! nothing between the caller and the kernel but a pre-encoded buffer.
//!
//! - **Ceiling (pub)**: one connection writes `PUB bench.pub <size>` frames, encoded once
//!   into a 64 KiB buffer of whole frames that is written again and again (plus a tail
//!   buffer so exactly `--msgs` go), then `PING`. The server processes a connection's
//!   operations in order, so its `PONG` means every PUB before it was processed; the
//!   clock stops there.
//! - **Floor (reqrep)**: a responder connection (on its own thread) subscribed to the
//!   echo subject answers each `MSG` by publishing its payload to the reply subject, and
//!   a requester connection sends one request at a time to it and waits for the answer
//!   on its inbox subscription.
//!
//! Both connect like a client with every option off (`CONNECT {"verbose":false,...}` then
//! `PING`, ready at the `PONG`), answer the server's `PING`s and skip its `INFO`s. The
//! parser is the least that reads what the server sends such connections (NATS protocol
//! doc, "Protocol messages": INFO, MSG, PING, PONG, +OK, -ERR); a `MSG` may arrive split
//! over any number of reads.

use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::throughput::{
    check_echo, latency, Latency, Params, ServerCpu, Throughput, Wakes, REQ_WARMUP,
};
use crate::{Res, PUB_SUBJECT, STALL_TIMEOUT};

/// Bytes per write of the ceiling: whole frames up to this size.
const CHUNK: usize = 64 * 1024;
/// The handshake: every option off, then a PING whose PONG says the server took it.
const CONNECT: &[u8] =
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"echo\":true}\r\nPING\r\n";
/// A control line longer than this is not something the server sends these connections.
const MAX_LINE: usize = 64 * 1024;

/// `host:port` of a `nats://host:port` URL (the first one of a comma-separated list).
/// The raw connections speak plain TCP without credentials, so a URL asking for TLS or
/// carrying user info is refused here, before any round runs.
pub(crate) fn addr(url: &str) -> Res<String> {
    let first = url.split(',').next().unwrap_or(url).trim();
    let rest = match first.split_once("://") {
        Some(("nats" | "tcp", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "--server {url}: the ceiling and floor connect over plain TCP and cannot use \
                 `{scheme}://`; give a nats:// server"
            )
            .into());
        }
        None => first,
    };
    if rest.contains('@') {
        return Err(format!(
            "--server {url}: the ceiling and floor connect without credentials; give a \
             server without authentication"
        )
        .into());
    }
    let host_port = rest.trim_end_matches('/');
    if host_port.is_empty() {
        return Err(format!("--server {url}: no host in the URL").into());
    }
    // A port is there when the part after the last ':' is a number (and not inside an
    // IPv6 literal's brackets).
    let has_port = !host_port.ends_with(']')
        && host_port
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    Ok(if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:4222")
    })
}

/// What the raw connections act on; the ranges index [`Conn`]'s read buffer and hold
/// until the next read.
#[derive(Debug)]
enum Op {
    Msg {
        subject: Range<usize>,
        reply: Option<Range<usize>>,
        payload: Range<usize>,
    },
    Pong,
}

/// One plain connection to the server: a blocking socket and its read buffer.
struct Conn {
    stream: TcpStream,
    /// The ceiling over TLS: the same socket through a rustls session.
    tls: Option<Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>>,
    buf: Vec<u8>,
    /// Start of the bytes read but not yet parsed.
    start: usize,
    /// End of the bytes read.
    end: usize,
}

/// A TCP connection to `addr` with Nagle off and the stall timeouts set.
fn dial(addr: &str) -> Res<TcpStream> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(STALL_TIMEOUT))?;
    stream.set_write_timeout(Some(STALL_TIMEOUT))?;
    Ok(stream)
}

impl Conn {
    /// Connects and completes the handshake (ready at the PONG of the first PING).
    fn connect(addr: &str) -> Res<Self> {
        Self::ready(dial(addr)?, None)
    }

    /// Sends CONNECT on `stream` (through `tls` when given) and waits for the PONG.
    fn ready(
        stream: TcpStream,
        tls: Option<Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>>,
    ) -> Res<Self> {
        let mut conn = Self {
            stream,
            tls,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        };
        conn.send(CONNECT)?;
        conn.until_pong()?;
        Ok(conn)
    }

    /// Connects over TLS as nats-server expects (its INFO in plaintext, then the TLS
    /// handshake, then CONNECT), trusting the CA in the PEM file `ca`.
    fn connect_tls(addr: &str, ca: &Path) -> Res<Self> {
        use rustls::pki_types::pem::PemObject;
        let mut stream = dial(addr)?;
        // The plaintext INFO line, byte by byte: nothing after it is plaintext.
        let mut byte = [0u8; 1];
        loop {
            stream
                .read_exact(&mut byte)
                .map_err(|e| io_error("reading the server's INFO", &e))?;
            if byte[0] == b'\n' {
                break;
            }
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
        let session = rustls::ClientConnection::new(
            Arc::new(config),
            rustls::pki_types::ServerName::try_from(host)?,
        )?;
        let plain = stream.try_clone()?;
        Self::ready(
            plain,
            Some(Box::new(rustls::StreamOwned::new(session, stream))),
        )
    }

    fn send(&mut self, bytes: &[u8]) -> Res<()> {
        let written = match &mut self.tls {
            Some(tls) => tls.write_all(bytes).and_then(|()| tls.flush()),
            None => self.stream.write_all(bytes),
        };
        written.map_err(|e| io_error("writing to the server", &e))
    }

    fn slice(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    /// Reads until the server's PONG (answering its PINGs meanwhile).
    fn until_pong(&mut self) -> Res<()> {
        match self.next_op()? {
            Op::Pong => Ok(()),
            Op::Msg { subject, .. } => Err(format!(
                "unexpected MSG on {} while waiting for PONG",
                String::from_utf8_lossy(self.slice(subject))
            )
            .into()),
        }
    }

    /// The next MSG or PONG; PINGs are answered, INFO and +OK skipped, -ERR fails.
    fn next_op(&mut self) -> Res<Op> {
        loop {
            if let Some(op) = self.parse()? {
                return Ok(op);
            }
            self.fill()?;
        }
    }

    /// Reads more bytes after the unparsed ones, making room first.
    fn fill(&mut self) -> Res<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let len = self.buf.len();
            self.buf.resize(len * 2, 0);
        }
        let read = match &mut self.tls {
            Some(tls) => tls.read(&mut self.buf[self.end..]),
            None => self.stream.read(&mut self.buf[self.end..]),
        };
        match read {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(n) => {
                self.end += n;
                Ok(())
            }
            Err(e) => Err(io_error("reading from the server", &e)),
        }
    }

    /// One operation from the buffered bytes, or None if they hold no complete one yet.
    fn parse(&mut self) -> Res<Option<Op>> {
        loop {
            let avail = &self.buf[self.start..self.end];
            let Some(nl) = avail.iter().position(|&b| b == b'\n') else {
                if avail.len() > MAX_LINE {
                    return Err(format!(
                        "the server sent a control line over {MAX_LINE} bytes without a newline"
                    )
                    .into());
                }
                return Ok(None);
            };
            let line_start = self.start;
            let line_end = line_start + nl + 1;
            let line = trim_crlf(&avail[..nl]);
            let verb = line.split(|&b| b == b' ').next().unwrap_or_default();
            match verb {
                b"MSG" => return self.parse_msg(line_start, line_end),
                b"PING" => {
                    self.start = line_end;
                    self.send(b"PONG\r\n")?;
                }
                b"PONG" => {
                    self.start = line_end;
                    return Ok(Some(Op::Pong));
                }
                b"INFO" | b"+OK" => self.start = line_end,
                b"-ERR" => {
                    return Err(format!("nats-server: {}", String::from_utf8_lossy(line)).into())
                }
                _ => {
                    return Err(format!(
                        "unexpected line from the server: {:?}",
                        String::from_utf8_lossy(line)
                    )
                    .into());
                }
            }
        }
    }

    /// `MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n`; None until the payload
    /// and its CRLF are all buffered.
    fn parse_msg(&mut self, line_start: usize, line_end: usize) -> Res<Option<Op>> {
        let line = trim_crlf(&self.buf[line_start..line_end - 1]);
        let mut fields = Vec::with_capacity(5);
        let mut pos = line_start;
        for word in line.split(|&b| b == b' ') {
            if !word.is_empty() {
                fields.push(pos..pos + word.len());
            }
            pos += word.len() + 1;
        }
        let bad = || format!("malformed MSG line: {:?}", String::from_utf8_lossy(line));
        let (subject, reply, len) = match fields.as_slice() {
            [_, s, _sid, len] => (s.clone(), None, len.clone()),
            [_, s, _sid, r, len] => (s.clone(), Some(r.clone()), len.clone()),
            _ => return Err(bad().into()),
        };
        let len: usize = std::str::from_utf8(&self.buf[len])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        let payload_end = line_end + len;
        if self.end < payload_end + 2 {
            return Ok(None);
        }
        if &self.buf[payload_end..payload_end + 2] != b"\r\n" {
            return Err(format!("the {len}-byte payload of a MSG is not followed by CRLF").into());
        }
        self.start = payload_end + 2;
        Ok(Some(Op::Msg {
            subject,
            reply,
            payload: line_end..payload_end,
        }))
    }
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn io_error(what: &str, e: &io::Error) -> crate::BoxError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
            "{what}: nothing for {} s (raw connection stalled)",
            STALL_TIMEOUT.as_secs()
        )
        .into(),
        _ => format!("{what}: {e}").into(),
    }
}

// ----- ceiling: pub -----

/// The pub ceiling: `p.msgs` pre-encoded PUBs in 64 KiB writes, then PING until PONG.
pub(crate) fn run_pub(p: &Params) -> Res<Throughput> {
    // Over TLS the same chunks go through a rustls session: the ceiling of TLS.
    let mut conn = match &p.tls_ca {
        Some(ca) => Conn::connect_tls(&p.raw_addr, ca)?,
        None => Conn::connect(&p.raw_addr)?,
    };
    let mut frame = format!("PUB {PUB_SUBJECT} {}\r\n", p.payload.len()).into_bytes();
    frame.extend_from_slice(&p.payload);
    frame.extend_from_slice(b"\r\n");
    let per_chunk = (CHUNK / frame.len()).max(1);
    let chunk = frame.repeat(per_chunk);
    let full = p.msgs / per_chunk as u64;
    let rest = usize::try_from(p.msgs % per_chunk as u64)?;
    let mut tail = frame.repeat(rest);
    tail.extend_from_slice(b"PING\r\n");

    let cpu = ServerCpu::start(p.server_pid);
    let start = Instant::now();
    for _ in 0..full {
        conn.send(&chunk)?;
    }
    conn.send(&tail)?;
    conn.until_pong()?;
    let secs = start.elapsed().as_secs_f64();
    Ok(Throughput::published(p.msgs, secs, cpu.share(secs)))
}

// ----- floor: reqrep -----

/// The reqrep floor: a raw requester against a raw responder on its own thread.
/// The name of the floor's responder thread (left out of the wake count).
pub(crate) const RESPONDER_THREAD: &str = "raw-responder";

pub(crate) fn run_reqrep(p: &Params) -> Res<Latency> {
    let mut responder = Conn::connect(&p.raw_addr)?;
    responder.send(format!("SUB {} 1\r\nPING\r\n", p.raw_echo_subject).as_bytes())?;
    responder.until_pong()?;
    let socket = responder.stream.try_clone()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name(RESPONDER_THREAD.to_owned())
        .spawn(move || respond(responder, &stopped))?;

    let result = requests(p);

    stop.store(true, Ordering::SeqCst);
    let _ = socket.shutdown(Shutdown::Both);
    let responded = thread
        .join()
        .map_err(|_| "the raw responder thread panicked")?;
    // A responder that failed is why the requester stalled, if it did: its error first.
    responded?;
    result
}

/// Answers every request until `stop` is set (then the socket is shut down under it).
fn respond(mut conn: Conn, stop: &AtomicBool) -> Res<()> {
    let mut out = Vec::new();
    loop {
        let op = match conn.next_op() {
            Ok(op) => op,
            Err(_) if stop.load(Ordering::SeqCst) => return Ok(()),
            Err(e) => return Err(format!("raw responder: {e}").into()),
        };
        if let Op::Msg {
            reply: Some(reply),
            payload,
            ..
        } = op
        {
            out.clear();
            out.extend_from_slice(b"PUB ");
            out.extend_from_slice(conn.slice(reply));
            write!(out, " {}\r\n", payload.len())?;
            out.extend_from_slice(conn.slice(payload));
            out.extend_from_slice(b"\r\n");
            conn.send(&out)?;
        }
    }
}

/// The requester: one subscription to its inbox, then one request at a time.
fn requests(p: &Params) -> Res<Latency> {
    let mut conn = Conn::connect(&p.raw_addr)?;
    // As long as a library's inbox prefix (`_INBOX.` and a 22-character id).
    let inbox = format!("_INBOX.raw{:019}", std::process::id());
    conn.send(format!("SUB {inbox}.* 1\r\nPING\r\n").as_bytes())?;
    conn.until_pong()?;

    let mut out = Vec::new();
    let mut reply = Vec::new();
    let mut one = |conn: &mut Conn, n: u64| -> Res<()> {
        reply.clear();
        write!(reply, "{inbox}.{n}")?;
        out.clear();
        out.extend_from_slice(b"PUB ");
        out.extend_from_slice(p.raw_echo_subject.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&reply);
        write!(out, " {}\r\n", p.payload.len())?;
        out.extend_from_slice(&p.payload);
        out.extend_from_slice(b"\r\n");
        conn.send(&out)?;
        loop {
            match conn.next_op()? {
                Op::Msg {
                    subject, payload, ..
                } if conn.slice(subject.clone()) == reply.as_slice() => {
                    return check_echo(conn.slice(payload), &p.payload);
                }
                // A late answer to an earlier request cannot happen one at a time; skip
                // anything else that is not ours.
                Op::Msg { .. } | Op::Pong => {}
            }
        }
    };
    for n in 0..REQ_WARMUP as u64 {
        one(&mut conn, n)?;
    }
    let mut us = Vec::with_capacity(usize::try_from(p.requests)?);
    let wakes = Wakes::start(RESPONDER_THREAD);
    for n in 0..p.requests {
        let t = Instant::now();
        one(&mut conn, REQ_WARMUP as u64 + n)?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(latency(us, wakes.per(p.requests)))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{addr, run_pub, run_reqrep};
    use crate::throughput::Params;

    fn params(server: &tether_testkit::NatsServer, payload: usize) -> Params {
        Params {
            url: server.url(),
            raw_addr: addr(&server.url()).unwrap(),
            msgs: 100_003,
            requests: 20,
            payload: Bytes::from(vec![b'x'; payload]),
            echo_subject: "cmp.echo.lib.test".to_owned(),
            raw_echo_subject: "cmp.echo.raw.test".to_owned(),
            server_pid: server.pid(),
            tls_ca: None,
            js_window: 256,
            js_pull: crate::jetstream::pull_shape(500),
        }
    }

    #[test]
    fn the_ceiling_sends_every_message_and_ends_at_the_pong() {
        let server = tether_testkit::NatsServer::start().unwrap();
        // 100,003 frames of 31 bytes: 47 full 64 KiB buffers and a tail.
        let t = run_pub(&params(&server, 16)).unwrap();
        assert_eq!(t.received, 100_003);
        assert!(
            t.complete && t.secs > 0.0 && t.msgs_per_sec.is_finite(),
            "{t:?}"
        );
        // The PONG came after the server processed every PUB, so its count is final.
        let in_msgs = server.varz().unwrap()["in_msgs"].as_u64().unwrap();
        assert_eq!(in_msgs, 100_003, "the server counted {in_msgs} messages in");
    }

    #[test]
    fn the_floor_echoes_payloads_that_span_many_reads() {
        let server = tether_testkit::NatsServer::start().unwrap();
        // 300 KB: every MSG arrives over several reads and outgrows the 64 KiB buffer.
        for size in [0, 16, 300_000] {
            let l = run_reqrep(&params(&server, size)).unwrap();
            assert!(
                l.p50 > 0.0 && l.p50 <= l.p90 && l.p90 <= l.p99,
                "{size} B: {l:?}"
            );
            // Counted (other tests' threads share this process, so not its value).
            let wakes = l.wakes_per_request.expect("counted from /proc on Linux");
            assert!(wakes.is_finite() && wakes >= 0.0, "{size} B: {wakes}");
        }
    }

    #[test]
    fn addr_takes_host_and_port_of_a_nats_url() {
        assert_eq!(addr("nats://127.0.0.1:4333").unwrap(), "127.0.0.1:4333");
        assert_eq!(addr("localhost").unwrap(), "localhost:4222");
        assert_eq!(addr("nats://a:1,nats://b:2").unwrap(), "a:1");
        assert_eq!(addr("[::1]").unwrap(), "[::1]:4222");
        assert_eq!(addr("[::1]:5000").unwrap(), "[::1]:5000");
        let e = addr("tls://x:4222").unwrap_err().to_string();
        assert!(e.contains("plain TCP"), "{e}");
        let e = addr("nats://u:p@x:4222").unwrap_err().to_string();
        assert!(e.contains("without credentials"), "{e}");
    }
}
