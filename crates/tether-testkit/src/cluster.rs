//! A cluster of `nats-server` nodes routed on loopback.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::server::{ClusterSpec, READY_TIMEOUT};
use crate::{free_port, NatsServer, ServerConfig, TestkitError};

/// nats-server's default route `pool_size` (2.10+): routes per pair of nodes.
const ROUTE_POOL_SIZE: usize = 3;

/// How long starting a cluster or restarting a node waits for routes.
const ROUTES_TIMEOUT: Duration = Duration::from_secs(15);

/// How long starting a JetStream cluster waits for a meta leader.
const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(20);

/// `n` nodes with `cluster { name: tether }`, each listing the others' route ports.
///
/// All ports are chosen up front and kept across restarts. Starting waits until every
/// node is ready and [`wait_routes`](Self::wait_routes) holds.
///
/// With [`ServerConfig::tls`] every node has TLS on its client port (same certificates,
/// same `verify`/`handshake_first`); routes stay plaintext. Nodes listen on 127.0.0.1,
/// so the `connect_urls` they gossip in INFO are bare `127.0.0.1:PORT` (no scheme, no
/// host name) unless `client_advertise` says otherwise: a client that discovers them
/// must still require TLS and verify each against the name it started with (e.g.
/// `localhost` with [`TlsCerts::with_server_names`](crate::TlsCerts::with_server_names)
/// `(&["localhost"])`, whose certificate has no IP SAN).
///
/// With [`ServerConfig::jetstream`] the nodes form a JetStream cluster: each has its own
/// store in its own temp dir and its own `server_name` (`node<i>`, or the configured name
/// with `-<i>`), all share the cluster name `tether`, and starting also waits for
/// [`wait_jetstream`](Self::wait_jetstream) (a meta leader every node agrees on), so a
/// stream with replicas can be created at once:
///
/// ```no_run
/// # use tether_testkit::{NatsCluster, ServerConfig};
/// let cluster = NatsCluster::start_with(3, ServerConfig { jetstream: true, ..Default::default() })?;
/// // ... create an R3 stream, publish; then find and kill its leader:
/// // let leader = cluster.stream_leader("$G", "ORDERS");
/// # Ok::<(), tether_testkit::TestkitError>(())
/// ```
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
    cfg: ServerConfig,
}

impl NatsCluster {
    /// Starts `n` default nodes.
    pub fn start(n: usize) -> Result<Self, TestkitError> {
        Self::start_with(n, ServerConfig::default())
    }

    /// Starts `n` nodes with `cfg` (each node's name gets `-<index>` appended).
    pub fn start_with(n: usize, cfg: ServerConfig) -> Result<Self, TestkitError> {
        Self::start_with_advertise(n, cfg, Vec::new())
    }

    /// Like [`start_with`](Self::start_with), with node `i` using `advertise[i]` as its
    /// `client_advertise` (missing entries: none). Useful with proxies in front of nodes:
    /// start the proxies first, then point them at the nodes with
    /// [`Proxy::set_upstream`](crate::Proxy::set_upstream).
    pub fn start_with_advertise(
        n: usize,
        cfg: ServerConfig,
        advertise: Vec<String>,
    ) -> Result<Self, TestkitError> {
        assert!(n > 0, "a cluster needs at least one node");
        let route_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut cluster = NatsCluster {
            nodes: Vec::with_capacity(n),
            cfg: cfg.clone(),
        };
        let mut advertise = advertise.into_iter();
        for (i, &rp) in route_ports.iter().enumerate() {
            let mut node_cfg = cfg.clone();
            if let Some(a) = advertise.next() {
                node_cfg.client_advertise = Some(a);
            }
            let routes = route_ports.iter().copied().filter(|&p| p != rp).collect();
            let node = cluster.spawn_node(i, node_cfg, rp, routes)?;
            cluster.nodes.push(node);
        }
        for node in &mut cluster.nodes {
            node.wait_ready(READY_TIMEOUT)?;
        }
        cluster.wait_routes(ROUTES_TIMEOUT)?;
        if cluster.cfg.jetstream {
            cluster.wait_jetstream(JETSTREAM_TIMEOUT)?;
        }
        Ok(cluster)
    }

    fn spawn_node(
        &self,
        i: usize,
        cfg: ServerConfig,
        route_port: u16,
        routes: Vec<u16>,
    ) -> Result<NatsServer, TestkitError> {
        let name = match &self.cfg.name {
            Some(base) => format!("{base}-{i}"),
            None => format!("node{i}"),
        };
        NatsServer::spawn_new(
            cfg,
            Some(name),
            free_port(),
            free_port(),
            Some(ClusterSpec {
                port: route_port,
                routes,
            }),
        )
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// Node `i`, mutably (to kill, stop or change its config).
    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }

    /// The number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes (never true for a started cluster).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's client URL ([`NatsServer::url`]: `tls://` with TLS), in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Waits until every running node's `/routez` lists all its pooled routes (nats-server's
    /// default pool of 3) to the current server id (from `/varz`) of every other running
    /// node.
    pub fn wait_routes(&self, timeout: Duration) -> Result<(), TestkitError> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(5);
        loop {
            let missing = match self.missing_routes() {
                Ok(None) => return Ok(()),
                Ok(Some(m)) => m,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(TestkitError::Routes {
                    detail: format!("after {timeout:?}: {missing}"),
                });
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    /// `None` when all routes are up, else a description of what is missing.
    fn missing_routes(&self) -> Result<Option<String>, TestkitError> {
        // A node whose process is gone is skipped; `pid()` is Some until it is reaped.
        let mut running = Vec::new();
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
            let Ok(varz) = node.varz() else {
                // Not answering: treat it as down only if the process really exited.
                if node_exited(node) {
                    continue;
                }
                return Ok(Some(format!("{} does not answer /varz", node.name())));
            };
            let id = varz["server_id"].as_str().unwrap_or_default().to_owned();
            running.push((node, id));
        }
        for (node, _) in &running {
            let routez = node.routez()?;
            // Route pooling (nats-server 2.10+, `pool_size` 3 by default) opens several
            // routes per peer and pins each account to one of them: a peer counts as
            // routed only once all of them are up, or one account's interest may still
            // be on its way while another's already flows.
            let mut have: HashMap<&str, usize> = HashMap::new();
            for r in routez["routes"].as_array().into_iter().flatten() {
                if r.get("account").is_some_and(|a| !a.is_null()) {
                    continue; // a dedicated account route ($SYS)
                }
                if let Some(id) = r["remote_id"].as_str() {
                    *have.entry(id).or_default() += 1;
                }
            }
            for (other, other_id) in &running {
                let n = have.get(other_id.as_str()).copied().unwrap_or(0);
                if other.name() != node.name() && n < ROUTE_POOL_SIZE {
                    return Ok(Some(format!(
                        "{} has {n} of {ROUTE_POOL_SIZE} routes to {} ({other_id})",
                        node.name(),
                        other.name()
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Waits until JetStream is ready on every running node: its
    /// `/healthz?js-enabled-only=true` is ok and its `/jsz` names the same meta leader
    /// (`meta_cluster.leader`, a `server_name`) as every other running node's, that
    /// leader being one of the running nodes, and its meta group counts at least as many
    /// peers as there are running nodes (`meta_cluster.cluster_size`: a leader can be
    /// elected before the last node has joined the group). After a node is killed, this
    /// holds once the others agree on a leader among themselves (two of three keep a
    /// quorum; the group still counts the killed peer).
    ///
    /// Right after start the meta leader may still refuse a stream with replicas
    /// ("no suitable peers for placement", err_code 10005) for a second or two: it places
    /// replicas only on nodes whose periodic stats it has received (sent 250 ms, 500 ms,
    /// 1 s... after each node starts), which no monitoring endpoint shows. Retry such a
    /// create until a deadline.
    pub fn wait_jetstream(&self, timeout: Duration) -> Result<(), TestkitError> {
        let mut missing = None;
        if crate::wait_for(timeout, || {
            missing = self.jetstream_not_ready();
            missing.is_none()
        }) {
            return Ok(());
        }
        Err(TestkitError::JetStream {
            detail: format!("after {timeout:?}: {}", missing.unwrap_or_default()),
        })
    }

    /// The running nodes (process not exited), with their indexes.
    fn running(&self) -> impl Iterator<Item = (usize, &NatsServer)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.pid().is_some() && !node_exited(n))
    }

    /// `None` when JetStream is ready on every running node, else what is missing.
    fn jetstream_not_ready(&self) -> Option<String> {
        let running: Vec<_> = self.running().collect();
        if running.is_empty() {
            return Some("no node is running".into());
        }
        let mut leader: Option<String> = None;
        for (_, node) in &running {
            match node.monitor("/healthz?js-enabled-only=true") {
                Ok(h) if h["status"] == "ok" => {}
                Ok(h) => return Some(format!("{} healthz: {h}", node.name())),
                Err(e) => return Some(format!("{} healthz: {e}", node.name())),
            }
            let jsz = match node.monitor("/jsz") {
                Ok(j) => j,
                Err(e) => return Some(format!("{} jsz: {e}", node.name())),
            };
            let seen = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
            if seen.is_empty() {
                return Some(format!("{} knows no meta leader yet", node.name()));
            }
            // A leader is elected before the last peer has joined the meta group: until
            // then the group is smaller than the cluster (and R3 placements may fail).
            let size = jsz["meta_cluster"]["cluster_size"].as_u64().unwrap_or(0);
            if size < running.len() as u64 {
                return Some(format!(
                    "{}'s meta group has {size} of {} peers",
                    node.name(),
                    running.len()
                ));
            }
            if !running.iter().any(|(_, n)| n.name() == seen) {
                return Some(format!(
                    "{} names {seen} as meta leader, which is not running",
                    node.name()
                ));
            }
            match &leader {
                None => leader = Some(seen.to_owned()),
                Some(l) if l != seen => {
                    return Some(format!(
                        "nodes disagree on the meta leader ({l} and {seen} from {})",
                        node.name()
                    ))
                }
                Some(_) => {}
            }
        }
        None
    }

    /// The index of the running node that every running node names as the JetStream
    /// meta leader (`meta_cluster.leader` in `/jsz`); `None` while they do not agree on a
    /// running node (an election under way).
    pub fn meta_leader(&self) -> Option<usize> {
        let mut agreed: Option<String> = None;
        for (_, node) in self.running() {
            let jsz = node.monitor("/jsz").ok()?;
            let seen = jsz["meta_cluster"]["leader"].as_str()?;
            match &agreed {
                Some(l) if l != seen => return None,
                Some(_) => {}
                None => agreed = Some(seen.to_owned()),
            }
        }
        let agreed = agreed?;
        self.running()
            .find(|(_, n)| n.name() == agreed)
            .map(|(i, _)| i)
    }

    /// The index of the running node that leads `stream` of `account` (`$G` without
    /// accounts), as that node's own `/jsz?acc=<account>&streams=true` reports it
    /// (`cluster.leader` of the stream is its own `server_name`); `None` while no node
    /// claims it (an election under way, or no such stream).
    pub fn stream_leader(&self, account: &str, stream: &str) -> Option<usize> {
        let path = format!("/jsz?acc={}&streams=true", query_escape(account));
        self.running().find_map(|(i, node)| {
            let jsz = node.monitor(&path).ok()?;
            let leads = jsz["account_details"]
                .as_array()?
                .iter()
                .filter(|a| a["name"] == account || a["id"] == account)
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .any(|s| s["name"] == stream && s["cluster"]["leader"] == node.name());
            leads.then_some(i)
        })
    }

    /// Waits up to `timeout` for a running node to lead `stream` of `account` (see
    /// [`stream_leader`](Self::stream_leader)) and returns its index.
    pub fn wait_stream_leader(
        &self,
        account: &str,
        stream: &str,
        timeout: Duration,
    ) -> Result<usize, TestkitError> {
        let mut found = None;
        crate::wait_for(timeout, || {
            found = self.stream_leader(account, stream);
            found.is_some()
        });
        found.ok_or_else(|| TestkitError::JetStream {
            detail: format!(
                "no running node leads stream {stream:?} of account {account:?} after {timeout:?}"
            ),
        })
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Restarts node `i` on its ports (and JetStream store) and waits for it and for all
    /// routes, and with JetStream for [`wait_jetstream`](Self::wait_jetstream).
    pub fn restart(&mut self, i: usize) -> Result<(), TestkitError> {
        self.nodes[i].restart()?;
        self.wait_routes(ROUTES_TIMEOUT)?;
        if self.cfg.jetstream {
            self.wait_jetstream(JETSTREAM_TIMEOUT)?;
        }
        Ok(())
    }

    /// One step of a rolling restart: sends node `i` the lame-duck signal, waits up to
    /// `exit_timeout` for it to exit ([`NatsServer::lame_duck_exit`]), starts it again on
    /// the same ports and waits for it and for all routes. Returns how long the exit took.
    ///
    /// The restarted node has a new server id; the other nodes add its client URL back to
    /// their `connect_urls` once the routes are up. A node that does not exit in time is
    /// left running and the error says so.
    pub fn lame_duck_restart(
        &mut self,
        i: usize,
        exit_timeout: Duration,
    ) -> Result<Duration, TestkitError> {
        let took = self.nodes[i].lame_duck_exit(exit_timeout)?;
        self.restart(i)?;
        Ok(took)
    }

    /// Sets node `i`'s `client_advertise`; takes effect at its next (re)start.
    pub fn set_client_advertise(&mut self, i: usize, addr: String) {
        self.nodes[i].config_mut().client_advertise = Some(addr);
    }

    /// Starts one more node that routes to all existing ones, waits for it and for all
    /// routes (and with JetStream for [`wait_jetstream`](Self::wait_jetstream)), and
    /// returns its index.
    pub fn add_node(&mut self) -> Result<usize, TestkitError> {
        let i = self.nodes.len();
        let routes = self
            .nodes
            .iter()
            .filter_map(NatsServer::cluster_port)
            .collect();
        let mut node = self.spawn_node(i, self.cfg.clone(), free_port(), routes)?;
        node.wait_ready(READY_TIMEOUT)?;
        self.nodes.push(node);
        self.wait_routes(ROUTES_TIMEOUT)?;
        if self.cfg.jetstream {
            self.wait_jetstream(JETSTREAM_TIMEOUT)?;
        }
        Ok(i)
    }
}

/// Percent-encodes all but unreserved characters, for a query value.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Whether a node's process is gone, without needing `&mut` (checks `/proc`).
fn node_exited(node: &NatsServer) -> bool {
    match node.pid() {
        None => true,
        Some(pid) => {
            // A zombie (exited, not yet reaped) shows state 'Z'.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
        }
    }
}
