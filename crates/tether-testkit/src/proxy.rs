//! A fault-injecting TCP proxy with its own tokio runtime on its own thread.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::{free_port, wait_for, TestkitError};

/// How a [`Proxy::cut`] closes connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// Abortive close: `SO_LINGER` 0, so both peers get a TCP RST.
    Rst,
    /// Orderly close: both peers get a FIN (EOF).
    Fin,
}

/// What a connection does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctl {
    /// Read and forward both ways.
    Run,
    /// Read nothing; still write out what was already read.
    Pause,
    /// Read nothing and write nothing (black hole).
    Hold,
    /// Close both sockets this way.
    Cut(CutMode),
}

/// What newly accepted connections do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Pause,
    BlackHole,
}

#[derive(Debug)]
struct Entry {
    /// `(generation, control)`; the connection acknowledges a generation in `applied`.
    tx: watch::Sender<(u64, Ctl)>,
    applied: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Inner {
    mode: Mode,
    generation: u64,
    next_id: u64,
    conns: HashMap<u64, Entry>,
}

#[derive(Debug)]
struct Shared {
    upstream: Mutex<SocketAddr>,
    latency_nanos: AtomicU64,
    inner: Mutex<Inner>,
}

impl Shared {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn upstream(&self) -> SocketAddr {
        *self.upstream.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed))
    }
}

/// How long a control call waits for connections to acknowledge it.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read but not yet written, per direction, before reading stops.
const QUEUE_CAP: usize = 256 * 1024;
const READ_BUF: usize = 32 * 1024;

/// A TCP proxy on `127.0.0.1:<free_port()>` that forwards to an upstream address and can
/// inject faults.
///
/// # Behavior
/// - Each control call ([`pass`](Self::pass), [`cut`](Self::cut), [`pause`](Self::pause),
///   [`black_hole`](Self::black_hole)) returns once every current connection has applied
///   it (a cut: once the connections are closed), so a test may act right after it.
/// - Bytes are never dropped or reordered inside a connection; a connection is either
///   forwarded intact or closed.
/// - Dropping the proxy stops its thread and closes every socket.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy to `upstream`, listening on 127.0.0.1 at a [`free_port`].
    pub fn start(upstream: SocketAddr) -> Result<Self, TestkitError> {
        let mut last_err = None;
        let mut listener = None;
        for _ in 0..5 {
            match std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, free_port())) {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let listener = listener.ok_or_else(|| {
            TestkitError::io(
                "binding the proxy listener",
                last_err.unwrap_or_else(|| io::Error::other("no port")),
            )
        })?;
        Self::serve(listener, upstream)
    }

    /// Starts a proxy to `upstream` on a given port (from [`free_port`]), for clusters whose
    /// nodes advertise their proxies (`client_advertise`) before the proxies exist.
    pub fn start_on(port: u16, upstream: SocketAddr) -> Result<Self, TestkitError> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .map_err(|e| TestkitError::io("binding the proxy listener", e))?;
        Self::serve(listener, upstream)
    }

    fn serve(listener: std::net::TcpListener, upstream: SocketAddr) -> Result<Self, TestkitError> {
        listener
            .set_nonblocking(true)
            .map_err(|e| TestkitError::io("configuring the proxy listener", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| TestkitError::io("reading the proxy address", e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TestkitError::io("building the proxy runtime", e))?;
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            latency_nanos: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                mode: Mode::Pass,
                generation: 0,
                next_id: 0,
                conns: HashMap::new(),
            }),
        });
        let (shutdown, shutdown_rx) = oneshot::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("tether-proxy-{}", addr.port()))
            .spawn(move || {
                rt.block_on(accept_loop(listener, thread_shared, shutdown_rx));
                // Dropping the runtime cancels every connection task and closes its sockets.
            })
            .map_err(|e| TestkitError::io("spawning the proxy thread", e))?;
        Ok(Proxy {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `nats://127.0.0.1:PORT` of the listening side.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Where new connections go; current connections keep their upstream.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self
            .shared
            .upstream
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = upstream;
    }

    /// Delays every forwarded chunk by `d`, both directions, keeping order.
    pub fn set_latency(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.shared.latency_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Back to normal: no latency, paused connections resume intact, and connections that
    /// lived through a black hole are reset on both sides. New connections pass.
    pub fn pass(&self) {
        self.set_latency(Duration::ZERO);
        self.control(Some(Mode::Pass), |c| match c {
            Ctl::Hold => Some(Ctl::Cut(CutMode::Rst)),
            Ctl::Pause => Some(Ctl::Run),
            Ctl::Run | Ctl::Cut(_) => None,
        });
    }

    /// Closes every current connection on both sides (RST or FIN); new connections
    /// follow the current mode (normally they pass).
    pub fn cut(&self, mode: CutMode) {
        self.control(None, |c| match c {
            Ctl::Cut(_) => None,
            _ => Some(Ctl::Cut(mode)),
        });
    }

    /// Stops reading both sockets of every current and new connection, so TCP
    /// back-pressure holds everything; [`pass`](Self::pass) resumes them intact.
    pub fn pause(&self) {
        self.control(Some(Mode::Pause), |c| match c {
            Ctl::Run => Some(Ctl::Pause),
            _ => None,
        });
    }

    /// Stops reading and forwarding on every current connection (nothing dropped or
    /// reordered); new connections are accepted but not forwarded. When it ends
    /// ([`pass`](Self::pass)), every connection that existed during it is reset on both
    /// sides, never resumed.
    pub fn black_hole(&self) {
        self.control(Some(Mode::BlackHole), |c| match c {
            Ctl::Run | Ctl::Pause => Some(Ctl::Hold),
            _ => None,
        });
    }

    /// The number of currently open proxied connections.
    pub fn connection_count(&self) -> usize {
        self.shared.inner().conns.len()
    }

    /// Applies `f` to every connection's control and waits until each changed connection
    /// has acknowledged (or, for a cut, has closed).
    fn control(&self, mode: Option<Mode>, mut f: impl FnMut(Ctl) -> Option<Ctl>) {
        let mut pending = Vec::new();
        let generation = {
            let mut inner = self.shared.inner();
            inner.generation += 1;
            let generation = inner.generation;
            if let Some(m) = mode {
                inner.mode = m;
            }
            for (&id, e) in &inner.conns {
                let cur = e.tx.borrow().1;
                if let Some(next) = f(cur) {
                    e.tx.send_replace((generation, next));
                    pending.push((id, e.applied.clone(), matches!(next, Ctl::Cut(_))));
                }
            }
            generation
        };
        wait_for(ACK_TIMEOUT, || {
            let inner = self.shared.inner();
            pending.iter().all(|(id, applied, closing)| {
                !inner.conns.contains_key(id)
                    || (!closing && applied.load(Ordering::Acquire) >= generation)
            })
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => {
                let Ok((client, _)) = r else { continue };
                let (id, rx, applied) = {
                    let mut inner = shared.inner();
                    let ctl = match inner.mode {
                        Mode::Pass => Ctl::Run,
                        Mode::Pause => Ctl::Pause,
                        Mode::BlackHole => Ctl::Hold,
                    };
                    let id = inner.next_id;
                    inner.next_id += 1;
                    let generation = inner.generation;
                    let (tx, rx) = watch::channel((generation, ctl));
                    let applied = Arc::new(AtomicU64::new(generation));
                    inner.conns.insert(id, Entry { tx, applied: applied.clone() });
                    (id, rx, applied)
                };
                let guard = Registered { shared: shared.clone(), id };
                tokio::spawn(connection(guard, client, rx, applied));
            }
        }
    }
}

/// Removes a connection from the registry when its task ends (or is cancelled).
struct Registered {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.inner().conns.remove(&self.id);
    }
}

/// Closes `s` the way `mode` says. A FIN close keeps reading (and discarding) in the
/// background until the peer closes too, because closing a socket with unread data
/// makes Linux send an RST instead.
fn close(s: TcpStream, mode: CutMode) {
    match mode {
        CutMode::Rst => {
            let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
            drop(s);
        }
        CutMode::Fin => {
            let _ = SockRef::from(&s).shutdown(Shutdown::Write);
            tokio::spawn(async move {
                let drain = async {
                    let mut buf = [0u8; 4096];
                    loop {
                        if s.readable().await.is_err() {
                            return;
                        }
                        match s.try_read(&mut buf) {
                            Ok(0) => return,
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(_) => return,
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
            });
        }
    }
}

/// One direction of a connection: bytes read from one socket, queued (each chunk held
/// until its latency has passed), and written to the other.
struct Pump {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    /// How much of the front chunk is already written.
    offset: usize,
    bytes: usize,
    /// The reader saw EOF.
    eof: bool,
    /// EOF was passed on to the writer side.
    shut: bool,
    buf: Vec<u8>,
}

impl Pump {
    fn new() -> Self {
        Pump {
            chunks: VecDeque::new(),
            offset: 0,
            bytes: 0,
            eof: false,
            shut: false,
            buf: vec![0u8; READ_BUF],
        }
    }

    /// Passes EOF on to `to` once everything before it is written.
    fn pass_eof(&mut self, to: &TcpStream) {
        if self.eof && self.chunks.is_empty() && !self.shut {
            let _ = SockRef::from(to).shutdown(Shutdown::Write);
            self.shut = true;
        }
    }

    /// Moves bytes one step: reads `from` (when `ctl` is [`Ctl::Run`] and the queue has
    /// room) or writes the front chunk to `to` once its time has come (unless `ctl` is
    /// [`Ctl::Hold`]). Never completes while it may do neither. Cancel safe: the state
    /// changes only after the last await.
    async fn step(
        &mut self,
        from: &TcpStream,
        to: &TcpStream,
        ctl: Ctl,
        shared: &Shared,
    ) -> io::Result<()> {
        let read = ctl == Ctl::Run && !self.eof && self.bytes < QUEUE_CAP;
        let at = if ctl == Ctl::Hold {
            None
        } else {
            self.front_deadline()
        };
        tokio::select! {
            r = from.readable(), if read => {
                r?;
                match from.try_read(&mut self.buf) {
                    Ok(0) => self.eof = true,
                    Ok(n) => {
                        self.bytes += n;
                        let at = Instant::now() + shared.latency();
                        self.chunks.push_back((at, self.buf[..n].to_vec()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                Ok(())
            }
            r = write_ready(to, at), if at.is_some() => {
                r?;
                self.write_some(to)
            }
            else => std::future::pending().await,
        }
    }

    fn front_deadline(&self) -> Option<Instant> {
        self.chunks.front().map(|c| c.0)
    }

    /// Writes as much of the front chunk as the socket takes without blocking.
    fn write_some(&mut self, to: &TcpStream) -> io::Result<()> {
        let Some((_, chunk)) = self.chunks.front() else {
            return Ok(());
        };
        match to.try_write(&chunk[self.offset..]) {
            Ok(n) => {
                self.offset += n;
                self.bytes -= n;
                if self.offset == chunk.len() {
                    self.chunks.pop_front();
                    self.offset = 0;
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }
}

async fn write_ready(s: &TcpStream, at: Option<Instant>) -> io::Result<()> {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
    s.writable().await
}

/// Connects upstream, unless held by a black hole (then waits for the cut). `None` when
/// the connection ended before that (the client socket is closed then).
async fn dial(
    client: TcpStream,
    rx: &mut watch::Receiver<(u64, Ctl)>,
    applied: &AtomicU64,
    shared: &Shared,
) -> Option<(TcpStream, TcpStream)> {
    loop {
        let (generation, ctl) = *rx.borrow_and_update();
        match ctl {
            Ctl::Cut(mode) => {
                close(client, mode);
                return None;
            }
            Ctl::Hold => {
                applied.store(generation, Ordering::Release);
                rx.changed().await.ok()?;
            }
            Ctl::Run | Ctl::Pause => {
                applied.store(generation, Ordering::Release);
                tokio::select! {
                    r = TcpStream::connect(shared.upstream()) => {
                        if let Ok(s) = r {
                            return Some((client, s));
                        }
                        close(client, CutMode::Rst);
                        return None;
                    }
                    r = rx.changed() => r.ok()?,
                }
            }
        }
    }
}

async fn connection(
    guard: Registered,
    client: TcpStream,
    mut rx: watch::Receiver<(u64, Ctl)>,
    applied: Arc<AtomicU64>,
) {
    let shared = guard.shared.clone();
    let Some((client, upstream)) = dial(client, &mut rx, &applied, &shared).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let mut up = Pump::new(); // client -> upstream
    let mut down = Pump::new(); // upstream -> client
    loop {
        let (generation, ctl) = *rx.borrow_and_update();
        if let Ctl::Cut(mode) = ctl {
            close(client, mode);
            close(upstream, mode);
            return;
        }
        applied.store(generation, Ordering::Release);
        if ctl != Ctl::Hold {
            up.pass_eof(&upstream);
            down.pass_eof(&client);
        }
        if up.shut && down.shut {
            return;
        }
        let moved = tokio::select! {
            r = rx.changed() => match r {
                Ok(()) => Ok(()),
                Err(_) => return,
            },
            r = up.step(&client, &upstream, ctl, &shared) => r,
            r = down.step(&upstream, &client, ctl, &shared) => r,
        };
        if moved.is_err() {
            close(client, CutMode::Rst);
            close(upstream, CutMode::Rst);
            return;
        }
    }
}
