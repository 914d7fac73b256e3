//! Sans-IO core of the NATS client protocol for tether.
//!
//! This crate does no networking and reads no clock. Bytes from the socket and the
//! current time (`now: Instant`) go in; parsed server operations, bytes to write and the
//! next deadline come out. The async client (`tether`) owns the sockets, the timers and
//! the tasks; everything here is deterministic and testable in memory.
//!
//! ```text
//!            tether (tokio: sockets, TLS, timers, tasks, Client handle)
//!   ─────────────────────────────────────────────────────────────────────────
//!    bytes read ──► Decoder ──► ServerOp ──► conn (state machine) ──► events
//!                                              │   ▲
//!    bytes to write ◄── outbound buffer ◄──────┘   └── now: Instant, deadlines
//!                          ▲
//!    publish/subscribe ── encode (+ subject/header validation)
//! ```
//!
//! # Modules
//! - [`conn`]: the connection state machine, [`Connection`](conn::Connection) (one client
//!   session across links), and a link's sans-IO [`Handshake`](conn::Handshake).
//! - [`decode`]: the incremental [`Decoder`] for server operations (`INFO`, `MSG`,
//!   `HMSG`, `PING`, `PONG`, `+OK`, `-ERR`). It gives the same operations for any
//!   chunking of the input, caps control lines and payloads, and slices subjects and
//!   payloads out of the read buffer without copying.
//! - [`encode`]: client operations (`CONNECT`, `PUB`, `HPUB`, `SUB`, `UNSUB`, `PING`,
//!   `PONG`) written straight into the caller's buffer with no allocation of their own.
//! - [`headers`]: [`HeaderMap`] and [`StatusCode`] (the `NATS/1.0` header block).
//! - [`info`]: [`ServerInfo`] (the server's `INFO`) and [`ConnectInfo`] (our `CONNECT`).
//! - [`subject`]: subject, reply and queue-group validation and wildcard matching.
//! - [`server_err`]: [`ServerErr`](server_err::ServerErr), every `-ERR` text parsed once
//!   (closes the link or not, caused by our bytes or not, auth failure class).
//! - [`error`]: [`ProtocolError`] (the peer broke the protocol: close the connection) and
//!   [`ValidationError`] (our caller gave input that must not be sent).
//!
//! The wire format follows the NATS client protocol
//! (<https://docs.nats.io/reference/reference-protocols/nats-protocol>) and, where the
//! documentation is silent, what `nats-server` (`server/parser.go`) and nats.go
//! (`parser.go`) accept.
//!
//! # Example
//! ```
//! use bytes::BytesMut;
//! use tether_proto::{Decoder, DecoderLimits, ServerOp};
//!
//! let mut decoder = Decoder::new(DecoderLimits::default());
//! let mut buf = BytesMut::from(&b"PING\r\nMSG greet.joe 7 5\r\nhel"[..]);
//! assert_eq!(decoder.decode(&mut buf).unwrap(), Some(ServerOp::Ping));
//! assert_eq!(decoder.decode(&mut buf).unwrap(), None); // payload not complete yet
//! buf.extend_from_slice(b"lo\r\n");
//! let Some(ServerOp::Msg(msg)) = decoder.decode(&mut buf).unwrap() else { panic!() };
//! assert_eq!(msg.subject, "greet.joe");
//! assert_eq!(&msg.payload[..], b"hello");
//! ```
#![cfg_attr(not(test), forbid(clippy::print_stdout, clippy::print_stderr))]
#![deny(missing_docs)]

pub mod conn;
pub mod decode;
pub mod encode;
pub mod error;
pub mod headers;
pub mod info;
pub mod op;
pub mod outbound;
pub mod server_err;
pub mod subject;
pub mod time;

#[doc(hidden)]
pub mod fuzzing;

pub use decode::{Decoder, DecoderLimits};
pub use error::{InputKind, ProtocolError, ValidationError};
pub use headers::{HeaderMap, StatusCode};
pub use info::{ConnectInfo, ServerInfo};
pub use op::{Msg, ServerOp, Subject};
