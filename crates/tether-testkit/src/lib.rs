//! Test support for tether: real `nats-server` processes, clusters, a fault-injecting TCP
//! proxy and hostile peers.
//!
//! Everything here is synchronous (std processes, sockets and threads) so it works from
//! plain code, from `#[tokio::test]` on a current-thread runtime and from a multi-thread
//! runtime alike; nothing requires being inside a runtime. The [`Proxy`] runs its own
//! tokio runtime on its own thread.
//!
//! ```text
//!  test ──► NatsServer / NatsCluster ──► nats-server processes (ports chosen by free_port)
//!       ──► Proxy ─────────────────────► any upstream (faults: latency, cut, pause, black hole)
//!       ──► HostilePeer ───────────────► raw TcpListener that misbehaves
//! ```
//!
//! TLS: [`TlsCerts`] makes a CA, server and client certificates at test time;
//! [`ServerConfig::with_tls`] serves them ([`TlsServer`]: mTLS, `handshake_first`), and
//! [`Hostile::TlsGarbage`] misbehaves after a real TLS handshake.
//!
//! Auth: token, user/password and nkey users ([`nkey_user`]) in [`ServerConfig`], and
//! operator mode with user JWTs that can expire ([`Operator`], [`UserCreds`]).
//!
//! Readiness is always observed (INFO on the client port, `/healthz`, `/routez`), never
//! assumed after a fixed sleep.
#![deny(missing_docs)]

mod bin;
mod cluster;
mod error;
mod hostile;
mod http;
pub mod jwt;
mod ports;
mod proxy;
mod server;
mod tls;
mod wait;

pub use bin::{nats_server_bin, nats_server_version};
pub use cluster::NatsCluster;
pub use error::TestkitError;
pub use hostile::{closed_port, Hostile, HostilePeer, VALID_INFO, VALID_TLS_INFO};
pub use jwt::{nkey_user, NkeyUser, Operator, UserCreds};
pub use ports::free_port;
pub use proxy::{CutMode, Proxy};
pub use server::{NatsServer, ServerConfig, DEFAULT_LAME_DUCK_GRACE, LAME_DUCK_DURATION};
pub use tls::{TlsCerts, TlsServer, DEFAULT_SERVER_NAMES};
pub use wait::{wait_for, wait_for_async};
