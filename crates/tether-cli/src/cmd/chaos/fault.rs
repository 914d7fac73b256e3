//! The servers chaos runs against (its own nats-server or 3-node cluster, or the one
//! `--server` names, behind a proxy for `blackhole`) and injecting and ending a fault.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether::server_pool::ServerAddr;
use tether_testkit::{NatsCluster, NatsServer, Proxy, ServerConfig};

use super::state::lock;
use super::{ChaosArgs, Fault, LDM_EXIT_TIMEOUT};
use crate::error::Context as _;
use crate::CliError;

/// Where the servers come from.
#[derive(Debug)]
enum Env {
    /// `--server`: not ours to stop.
    External,
    /// One nats-server chaos started.
    Single(NatsServer),
    /// `--cluster`: three nodes chaos started.
    Cluster(NatsCluster),
}

/// The servers, and the proxy in front of them for `blackhole`.
#[derive(Debug)]
pub(super) struct Target {
    env: Env,
    proxy: Option<Proxy>,
}

/// The target, shared with the blocking threads that inject and end faults.
pub(super) type Guarded = Arc<Mutex<Target>>;

/// Runs `f` on the target on a blocking thread (the testkit is synchronous).
pub(super) async fn blocking<R: Send + 'static>(
    target: &Guarded,
    f: impl FnOnce(&mut Target) -> R + Send + 'static,
) -> Result<R, CliError> {
    let t = Arc::clone(target);
    tokio::task::spawn_blocking(move || f(&mut lock(&t)))
        .await
        .context("fault injection task failed")
}

/// The port of a server URL.
fn port_of(server: &str) -> Option<u16> {
    ServerAddr::parse(server).ok().map(|a| a.port())
}

/// The cluster node the client is on (node 0 if unknown).
fn node_of(cluster: &NatsCluster, server: Option<&str>) -> usize {
    let port = server.and_then(port_of);
    (0..cluster.len())
        .find(|&i| Some(cluster.node(i).port()) == port)
        .unwrap_or(0)
}

/// Injects the fault; returns the cluster node it hit (0 without a cluster).
pub(super) fn inject(
    t: &mut Target,
    fault: Fault,
    connected: Option<&str>,
) -> Result<usize, CliError> {
    if fault == Fault::Blackhole {
        proxy(t)?.black_hole();
        return Ok(0);
    }
    match &mut t.env {
        Env::Single(s) => {
            if fault == Fault::Kill {
                s.kill();
            } else {
                s.stop();
            }
            Ok(0)
        }
        Env::Cluster(c) => {
            let i = node_of(c, connected);
            match fault {
                Fault::Kill => c.kill(i),
                Fault::Ldm => c
                    .node(i)
                    .lame_duck()
                    .context(format_args!("signalling lame duck mode to node {i}"))?,
                _ => c.node_mut(i).stop(),
            }
            Ok(i)
        }
        Env::External => Err(CliError::new(
            format!("--fault {fault:?} needs a local server").to_lowercase(),
        )),
    }
}

/// Ends the fault; returns when the server accepts again.
pub(super) fn restore(t: &mut Target, fault: Fault, node: usize) -> Result<(), CliError> {
    if fault == Fault::Blackhole {
        proxy(t)?.pass();
        return Ok(());
    }
    match &mut t.env {
        Env::Single(s) => s.restart().context("restarting nats-server"),
        Env::Cluster(c) => {
            if fault == Fault::Ldm {
                // A lame-duck server closes its clients over lame_duck_duration, then exits.
                if !c.node_mut(node).wait_exit(LDM_EXIT_TIMEOUT) {
                    c.kill(node);
                }
            }
            c.restart(node)
                .context(format_args!("restarting cluster node {node}"))
        }
        Env::External => Ok(()),
    }
}

/// The first address of the first server in `url` (comma-separated URLs).
async fn resolve(url: &str) -> Result<SocketAddr, CliError> {
    let first = url.split(',').next().unwrap_or("").trim();
    let addr = ServerAddr::parse(first).map_err(|e| CliError::new(e.to_string()))?;
    let hostport = (addr.host(), addr.port());
    let mut addrs = tokio::net::lookup_host(hostport)
        .await
        .context(format_args!("resolving {addr}"))?;
    addrs
        .next()
        .ok_or_else(|| CliError::new(format!("resolving {addr}: no address")))
}

/// Starts what the args ask for; returns the target, the URL(s) clients connect to and,
/// with `--tls`, the CA file of the local servers' certificates (for the clients to
/// trust).
pub(super) async fn start_target(
    args: &ChaosArgs,
) -> Result<(Guarded, String, Option<PathBuf>), CliError> {
    let fault = args.fault;
    let cluster = args.cluster;
    let tls_first = args.global.as_ref().is_some_and(|g| g.tls_first);
    let tls = args.tls;
    let (base, certs) =
        tokio::task::spawn_blocking(move || crate::util::local_server_config(tls, tls_first))
            .await
            .context("making the TLS certificates")?
            .context("making TLS certificates for the local servers")?;
    let (env, upstream, urls) = if let Some(url) = &args.server {
        let addr = if fault == Fault::Blackhole {
            Some(resolve(url).await?)
        } else {
            None
        };
        (Env::External, addr, url.clone())
    } else if cluster {
        let c = tokio::task::spawn_blocking(move || {
            // Lame duck: the server's minimum duration (30 s) and a 2 s grace period.
            let c = NatsCluster::start_with(
                3,
                ServerConfig {
                    lame_duck_for_tests: fault == Fault::Ldm,
                    ..base
                },
            )?;
            c.wait_routes(Duration::from_secs(10))?;
            Ok::<_, tether_testkit::TestkitError>(c)
        })
        .await
        .context("starting the cluster")?
        .context("starting a 3-node nats-server cluster")?;
        let urls = c.urls().join(",");
        (Env::Cluster(c), None, urls)
    } else {
        let s = tokio::task::spawn_blocking(move || NatsServer::start_with(base))
            .await
            .context("starting nats-server")?
            .context("starting a local nats-server")?;
        let addr = s.addr();
        let url = s.url();
        (Env::Single(s), Some(addr), url)
    };
    let proxy = if fault == Fault::Blackhole {
        let upstream = upstream.ok_or_else(|| CliError::new("no upstream for the proxy"))?;
        Some(
            tokio::task::spawn_blocking(move || Proxy::start(upstream))
                .await
                .context("starting the proxy")?
                .context("starting the proxy")?,
        )
    } else {
        None
    };
    // The proxy forwards bytes: TLS passes through it, so the clients keep the upstream's
    // scheme (`tls://` asks them for TLS) and verify the certificate by the proxy's
    // address, 127.0.0.1.
    let url = match &proxy {
        Some(p) => proxied_url(&p.url(), &urls),
        None => urls,
    };
    // The servers' configs hold the certificates: the CA file lives as long as they do.
    let ca = certs.as_ref().map(|c| c.ca_file());
    Ok((Arc::new(Mutex::new(Target { env, proxy })), url, ca))
}

/// The proxy's URL (`nats://127.0.0.1:PORT`) with the scheme of the first upstream URL,
/// so that a `tls://` upstream is reached with TLS through the proxy.
fn proxied_url(proxy_url: &str, upstream_urls: &str) -> String {
    let first = upstream_urls.split(',').next().unwrap_or("").trim();
    match first.split_once("://") {
        Some((scheme, _)) if !scheme.eq_ignore_ascii_case("nats") => {
            proxy_url.strip_prefix("nats://").map_or_else(
                || proxy_url.to_owned(),
                |rest| format!("{}://{rest}", scheme.to_ascii_lowercase()),
            )
        }
        _ => proxy_url.to_owned(),
    }
}

/// The proxy `blackhole` runs through.
fn proxy(t: &Target) -> Result<&Proxy, CliError> {
    t.proxy.as_ref().ok_or_else(|| CliError::new("no proxy"))
}

#[cfg(test)]
mod tests {
    use super::proxied_url;

    #[test]
    fn the_proxy_url_keeps_the_upstream_scheme() {
        let proxy = "nats://127.0.0.1:4300";
        assert_eq!(proxied_url(proxy, "nats://127.0.0.1:4222"), proxy);
        assert_eq!(proxied_url(proxy, "127.0.0.1:4222"), proxy);
        assert_eq!(
            proxied_url(proxy, "tls://127.0.0.1:4222,tls://127.0.0.1:4223"),
            "tls://127.0.0.1:4300"
        );
        assert_eq!(
            proxied_url(proxy, " TLS://nats.example:4222"),
            "tls://127.0.0.1:4300"
        );
    }
}
