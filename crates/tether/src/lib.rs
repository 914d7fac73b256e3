//! tether: a NATS client for Rust whose reason to exist is connection handling done right.
//!
//! ```text
//!   Client (cloneable handle) ──lock, encode, wake──►  Shared { Connection (sans-IO core) }
//!   Subscriber (Stream)       ◄──bounded queue──────   driver task: socket ◄► core, timers,
//!                                                      reconnect loop over the server pool
//! ```
//!
//! - Publishers encode straight into one bounded outbound buffer (bytes and messages) and
//!   wake the driver, which writes everything queued in as few syscalls as it can. The
//!   same buffer carries publishes across an outage.
//! - `publish` returns Ok only when the frame is buffered; nothing is lost without an
//!   error or an event saying so. `flush` waits for the server's PONG.
//! - A dead link is found within ping_interval + pong_timeout (40 s by default), or
//!   write_stall_timeout when writes stop progressing.
//! - Every state change is an [`Event`] (stream and callback) and a `tracing` record.
//!
//! # Example
//! ```no_run
//! # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
//! use futures_util::StreamExt;
//!
//! let client = tether::connect("nats://127.0.0.1:4222").await?;
//! let mut sub = client.subscribe("greet.*").await?;
//! client.publish("greet.joe", "hello").await?;
//! client.flush().await?;
//! let msg = sub.next().await.unwrap();
//! assert_eq!(&msg.payload[..], b"hello");
//! client.drain().await?;
//! # Ok(()) }
//! ```
//!
//! See [`guide`] for the semantics in depth.
#![cfg_attr(not(test), forbid(clippy::print_stdout, clippy::print_stderr))]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

mod buffer_watch;
mod client;
mod connection;
mod credentials;
pub mod error;
pub mod events;
pub mod guide;
pub mod jetstream;
mod message;
pub mod options;
mod request;
mod server_addr;
pub mod server_pool;
pub mod stats;
mod subscription;
pub mod tls;

pub use client::{Client, CloseReport, DrainReport};
pub use credentials::Credentials;
pub use error::{
    AttemptCause, AttemptError, ConnectError, ConnectFailure, DialError, DrainError, Error,
    FlushError, OptionsError, PublishError, RequestError, RetryMethod, SubscribeError,
};
pub use events::{ClosedReason, Event, EventKind, Events, MigrateReason, State};
pub use message::Message;
pub use options::{AuthFailurePolicy, ConnectOptions, ConnectPolicy, IntoServers, OverflowPolicy};
pub use stats::{ReplayStats, Statistics};
pub use subscription::{SubscribeOptions, Subscriber};
pub use tether_proto::conn::{DisconnectReason, HandshakeError, RemovedReason};
pub use tether_proto::server_err::{AuthErrorClass, ServerErr};
pub use tether_proto::{HeaderMap, ProtocolError, StatusCode, Subject};
pub use tls::TlsError;

/// The version of this crate (`CARGO_PKG_VERSION`). It is what every client sends the
/// server in CONNECT (`"lang": "rust"`, `"version": VERSION`), so the server's monitoring
/// (`/connz`) shows which tether each connection runs.
///
/// ```
/// println!("using tether {}", tether::VERSION);
/// ```
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Connect with default options. See [`ConnectOptions::connect`].
pub async fn connect(servers: impl IntoServers) -> Result<Client, ConnectError> {
    ConnectOptions::new().connect(servers).await
}
