//! One `nats-server` process.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::jwt::Operator;
use crate::{free_port, http, nats_server_bin, TestkitError, TlsCerts, TlsServer};

/// How long a server may take to become ready.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`NatsServer::stop`] waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// `lame_duck_duration` with [`ServerConfig::lame_duck_for_tests`]: the server's minimum.
pub const LAME_DUCK_DURATION: Duration = Duration::from_secs(30);
/// `lame_duck_grace_period` with [`ServerConfig::lame_duck_for_tests`] unless
/// [`ServerConfig::lame_duck_grace`] says otherwise.
pub const DEFAULT_LAME_DUCK_GRACE: Duration = Duration::from_secs(2);

/// How to configure a server. `Default` gives a plain server with no auth.
///
/// Monitoring is always enabled (on its own free port), whatever `monitoring` says.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// Enable JetStream with a store in the server's temp dir; readiness then also waits
    /// for `/healthz?js-enabled-only=true`.
    pub jetstream: bool,
    /// Require this token (`authorization { token }`).
    pub token: Option<String>,
    /// Require this user and password (`authorization { user, password }`).
    pub user: Option<(String, String)>,
    /// Accept these nkey users, by public key (`U…`, e.g.
    /// [`NkeyUser::public_key`](crate::NkeyUser::public_key)):
    /// `authorization { users = [ { nkey: U… } ] }`. Clients sign the INFO `nonce` with
    /// the seed ([`NkeyUser::sign_nonce`](crate::NkeyUser::sign_nonce)) and send `nkey`
    /// and `sig` in CONNECT.
    ///
    /// nats-server refuses a `users` array beside a token or a single user/password, so
    /// starting with both is a [`TestkitError::Config`].
    pub nkey_users: Vec<String>,
    /// Operator mode: config text from [`Operator::server_config`], best set with
    /// [`with_operator`](Self::with_operator). Clients then authenticate with a user JWT
    /// and a nonce signature ([`Operator::user`]).
    ///
    /// In operator mode nats-server ignores a token, and refuses nkey users configured
    /// directly, so combining this with `token`, `user` or `nkey_users` is a
    /// [`TestkitError::Config`].
    pub operator: Option<String>,
    /// Appended verbatim to the generated config file (TLS, nkeys, limits, accounts...).
    pub extra_config: Option<String>,
    /// `lame_duck_duration: 30s` (the server's minimum, [`LAME_DUCK_DURATION`]) and
    /// `lame_duck_grace_period` from [`lame_duck_grace`](Self::lame_duck_grace) (2 s,
    /// [`DEFAULT_LAME_DUCK_GRACE`], when unset).
    ///
    /// In lame duck mode nats-server closes its client listener and sends INFO `ldm` at
    /// once, waits the grace period, then closes its remaining clients one by one (0.5 to
    /// 1 s apart, counting every client it had when lame duck mode began, even those
    /// gone since) and exits; a server without clients exits at once.
    pub lame_duck_for_tests: bool,
    /// `lame_duck_grace_period` with [`lame_duck_for_tests`](Self::lame_duck_for_tests);
    /// `None` is 2 s. Whole milliseconds, under [`LAME_DUCK_DURATION`]; setting it
    /// without `lame_duck_for_tests` is a [`TestkitError::Config`]. See
    /// [`with_lame_duck_grace`](Self::with_lame_duck_grace).
    pub lame_duck_grace: Option<Duration>,
    /// `max_payload`, in bytes.
    pub max_payload: Option<usize>,
    /// `server_name`; default `tether-<port>` (clusters add `-<index>` to a given name).
    pub name: Option<String>,
    /// `client_advertise`, e.g. a proxy's `127.0.0.1:port`; takes effect at (re)start.
    pub client_advertise: Option<String>,
    /// Kept for readability of call sites: monitoring is always enabled.
    pub monitoring: bool,
    /// A fixed client port (from [`free_port`]), for tests that start a server where a
    /// client is already trying to connect. Default: a fresh [`free_port`].
    pub port: Option<u16>,
    /// TLS on the client port (routes stay plaintext); see [`with_tls`](Self::with_tls).
    /// With it, [`NatsServer::url`] is `tls://127.0.0.1:PORT`, and readiness with
    /// `handshake_first` does a TLS handshake and reads INFO over TLS.
    pub tls: Option<TlsServer>,
}

impl ServerConfig {
    /// This config with a fixed client port.
    #[must_use]
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// This config with lame duck settings for tests and a grace period of `grace`
    /// (sets [`lame_duck_for_tests`](Self::lame_duck_for_tests) and
    /// [`lame_duck_grace`](Self::lame_duck_grace)).
    #[must_use]
    pub fn with_lame_duck_grace(mut self, grace: Duration) -> Self {
        self.lame_duck_for_tests = true;
        self.lame_duck_grace = Some(grace);
        self
    }

    /// This config with TLS on the client port, serving `certs`' server certificate
    /// (TLS after the plaintext INFO, no client certificates; see
    /// [`with_tls_verify`](Self::with_tls_verify) and
    /// [`with_tls_handshake_first`](Self::with_tls_handshake_first)).
    #[must_use]
    pub fn with_tls(mut self, certs: &Arc<TlsCerts>) -> Self {
        self.tls = Some(TlsServer::new(certs.clone()));
        self
    }

    /// This config with mTLS: the server requires a client certificate signed by the CA
    /// (`tls { verify: true }`). Call after [`with_tls`](Self::with_tls).
    ///
    /// # Panics
    /// If TLS is not configured yet (a mistake in the test).
    #[must_use]
    pub fn with_tls_verify(mut self) -> Self {
        self.tls
            .as_mut()
            .expect("with_tls_verify needs with_tls first")
            .verify = true;
        self
    }

    /// This config with `tls { handshake_first: true }`: the TLS handshake comes before
    /// INFO. Call after [`with_tls`](Self::with_tls).
    ///
    /// # Panics
    /// If TLS is not configured yet (a mistake in the test).
    #[must_use]
    pub fn with_tls_handshake_first(mut self) -> Self {
        self.tls
            .as_mut()
            .expect("with_tls_handshake_first needs with_tls first")
            .handshake_first = true;
        self
    }

    /// The grace period written with [`lame_duck_for_tests`](Self::lame_duck_for_tests).
    pub fn effective_lame_duck_grace(&self) -> Duration {
        self.lame_duck_grace.unwrap_or(DEFAULT_LAME_DUCK_GRACE)
    }

    /// This config in operator mode, trusting `op` and preloading its accounts (sets
    /// [`operator`](Self::operator) to [`Operator::server_config`]).
    #[must_use]
    pub fn with_operator(mut self, op: &Operator) -> Self {
        self.operator = Some(op.server_config());
        self
    }

    /// Refuses combinations nats-server would reject at startup or silently ignore.
    fn check(&self) -> Result<(), TestkitError> {
        let bad = |detail: &str| {
            Err(TestkitError::Config {
                detail: detail.into(),
            })
        };
        if self.token.is_some() && self.user.is_some() {
            return bad("token and user/password together (nats-server refuses both)");
        }
        if !self.nkey_users.is_empty() && (self.token.is_some() || self.user.is_some()) {
            return bad(
                "nkey_users beside a token or user/password (nats-server refuses a users \
                 array next to either); use one kind of auth per server",
            );
        }
        if self.operator.is_some()
            && (self.token.is_some() || self.user.is_some() || !self.nkey_users.is_empty())
        {
            return bad(
                "operator mode with token, user/password or nkey_users (nats-server ignores \
                 the token and refuses the users); authenticate with Operator::user instead",
            );
        }
        if self.lame_duck_grace.is_some() && !self.lame_duck_for_tests {
            return bad(
                "lame_duck_grace without lame_duck_for_tests (it would be ignored); use \
                 with_lame_duck_grace, which sets both",
            );
        }
        if self.effective_lame_duck_grace() >= LAME_DUCK_DURATION {
            // nats-server refuses a grace period that is not below the duration.
            return bad("lame_duck_grace of 30 s or more (nats-server wants it under lame_duck_duration, 30 s)");
        }
        Ok(())
    }
}

/// The cluster part of a node's config.
#[derive(Debug, Clone)]
pub(crate) struct ClusterSpec {
    /// This node's route listen port.
    pub(crate) port: u16,
    /// The other nodes' route ports.
    pub(crate) routes: Vec<u16>,
}

/// A running (or killed) `nats-server` on 127.0.0.1 with its own temp dir, config and log.
///
/// Ports are chosen once by [`free_port`] and kept across [`restart`](Self::restart).
/// Dropping the handle SIGKILLs the process; if the thread is panicking (a failing test),
/// the server's log is printed to stderr first.
#[derive(Debug)]
pub struct NatsServer {
    cfg: ServerConfig,
    name: String,
    port: u16,
    monitor_port: u16,
    cluster: Option<ClusterSpec>,
    bin: PathBuf,
    dir: TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server with the default config and waits until it is ready.
    pub fn start() -> Result<Self, TestkitError> {
        Self::start_with(ServerConfig::default())
    }

    /// Starts a server with `cfg` and waits until it is ready.
    ///
    /// If another process grabbed a chosen port in the meantime, it retries with new ports.
    pub fn start_with(cfg: ServerConfig) -> Result<Self, TestkitError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = cfg.port.unwrap_or_else(free_port);
            let mut server = Self::spawn_new(cfg.clone(), None, port, free_port(), None)?;
            match server.wait_ready(READY_TIMEOUT) {
                Ok(()) => return Ok(server),
                Err(e) if attempt < 3 && server.log().contains("address already in use") => {
                    drop(e);
                    server.kill();
                }
                Err(e) => {
                    server.kill();
                    return Err(e);
                }
            }
        }
    }

    /// Writes the config and spawns the process without waiting for readiness.
    pub(crate) fn spawn_new(
        cfg: ServerConfig,
        name: Option<String>,
        port: u16,
        monitor_port: u16,
        cluster: Option<ClusterSpec>,
    ) -> Result<Self, TestkitError> {
        let bin = nats_server_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("tether-nats-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating the server's temp dir", e))?;
        let name = name
            .or_else(|| cfg.name.clone())
            .unwrap_or_else(|| format!("tether-{port}"));
        let mut server = NatsServer {
            cfg,
            name,
            port,
            monitor_port,
            cluster,
            bin,
            dir,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("server.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn stdio_path(&self) -> PathBuf {
        self.dir.path().join("stdio.log")
    }

    fn render_config(&self) -> String {
        let q = |s: &str| serde_json::Value::from(s).to_string();
        let mut c = String::new();
        let _ = writeln!(c, "listen: 127.0.0.1:{}", self.port);
        let _ = writeln!(c, "http: 127.0.0.1:{}", self.monitor_port);
        let _ = writeln!(c, "server_name: {}", q(&self.name));
        if let Some(mp) = self.cfg.max_payload {
            let _ = writeln!(c, "max_payload: {mp}");
        }
        if let Some(adv) = &self.cfg.client_advertise {
            let _ = writeln!(c, "client_advertise: {}", q(adv));
        }
        if self.cfg.lame_duck_for_tests {
            let _ = writeln!(
                c,
                "lame_duck_duration: \"{}s\"\nlame_duck_grace_period: \"{}ms\"",
                LAME_DUCK_DURATION.as_secs(),
                self.cfg.effective_lame_duck_grace().as_millis()
            );
        }
        if self.cfg.token.is_some() || self.cfg.user.is_some() || !self.cfg.nkey_users.is_empty() {
            c.push_str("authorization {\n");
            if let Some(t) = &self.cfg.token {
                let _ = writeln!(c, "  token: {}", q(t));
            }
            if let Some((u, p)) = &self.cfg.user {
                let _ = writeln!(c, "  user: {}\n  password: {}", q(u), q(p));
            }
            if !self.cfg.nkey_users.is_empty() {
                c.push_str("  users = [\n");
                for nk in &self.cfg.nkey_users {
                    let _ = writeln!(c, "    {{ nkey: {} }}", q(nk));
                }
                c.push_str("  ]\n");
            }
            c.push_str("}\n");
        }
        if let Some(op) = &self.cfg.operator {
            c.push_str(op);
            c.push('\n');
        }
        if let Some(tls) = &self.cfg.tls {
            c.push_str(&tls.render());
        }
        if self.cfg.jetstream {
            let store = self.dir.path().join("js");
            let _ = writeln!(
                c,
                "jetstream {{\n  store_dir: {}\n}}",
                q(&store.to_string_lossy())
            );
        }
        if let Some(cl) = &self.cluster {
            let routes: Vec<String> = cl
                .routes
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            let _ = writeln!(
                c,
                "cluster {{\n  name: tether\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}",
                cl.port,
                routes.join(", ")
            );
        }
        if let Some(extra) = &self.cfg.extra_config {
            c.push_str(extra);
            c.push('\n');
        }
        c
    }

    /// (Re)writes the config file and spawns the process.
    fn spawn(&mut self) -> Result<(), TestkitError> {
        self.cfg.check()?;
        fs::write(self.config_path(), self.render_config())
            .map_err(|e| TestkitError::io("writing the server config", e))?;
        let stdio = File::options()
            .create(true)
            .append(true)
            .open(self.stdio_path())
            .map_err(|e| TestkitError::io("opening the server's stdio log", e))?;
        let stdio2 = stdio
            .try_clone()
            .map_err(|e| TestkitError::io("opening the server's stdio log", e))?;
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.config_path())
            .arg("-l")
            .arg(self.log_path())
            .args(["-a", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(stdio)
            .stderr(stdio2)
            .spawn()
            .map_err(|e| TestkitError::io(format!("spawning {}", self.bin.display()), e))?;
        self.child = Some(child);
        Ok(())
    }

    fn not_ready(&self, reason: impl Into<String>) -> TestkitError {
        TestkitError::NotReady {
            name: self.name.clone(),
            reason: reason.into(),
            log: self.log(),
        }
    }

    /// Waits until a client connection reads INFO and, with JetStream, `/healthz` is ok.
    ///
    /// With TLS `handshake_first` the INFO comes only after a TLS handshake, so the probe
    /// does one (accepting the server's certificate whatever it is, expired included)
    /// and reads INFO over TLS; with TLS after INFO the plaintext INFO still proves it.
    pub(crate) fn wait_ready(&mut self, timeout: Duration) -> Result<(), TestkitError> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(2);
        let mut last;
        loop {
            if !self.is_running() {
                return Err(self.not_ready("the process exited during startup"));
            }
            match self.read_info() {
                Ok(()) => break,
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready(format!(
                    "no INFO on port {} within {timeout:?} ({last})",
                    self.port
                )));
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
        if self.cfg.jetstream {
            loop {
                if !self.is_running() {
                    return Err(self.not_ready("the process exited during startup"));
                }
                match http::get(self.monitor_addr(), "/healthz?js-enabled-only=true") {
                    Ok((200, body)) if body.contains("ok") => break,
                    Ok((status, body)) => last = format!("healthz {status}: {body}"),
                    Err(e) => last = e.to_string(),
                }
                if Instant::now() >= deadline {
                    return Err(self
                        .not_ready(format!("JetStream not healthy within {timeout:?} ({last})")));
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn read_info(&self) -> Result<(), String> {
        if let Some(tls) = self.cfg.tls.as_ref().filter(|t| t.handshake_first) {
            return tls.probe_tls_first(self.addr());
        }
        let s = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(500))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.starts_with("INFO ") {
            Ok(())
        } else {
            Err(format!("read {line:?} instead of INFO"))
        }
    }

    /// The URL scheme: `tls` with [`ServerConfig::tls`], else `nats`.
    fn scheme(&self) -> &'static str {
        if self.cfg.tls.is_some() {
            "tls"
        } else {
            "nats"
        }
    }

    /// `nats://127.0.0.1:PORT`, or `tls://127.0.0.1:PORT` when the config has
    /// [`tls`](ServerConfig::tls) (the `tls` scheme tells a client to require TLS);
    /// without credentials (see [`url_with_auth`](Self::url_with_auth)).
    pub fn url(&self) -> String {
        self.url_with_host("127.0.0.1")
    }

    /// Like [`url`](Self::url) with `host` instead of `127.0.0.1`, e.g.
    /// `url_with_host("localhost")` gives `tls://localhost:PORT` for a client that must
    /// verify the certificate by that name. The server listens on 127.0.0.1 only, so
    /// `host` has to resolve there (where `localhost` also resolves to `::1`, a client
    /// must fall back to the next address after that refusal).
    pub fn url_with_host(&self, host: &str) -> String {
        format!("{}://{host}:{}", self.scheme(), self.port)
    }

    /// The URL with the configured token (`nats://TOKEN@…`) or user and password
    /// (`nats://USER:PASS@…`, not percent-encoded) embedded (scheme `tls` with TLS); the
    /// plain [`url`](Self::url) without auth.
    pub fn url_with_auth(&self) -> String {
        let scheme = self.scheme();
        if let Some((u, p)) = &self.cfg.user {
            format!("{scheme}://{u}:{p}@127.0.0.1:{}", self.port)
        } else if let Some(t) = &self.cfg.token {
            format!("{scheme}://{t}@127.0.0.1:{}", self.port)
        } else {
            self.url()
        }
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The monitoring (HTTP) port.
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    fn monitor_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.monitor_port))
    }

    /// The route port, for a cluster node.
    pub fn cluster_port(&self) -> Option<u16> {
        self.cluster.as_ref().map(|c| c.port)
    }

    /// The `server_name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The config this server was started with.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// The config, to change; changes take effect at the next [`restart`](Self::restart).
    pub fn config_mut(&mut self) -> &mut ServerConfig {
        &mut self.cfg
    }

    /// The server's temp dir (config, logs, JetStream store); it lives as long as the handle.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id, while a process has been started and not yet reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        let Some(c) = &mut self.child else {
            return false;
        };
        if let Ok(None) = c.try_wait() {
            return true;
        }
        self.child = None;
        false
    }

    /// SIGKILL and reap. Does nothing if the process is not running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to 10 s for the process to exit, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            if !self.wait_exit(STOP_TIMEOUT) {
                self.kill();
            }
        }
    }

    /// Kills the process if it is running, starts it again with the same ports, config
    /// (including changes made through [`config_mut`](Self::config_mut)) and store, and
    /// waits until it is ready.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.kill();
        self.spawn()?;
        self.wait_ready(READY_TIMEOUT)
    }

    /// Sends SIGUSR2: the server enters lame duck mode (see
    /// [`ServerConfig::lame_duck_for_tests`] for short timings).
    pub fn lame_duck(&self) -> Result<(), TestkitError> {
        let pid = self.pid().ok_or_else(|| TestkitError::NotReady {
            name: self.name.clone(),
            reason: "lame duck requested but the process is not running".into(),
            log: self.log(),
        })?;
        signal::kill(Pid::from_raw(pid as i32), Signal::SIGUSR2)
            .map_err(|e| TestkitError::io("sending SIGUSR2", e.into()))
    }

    /// Sends SIGUSR2 and waits up to `timeout` for the process to exit, as a rolling restart
    /// does before it starts the node again. Returns how long the exit took from the
    /// signal.
    ///
    /// nats-server exits at once when it has no clients, else after the grace period
    /// once it has closed the clients it had (see
    /// [`ServerConfig::lame_duck_for_tests`]); with 2 clients and a 2 s grace that is
    /// about 2.5 to 3 s. A process still running at the deadline is left running:
    /// [`TestkitError::NoExit`].
    pub fn lame_duck_exit(&mut self, timeout: Duration) -> Result<Duration, TestkitError> {
        let signalled = Instant::now();
        self.lame_duck()?;
        if self.wait_exit(timeout) {
            Ok(signalled.elapsed())
        } else {
            Err(TestkitError::NoExit {
                name: self.name.clone(),
                waited: timeout,
                log: self.log(),
            })
        }
    }

    /// Rewrites the config file from the current config (with the changes made through
    /// [`config_mut`](Self::config_mut)) and sends SIGHUP: the running server reloads it.
    /// The server applies it asynchronously; observe the effect (an -ERR to a client, a
    /// `/varz` field) rather than assuming it.
    pub fn reload(&mut self) -> Result<(), TestkitError> {
        let pid = self.pid().ok_or_else(|| TestkitError::NotReady {
            name: self.name.clone(),
            reason: "reload requested but the process is not running".into(),
            log: self.log(),
        })?;
        self.cfg.check()?;
        fs::write(self.config_path(), self.render_config())
            .map_err(|e| TestkitError::io("writing the server config", e))?;
        signal::kill(Pid::from_raw(pid as i32), Signal::SIGHUP)
            .map_err(|e| TestkitError::io("sending SIGHUP", e.into()))
    }

    /// Waits up to `timeout` for the process to exit; true when it has (or was not running).
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        crate::wait_for(timeout, || !self.is_running())
    }

    /// The server's log (plus anything it printed on stdout/stderr, such as config errors).
    pub fn log(&self) -> String {
        let mut s = fs::read_to_string(self.log_path()).unwrap_or_default();
        if let Ok(stdio) = fs::read_to_string(self.stdio_path()) {
            if !stdio.trim().is_empty() {
                s.push_str("--- stdout/stderr ---\n");
                s.push_str(&stdio);
            }
        }
        s
    }

    /// `GET /varz` as JSON.
    pub fn varz(&self) -> Result<serde_json::Value, TestkitError> {
        self.monitor("/varz")
    }

    /// The server's subscription count from `GET /subsz` (every account's, the system
    /// account's own included).
    pub fn num_subscriptions(&self) -> Result<u64, TestkitError> {
        let v = self.monitor("/subsz")?;
        v["num_subscriptions"]
            .as_u64()
            .ok_or_else(|| TestkitError::Monitor {
                url: format!("http://{}/subsz", self.monitor_addr()),
                detail: format!("no num_subscriptions in {v}"),
            })
    }

    /// `GET /connz` as JSON.
    pub fn connz(&self) -> Result<serde_json::Value, TestkitError> {
        self.monitor("/connz")
    }

    /// `GET /routez` as JSON.
    pub fn routez(&self) -> Result<serde_json::Value, TestkitError> {
        self.monitor("/routez")
    }

    /// `GET` any monitoring path (with query), e.g. `/connz?state=closed`, as JSON.
    pub fn monitor(&self, path_and_query: &str) -> Result<serde_json::Value, TestkitError> {
        http::get_json(self.monitor_addr(), path_and_query)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let prefix = format!("[{}] ", self.name);
            let mut out = format!("{prefix}--- nats-server log ---\n");
            for line in self.log().lines() {
                out.push_str(&prefix);
                out.push_str(line);
                out.push('\n');
            }
            eprint!("{out}");
        }
        self.kill();
    }
}
