//! The physical limits of pub and reqrep: the same work over plain blocking sockets, with
//! nothing between the caller and the kernel but a pre-encoded buffer.
//!
//! - **Ceiling (pub)**: one connection writes `PUB bench.pub <size>` frames, encoded once
//!   into a 64 KiB buffer of whole frames that is written again and again (plus a tail
//!   buffer so exactly `--msgs` go), then `PING`. The server processes a connection's
//!   operations in order, so its `PONG` means every PUB before it was processed; the
//!   clock stops there.
//! - **JetStream ceiling (js-pub)**: one connection subscribes `<inbox>.*`, then publishes
//!   `PUB bench.js <inbox>.<i> <size>` frames, all encoded before the clock starts into
//!   one buffer, never more than the window's worth unacked: it writes as many frames as
//!   the window allows (in writes of at most 64 KiB), then reads the acks (`MSG`s on the
//!   inbox, counted; the first few and the last parsed as PubAck JSON, every other one
//!   searched for an `"error"`), and refills. A `-ERR`, or an `HMSG` status such as 503
//!   no responders (no stream captures the subject), fails the run. The clock runs from
//!   the first write of the measured frames to the last ack. The stream around it is
//!   made and checked by `jetstream.rs`, as for the libraries.
//! - **JetStream ceiling (js-consume)**: one connection subscribes an inbox and pulls
//!   from a durable consumer as the libraries are asked to (`batch` messages, then the
//!   rest of the batch whenever no more than half of it is outstanding; the same expiry
//!   and idle heartbeat), reads what has arrived, and answers every message with a plain
//!   `+ACK` to its reply subject: the acks of one read (and a pull it makes due) go out
//!   in one write. A status other than a heartbeat (100) ends the pull it answers; the
//!   next is asked for at once. The clock runs from the first pull to the last message.
//! - **Floor (reqrep)**: a responder connection (on its own thread) subscribed to the
//!   echo subject answers each `MSG` by publishing its payload to the reply subject, and
//!   a requester connection sends one request at a time to it and waits for the answer
//!   on its inbox subscription.
//!
//! They connect like a client with every option off (`CONNECT {"verbose":false,...}` then
//! `PING`, ready at the `PONG`; the JetStream ceiling with headers and no-responders on,
//! as both libraries connect), answer the server's `PING`s and skip its `INFO`s. The
//! parser is the least that reads what the server sends such connections (NATS protocol
//! doc, "Protocol messages": INFO, MSG, HMSG, PING, PONG, +OK, -ERR); a message may
//! arrive split over any number of reads.

use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::client::PullShape;
use crate::throughput::{
    check_echo, latency, Latency, Params, ServerCpu, Throughput, Wakes, REQ_WARMUP,
};
use crate::{Res, PUB_SUBJECT, STALL_TIMEOUT};

/// Bytes per write of the ceiling: whole frames up to this size.
const CHUNK: usize = 64 * 1024;
/// The handshake: every option off, then a PING whose PONG says the server took it.
const CONNECT: &[u8] =
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"echo\":true}\r\nPING\r\n";
/// The handshake of the JetStream ceiling: headers and no-responders on (as both libraries
/// connect), so that a publish no stream captures comes back as a 503 status at once.
const CONNECT_HEADERS: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\
\"echo\":true,\"headers\":true,\"no_responders\":true}\r\nPING\r\n";
/// Acks of the JetStream ceiling parsed as JSON in full at the start (the last one is too).
const ACKS_PARSED: u64 = 3;
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
        /// The header block of an `HMSG` (status line first); None for a `MSG`.
        headers: Option<Range<usize>>,
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
        Self::ready(dial(addr)?, None, CONNECT)
    }

    /// Sends `hello` (CONNECT and PING) on `stream` (through `tls` when given) and waits
    /// for the PONG.
    fn ready(
        stream: TcpStream,
        tls: Option<Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>>,
        hello: &[u8],
    ) -> Res<Self> {
        let mut conn = Self {
            stream,
            tls,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        };
        conn.send(hello)?;
        conn.until_pong()?;
        Ok(conn)
    }

    /// Connects over TLS as nats-server expects (its INFO in plaintext, then the TLS
    /// handshake, then `hello`), trusting the CA in the PEM file `ca`.
    fn connect_tls(addr: &str, ca: &Path, hello: &[u8]) -> Res<Self> {
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
            hello,
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

    /// The status line (`NATS/1.0 503`) of an `HMSG`'s header block `h`.
    fn status_line(&self, h: Range<usize>) -> &[u8] {
        self.slice(h)
            .split(|&b| b == b'\r')
            .next()
            .unwrap_or_default()
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

    /// The next MSG, HMSG or PONG; PINGs are answered, INFO and +OK skipped, -ERR fails.
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
                b"MSG" => return self.parse_msg(line_start, line_end, false),
                b"HMSG" => return self.parse_msg(line_start, line_end, true),
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

    /// `MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n`, or with `headers`
    /// `HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>\r\n<headers><payload>\r\n`;
    /// None until the payload and its CRLF are all buffered.
    fn parse_msg(&mut self, line_start: usize, line_end: usize, headers: bool) -> Res<Option<Op>> {
        let line = trim_crlf(&self.buf[line_start..line_end - 1]);
        let mut fields = Vec::with_capacity(5);
        let mut pos = line_start;
        for word in line.split(|&b| b == b' ') {
            if !word.is_empty() {
                fields.push(pos..pos + word.len());
            }
            pos += word.len() + 1;
        }
        let bad = || {
            format!(
                "malformed message line: {:?}",
                String::from_utf8_lossy(line)
            )
        };
        let (subject, reply, hdr_len, len) = match (headers, fields.as_slice()) {
            (false, [_, s, _sid, len]) => (s.clone(), None, None, len.clone()),
            (false, [_, s, _sid, r, len]) => (s.clone(), Some(r.clone()), None, len.clone()),
            (true, [_, s, _sid, h, len]) => (s.clone(), None, Some(h.clone()), len.clone()),
            (true, [_, s, _sid, r, h, len]) => {
                (s.clone(), Some(r.clone()), Some(h.clone()), len.clone())
            }
            _ => return Err(bad().into()),
        };
        let number = |r: Range<usize>| -> Option<usize> {
            std::str::from_utf8(&self.buf[r]).ok()?.parse().ok()
        };
        let len = number(len).ok_or_else(bad)?;
        let hdr_len = match hdr_len {
            Some(h) => Some(number(h).filter(|&h| h <= len).ok_or_else(bad)?),
            None => None,
        };
        let payload_end = line_end + len;
        if self.end < payload_end + 2 {
            return Ok(None);
        }
        if &self.buf[payload_end..payload_end + 2] != b"\r\n" {
            return Err(format!("the {len}-byte payload of a MSG is not followed by CRLF").into());
        }
        self.start = payload_end + 2;
        let body = line_end + hdr_len.unwrap_or(0);
        Ok(Some(Op::Msg {
            subject,
            reply,
            headers: hdr_len.map(|_| line_end..body),
            payload: body..payload_end,
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
        Some(ca) => Conn::connect_tls(&p.raw_addr, ca, CONNECT)?,
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

// ----- JetStream ceiling: js-pub -----

/// Publish frames encoded back to back: frame `i` is `bytes[ends[i - 1]..ends[i]]`.
struct Frames {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Frames {
    /// `PUB <subject> <inbox>.<i> <size>` frames of `payload` for `i` in `0..n`.
    fn encode(subject: &str, inbox: &str, payload: &[u8], n: usize) -> Res<Self> {
        let mut bytes = Vec::new();
        let mut ends = Vec::with_capacity(n);
        for i in 0..n {
            write!(bytes, "PUB {subject} {inbox}.{i} {}\r\n", payload.len())?;
            bytes.extend_from_slice(payload);
            bytes.extend_from_slice(b"\r\n");
            ends.push(bytes.len());
        }
        Ok(Self { bytes, ends })
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.ends[i - 1]
        }
    }

    /// The frames `from..to'` with `to'` as far towards `to` as [`CHUNK`] bytes allow
    /// (at least one frame), and `to'`.
    fn chunk(&self, from: usize, to: usize) -> (&[u8], usize) {
        let start = self.start(from);
        let fit = self.ends[from..to].partition_point(|&end| end - start <= CHUNK);
        let to = from + fit.max(1);
        (&self.bytes[start..self.ends[to - 1]], to)
    }
}

/// The `seq` of a PubAck body, or why it is not one.
fn ack_seq(body: &[u8]) -> Res<u64> {
    let not = || {
        format!(
            "the publish ack is not a PubAck: {:?}",
            String::from_utf8_lossy(body)
        )
    };
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| not())?;
    if v.get("error").is_some() {
        return Err(format!(
            "JetStream refused a publish: {}",
            String::from_utf8_lossy(body)
        )
        .into());
    }
    v.get("seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| not().into())
}

/// Counts one ack of a js-pub run: the `n`th (from 0) of `last` + 1. The first
/// [`ACKS_PARSED`] and the last are parsed in full (their `seq`), every other one only
/// searched for an `"error"`; an `HMSG` (a status such as 503 no responders) fails.
fn js_ack(conn: &Conn, op: Op, n: u64, last: u64) -> Res<Option<u64>> {
    let Op::Msg {
        headers, payload, ..
    } = op
    else {
        // A PONG nobody asked for: not an ack.
        return Ok(None);
    };
    if let Some(h) = headers {
        let status = String::from_utf8_lossy(conn.status_line(h));
        let hint = if status.contains(" 503") {
            " (no responders: no stream captures the subject)"
        } else {
            ""
        };
        return Err(format!("a publish was answered with the status {status:?}{hint}").into());
    }
    let body = conn.slice(payload);
    if n < ACKS_PARSED || n == last {
        return ack_seq(body).map(Some);
    }
    if body.windows(7).any(|w| w == b"\"error\"") {
        return Err(format!(
            "JetStream refused a publish: {}",
            String::from_utf8_lossy(body)
        )
        .into());
    }
    Ok(Some(0))
}

/// A connection of a JetStream ceiling (over TLS when the run has it), subscribed to
/// `subject` as sid 1 and ready (the PONG after the SUB came back).
fn js_conn(p: &Params, subject: &str) -> Res<Conn> {
    let mut conn = match &p.tls_ca {
        Some(ca) => Conn::connect_tls(&p.raw_addr, ca, CONNECT_HEADERS)?,
        None => Conn::ready(dial(&p.raw_addr)?, None, CONNECT_HEADERS)?,
    };
    conn.send(format!("SUB {subject} 1\r\nPING\r\n").as_bytes())?;
    conn.until_pong()?;
    Ok(conn)
}

/// The JetStream ceiling: `p.msgs` pre-encoded publishes to `subject` with reply
/// subjects in one inbox, never more than `window` unacked. Returns the run and the
/// `seq` of the last ack. One unmeasured publish and its ack come first, as for the
/// libraries; the stream capturing `subject` is the caller's.
pub(crate) fn run_js_pub(p: &Params, subject: &str, window: usize) -> Res<(Throughput, u64)> {
    let window = window.max(1);
    // As long as a library's inbox prefix (`_INBOX.` and a 22-character id).
    let inbox = format!("_INBOX.rawjs{:017}", std::process::id());
    let mut conn = js_conn(p, &format!("{inbox}.*"))?;
    // Frame 0 is the unmeasured one.
    let msgs = usize::try_from(p.msgs)?;
    let frames = Frames::encode(subject, &inbox, &p.payload, msgs + 1)?;
    let (first, _) = frames.chunk(0, 1);
    conn.send(first)?;
    loop {
        let op = conn.next_op()?;
        if js_ack(&conn, op, 0, 0)?.is_some() {
            break;
        }
    }

    let last = p.msgs.saturating_sub(1);
    let (mut sent, mut acked, mut last_seq) = (1, 0u64, 0);
    let cpu = ServerCpu::start(p.server_pid);
    let start = Instant::now();
    while acked < p.msgs {
        // Refill: every frame the window allows, in writes of at most CHUNK bytes.
        let allowed = (1 + usize::try_from(acked)? + window).min(msgs + 1);
        while sent < allowed {
            let (bytes, to) = frames.chunk(sent, allowed);
            conn.send(bytes)?;
            sent = to;
        }
        // Then every ack that has arrived: at least one (blocking), and all the rest
        // already read.
        let mut op = Some(conn.next_op()?);
        while let Some(o) = op {
            if let Some(seq) = js_ack(&conn, o, acked, last)? {
                if acked < ACKS_PARSED || acked == last {
                    last_seq = seq;
                }
                acked += 1;
            }
            op = conn.parse()?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let t = Throughput::published(p.msgs, secs, cpu.share(secs));
    Ok((t, last_seq))
}

// ----- JetStream ceiling: js-consume -----

/// Who pulls in the js-consume ceiling: the stream, the consumer and the pull's shape.
pub(crate) struct Pull<'a> {
    pub(crate) stream: &'a str,
    pub(crate) consumer: &'a str,
    pub(crate) shape: PullShape,
}

/// The js-consume ceiling: drains `p.msgs` messages from the durable pull consumer
/// `pull.consumer`, pulling as the libraries are asked to (a pull of `batch` first, then
/// one for the rest of the batch whenever no more than half of it is outstanding) and
/// acking every message with a plain `+ACK`: the acks of one read go out in one write,
/// together with the pull it makes due. The clock runs from the first pull to the last
/// message.
pub(crate) fn run_js_consume(p: &Params, pull: &Pull<'_>) -> Res<Throughput> {
    let inbox = format!("_INBOX.rawjsc{:017}", std::process::id());
    let mut conn = js_conn(p, &inbox)?;
    let next = format!(
        "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
        pull.stream, pull.consumer
    );
    let batch = pull.shape.batch.max(1);
    let (expires, heartbeat) = (
        pull.shape.expires.as_nanos(),
        pull.shape.heartbeat.as_nanos(),
    );
    let mut out = Vec::with_capacity(CHUNK);
    let (mut pending, mut received) = (0usize, 0u64);
    let cpu = ServerCpu::start(p.server_pid);
    let start = Instant::now();
    while received < p.msgs {
        if pending <= batch / 2 {
            let n = batch - pending;
            let body =
                format!("{{\"batch\":{n},\"expires\":{expires},\"idle_heartbeat\":{heartbeat}}}");
            write!(out, "PUB {next} {inbox} {}\r\n{body}\r\n", body.len())?;
            pending += n;
        }
        if !out.is_empty() {
            conn.send(&out)?;
            out.clear();
        }
        // Every message already read: at least one (blocking).
        let mut op = Some(conn.next_op()?);
        while let Some(o) = op {
            let Op::Msg { reply, headers, .. } = o else {
                op = conn.parse()?;
                continue;
            };
            if let Some(h) = headers {
                // A status: 100 is a heartbeat; any other ends the pull it answers.
                let status = conn.status_line(h);
                if !status.starts_with(b"NATS/1.0 100") {
                    eprintln!("js ceiling pull event: {}", String::from_utf8_lossy(status));
                    pending = 0;
                }
            } else if let Some(reply) = reply {
                received += 1;
                pending = pending.saturating_sub(1);
                out.extend_from_slice(b"PUB ");
                out.extend_from_slice(conn.slice(reply));
                out.extend_from_slice(b" 4\r\n+ACK\r\n");
            } else {
                return Err("a pulled message without a reply subject (nothing to ack)".into());
            }
            op = conn.parse()?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let server_cpu = cpu.share(secs);
    // The last acks, after the clock, as the libraries' go out.
    if !out.is_empty() {
        conn.send(&out)?;
    }
    Ok(Throughput::published(p.msgs, secs, server_cpu))
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
            in_task: false,
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
