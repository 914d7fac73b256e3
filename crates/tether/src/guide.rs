//! Long-form notes on tether's semantics.
//!
//! # Buffering and loss
//! `publish` returns Ok only when the frame sits in the outbound buffer, bounded by
//! `outbound_buffer` (8 MiB and 1,000,000 messages). On a live link a full buffer makes
//! `publish().await` wait up to `block_deadline` (5 s), then fail with
//! `PublishError::BufferFull { connected: true }`; `try_publish` never waits. While
//! disconnected the overflow policy decides (Error at once, or Block up to the deadline);
//! with `buffer_while_disconnected(false)` publish fails at once with `Disconnected`.
//! Frames not yet written when a link drops are resent after the reconnect, a frame cut in
//! half is resent whole. Frames written after the last confirmed PING are reported as
//! `unconfirmed_msgs` in `Event::Disconnected`: possibly lost. A PONG confirms that the
//! server processed what was written before its PING (delivered to local subscribers,
//! forwarded to routes, or dropped for lack of interest), not that JetStream stored it or
//! that a subscriber elsewhere received it. With `resend_unconfirmed(true)` those frames
//! are retained and resent: at-least-once for core NATS, duplicates possible.
//!
//! # Liveness
//! A PING goes out after `ping_interval` (30 s) without inbound bytes; outbound traffic
//! proves nothing. A PING unanswered for `pong_timeout` (the smaller of 10 s and the ping
//! interval) or a write that makes no progress for `write_stall_timeout` (10 s) marks the
//! link stale.
//!
//! # Requests
//! One wildcard subscription `<inbox_prefix>.<nuid>.*` serves all requests. A 503 reply
//! with an empty body is `RequestError::NoResponders` at once. A timed-out request may
//! still be delivered later. When a link dies, a request whose frame was written fails at
//! once with `ConnectionLost { maybe_processed: true }`; one still buffered goes out after
//! the reconnect, bounded by its timeout.
//!
//! # Flush, drain, close
//! `flush` returns Ok only when a PONG confirms every frame buffered before it, within
//! `flush_timeout`. `drain` unsubscribes everything, reads until the PONG so nothing in
//! flight is lost, lets each stream yield what it holds, flushes publishes, and closes,
//! within `drain_timeout`, returning a [`crate::DrainReport`]. `close` flushes (bounded by
//! `flush_timeout`) and returns a [`crate::CloseReport`] of what was unsent and
//! unconfirmed. The connection lives while any `Client` clone or `Subscriber` lives;
//! dropping the last one closes it, but a runtime that shuts down cancels the driver:
//! await `close()` or `drain()` first.
//!
//! # Events
//! Events are queued only for streams taken with `Client::events` and for the callback
//! set with `ConnectOptions::event_callback` (which runs on its own task). The queue is
//! bounded (`event_queue`, 1024). Loss reports are never dropped: when the queue is full
//! their counts merge into a queued event of the same kind. A new state change replaces
//! the newest queued one and bumps its `collapsed` count; other events are dropped and one
//! `EventsLagged` says how many.
