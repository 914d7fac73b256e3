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
//! `unconfirmed_msgs` in `EventKind::Disconnected`: possibly lost. A PONG confirms that the
//! server processed what was written before its PING (delivered to local subscribers,
//! forwarded to routes, or dropped for lack of interest), not that JetStream stored it or
//! that a subscriber elsewhere received it. While unconfirmed frames exist a confirm PING
//! goes out every `confirm_interval` (20 ms) or 1 MiB written, whichever comes first, so
//! the report covers at most the last `confirm_interval` plus one round trip of traffic
//! before the loss was seen: at 1,000 msg/s on a local network, some 25 messages when a
//! killed server resets the link, not up to a second's worth. A link that goes silent
//! (half-open, black-holed) is found after `pong_timeout`, and what was written meanwhile
//! is reported as well. With `resend_unconfirmed(true)` those frames are retained and resent:
//! at-least-once for core NATS, duplicates possible.
//!
//! A successful `flush` says that everything written *on the current link* before it was
//! processed; it says nothing about frames lost with an earlier link. Code that publishes
//! N messages, flushes and assumes all N delivered is wrong across a disconnect: the
//! `Disconnected` event (and `Statistics::unconfirmed_reported_msgs`) is where such a loss
//! is reported, or use `resend_unconfirmed(true)`.
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
//! the reconnect, bounded by its timeout. The timeout bounds the request's whole life,
//! the wait for buffer room included. A request that ends without its reply (a timeout,
//! or a caller that drops the future, through `tokio::time::timeout` or `select!`) leaves
//! nothing behind: a frame still waiting in the buffer is removed, and one already in the
//! chunk being written may still go out on that link but is never resent after a
//! reconnect. A request the caller was told failed before it was written is never sent. `Error::retry_method` answers
//! `RetryIfIdempotent` for requests that may already have been processed.
//!
//! # Flush, drain, close
//! `flush` returns Ok only when a PONG confirms every frame buffered before it, within
//! `flush_timeout`. `drain` unsubscribes everything, reads until the PONG so nothing in
//! flight is lost, lets each stream yield what it holds, flushes publishes, and closes,
//! within `drain_timeout`, returning a [`crate::DrainReport`]. `close` flushes (bounded by
//! `flush_timeout`) and returns a [`crate::CloseReport`] of what was unsent and
//! unconfirmed. The connection lives while any `Client` clone or `Subscriber` lives;
//! dropping the last one closes it, but a runtime that shuts down cancels the driver:
//! await `close()` or `drain()` first. A drain that reaches `drain_timeout` closes at once
//! (no further flush) with `ClosedReason::DrainTimeout`; `drain()` on a lazy client that never connected returns
//! at once. If the connection's task fails (a panic in a user callback such as
//! `reconnect_delay`), the client closes with `ClosedReason::DriverFailed`, every waiter
//! fails at once and the event stream ends with `Closed`: never a client that accepts
//! publishes nobody sends.
//!
//! # Events
//! Events are queued only for streams taken with `Client::events` and for the callback
//! set with `ConnectOptions::event_callback`. Each stream, and the callback, starts with
//! `EventKind::CurrentState` (the state at that moment, and the server of the live link),
//! so a late subscriber still learns where the client stands; a stream taken after the
//! client closed yields `CurrentState { state: Closed, .. }` and ends. The callback runs on
//! a runtime task, never an OS thread per client: the connection never waits for it, and
//! it must not block for long (hand slow work to `spawn_blocking` or a channel). Each
//! stream and the callback have a queue of their own, bounded (`event_queue`, 1024). Loss
//! reports are never dropped: when the queue is full their counts merge into a queued
//! event of the same kind. A new state change replaces the newest queued one and bumps its
//! `collapsed` count; other events are dropped and one `EventsLagged` says how many.
//!
//! # Reconnection and the server pool
//! The pool holds the URLs given and the servers announced in INFO `connect_urls` (an
//! INFO without the field prunes nothing; the connected server is never pruned; a
//! discovered server inherits the scheme and credentials of the URL it was learnt
//! through). Each server has a due time and a count of consecutive failures; the next
//! attempt goes to the server due earliest, fewer failures first, the server whose link
//! just dropped last, so after a node dies the first attempt goes to another node at once.
//! The backoff per server: the first retry at once, then exponential from 50 ms with full
//! jitter, capped at 500 ms during the first 10 s of an outage and at `reconnect_wait`
//! (2 s) after; `reconnect_delay` replaces it. A server leaves the pool after
//! `max_reconnects` consecutive failures (unlimited by default); `Authorization
//! Violation` twice in a row (any other failure in between starts the count over), at
//! least `reconnect_wait` apart with the same credentials, removes it under
//! `AuthFailurePolicy::RemoveServer` (so does a revoked user, `User Authentication
//! Revoked`, and an expired account: after `Account Authentication Expired` the server
//! refuses every reconnect with `Authorization Violation`, which only the operator can
//! fix; use `KeepRetrying` to wait for that instead). An expired user JWT is not: its
//! `exp` is known, and the credentials are read again at every attempt (semantics 13,
//! below). `ConnectOptions::fixed_reconnect_wait` gives the
//! same wait before every retry instead of the backoff. With the `Retry` connect policy the
//! state goes `Connecting` → `Reconnecting` while the first attempts fail, each announced
//! by `Reconnecting { attempt }`; the first success emits `Connected`. An empty pool closes the client with the reason.
//! On reconnect the subscriptions are replayed (with remaining auto-unsubscribe counts)
//! ahead of the buffered frames, so a subscription never misses a buffered message of its
//! own client; then `EventKind::Reconnected { downtime, attempts }`, once the replay and
//! the buffered frames are written. The replay is encoded and written in chunks of about
//! 64 KiB (`tether_proto::conn::REPLAY_CHUNK_BYTES`, some 1,000 to 3,000 SUBs), and the
//! client's lock is released between chunks: a publish, subscribe or unsubscribe made
//! meanwhile waits for one chunk at most, never for the whole replay (about 30 ms for
//! 100,000 subscriptions). What it does is ordered after the replay and sent once:
//! - a new subscription is not part of the replay; its SUB follows it (after the buffered
//!   frames), like any frame;
//! - unsubscribing one the replay has not reached yet takes it out of the replay, and no
//!   UNSUB is sent (the new server never had it); with a count, its replayed SUB carries
//!   the remaining count instead. Unsubscribing one already replayed sends its UNSUB after
//!   the replay;
//! - a publish goes after the replay, so a replayed subscription of this client gets it
//!   (once).
//!
//! Every PING of the new link follows the replay, so its first PONG confirms all of it
//! (a `maximum subscriptions exceeded` before that ends the newest SUB written). A
//! planned switch does not leave a link whose replay is still being written.
//! `Statistics::last_replay` gives the last replay's subscriptions, bytes and duration
//! (from the link's adoption to its last chunk written).
//!
//! # Lame duck mode and planned switches
//! When the server announces lame duck mode (INFO `ldm`), tether sends a confirm PING,
//! emits `EventKind::LameDuck`, waits a random 0..`ldm_jitter` (500 ms, inside even a 1 s
//! `lame_duck_grace_period`) so a fleet does not move at once, then switches
//! make-before-break:
//! - a handshake with another server on a core of its own. A target that fails is followed
//!   by the next, with the pool's backoff, until one succeeds or the old link closes (then
//!   the usual reconnect takes over). A target whose INFO shows the `server_id` of the
//!   node being left (the same node under another address) is abandoned for the next.
//! - `EventKind::Migrating { from, to, reason }`; the subscription replay on the new link,
//!   and publishing moved to it at a frame boundary.
//! - the old link keeps delivering until the cluster knows the new interest: a probe
//!   subject (`<inbox_prefix>.<nuid>.probe`) subscribed on the new link after the replayed
//!   subscriptions is published on the old link (every millisecond, and at once when the
//!   new server confirms the subscriptions) until it arrives on the new one. A route
//!   carries one account's interest in order, so the old node then knows every new
//!   subscription. One more probe must then make the trip, and the cut below starts no
//!   sooner than 20 ms after the first probe came back: the margin for publishers on a
//!   third node, whose routes learn the interest at about the same time (on a busy
//!   machine, a few scheduling slices later).
//! - the two streams are then cut at one point, so that nothing arrives twice: a marker
//!   subject (`<inbox_prefix>.<nuid>.cut`) is subscribed on both links at the switch, and
//!   the new link's deliveries are held from then on. Markers published on the new link
//!   (numbered, every millisecond) reach the old link through the old node; the first to
//!   arrive there, k, is the cut. Held deliveries that the new node sent before marker k
//!   are dropped when the old link delivered a copy (same subscription, subject, reply,
//!   size and payload): the new node processed them before k, so they reached the old
//!   node, and the old link, before k too. A message from a third node travels two routes
//!   that need not keep that order, so one whose old-link copy has not come by the cut is
//!   delivered from the new link. The rest are delivered, and the old link's deliveries
//!   after k are dropped, the new link's copies being delivered instead. Queue
//!   subscriptions are never held or dropped (a queue group gets one copy). Then the old
//!   link gets UNSUB for everything and a last PING, and closes on its PONG.
//! - `ldm_overlap` (1 s, counted from when the new server confirms the subscriptions)
//!   bounds the wait, for servers not in one cluster or subjects the user may not use;
//!   at the bound, everything held is delivered (duplicates possible), and a warning is
//!   logged.
//! - `EventKind::Migrated` carries the old link's unconfirmed counts (zero when that PONG
//!   came); `Statistics::migrations` counts switches ended.
//!
//! A switch delays the new link's deliveries by about 20 ms (the margin and the cut). The
//! cut is exact for messages that reach the new node first; a message the old node
//! processed within one route round trip before the cut can still arrive on both links (a
//! rolling restart of a 3-node cluster at 1 msg/ms sees 0 duplicates on most switches, 1
//! on a few). Two messages with the same subject, reply and payload within one switch's
//! cut count as copies of each other: if one came only on the old link, the other's held
//! copy can be dropped for it. A request written on
//! the old link that dies before its last PONG fails with
//! `ConnectionLost { maybe_processed: true }`. The status stays `Connected` throughout.
//! The margin and the cut assume the nodes are about equally far apart: a publisher on a
//! node much farther from the old node than from the new one (another zone, say) can lose
//! a message that reaches the old node after the cut. Interest in an account's imports
//! travels with the exporting account, perhaps on another route connection than the probe,
//! so it is not covered either. Probes and markers are ordinary messages: a subscriber of
//! `>` or `_INBOX.>` in the account sees them (the client's own subscriptions are kept
//! from them while the switch lasts).
//!
//! A server in lame duck mode is a switch target only when no other server is left: its
//! mark ends when a peer lists its URL in `connect_urls` again (peers stop announcing a
//! lame-duck node and announce it again when it rejoins), when a handshake with it
//! completes, or after `server_pool::LAME_DUCK_MARK_MAX` (30 s). A node still in lame duck
//! mode refuses new connections, and one reached under another address shows its
//! `server_id`, so trying a marked server as a last resort costs a refused attempt at the
//! pool's backoff. With no server that answers, the client stays on the old link until
//! the server closes it, then reconnects as usual (the lame-duck server goes after every
//! other server due at once). A link the server closes while the client still
//! waits out its jitter reconnects at once, its subscriptions replayed before anything
//! else. `Client::force_reconnect` and `Client::set_server_pool` (when the current server
//! leaves the pool) use the same switch.
//!
//! # Credentials and JWT refresh
//! One auth method per client: `user_and_password`, `token`, `nkey` (a user seed signs
//! the server's nonce) or `credentials_file` (a `.creds` file with a user JWT and its
//! seed), or credentials in the URL; two at once are rejected when the options are built.
//! A creds file is read again at every connect attempt, so rotating the file is enough;
//! a file that cannot be read or parsed fails that attempt with an error naming it.
//! When a user JWT with an `exp` comes within `jwt_refresh_lead` of expiry (default
//! min(max(30 s, 10 % of its lifetime), 50 % of it)), the file is read again: if the
//! fresh JWT expires later (or never), the client moves to a new link with it by the
//! planned switch above, to another server or the same one (`EventKind::Migrated`; no
//! disconnect). Otherwise `EventKind::CredentialsExpiring` says why, the server ends the link
//! at expiry (`User Authentication Expired`), and the first reconnect attempt goes out at
//! once with the file read again. Until then the file is read again every second, so a
//! file rotated after the warning still moves the client before the expiry. Auth strikes
//! count only while the credentials stay the same: a rotated file starts over.
//! nats-server refuses a JWT that has already expired with plain `Authorization
//! Violation`; such refusals are never strikes (an expired JWT would otherwise empty the
//! pool and close the client for good): the client retries at its backoff, reading the
//! file at every attempt, and `EventKind::CredentialsExpired` says so once. Credentials
//! are read on the blocking pool, never under the connection's lock.
//!
//! # TLS
//! Through rustls (with the `ring` provider; no OpenSSL), inside the transport seam
//! below. A link uses TLS for a `tls://` URL or when any TLS option is set
//! (`tls_required`, `tls_ca_file`, `tls_client_cert`, `tls_first`); it upgrades after the
//! server's plaintext INFO, before CONNECT, and an INFO that offers no TLS fails the
//! attempt (`HandshakeError::TlsUnavailable`) before anything is sent. A `nats://` URL
//! without TLS options is plaintext unless the INFO says `tls_required`: then it upgrades
//! too, trusting the platform's root certificates, so credentials never go out in clear
//! to a server that expects TLS. `tls_first` runs the TLS handshake before INFO, for
//! servers configured with `handshake_first`; a client without it against such a server
//! fails within connection_timeout with an error that names `tls_first`.
//!
//! The name checked is the URL's host; a server discovered by IP address (INFO's
//! `connect_urls` list nodes by address) is checked against the name of the URL it was
//! learnt through, and inherits its scheme, so a node discovered from a `tls://` URL is
//! never dialled in plaintext. A failed check is an `AttemptCause::Tls` with a
//! `TlsError` that says which: unknown CA, name mismatch, expired, a client certificate
//! the server requires or refused, a peer that does not speak TLS. Bad files (a CA that
//! is not PEM, a key that does not belong to its certificate) are `OptionsError`s naming
//! the file when the client is created. Reconnect delays to TLS servers get a uniform
//! `0..reconnect_jitter_tls` (1 s) on top of the backoff, all but the first attempt.
//!
//! Secrets never leak: no password, token, seed, JWT or nonce signature appears in a log
//! line, an event, an error or a Debug output (URL errors mask the URL's credentials).
//!
//! # Where the code is
//! For contributors; none of these paths is public API.
//! - **tether-proto** (no I/O, no clock: every handler takes `now`): `decode.rs` /
//!   `encode.rs` the wire format; `outbound.rs` the one bounded buffer publishes are
//!   encoded into; `server_err.rs` every `-ERR` parsed once; `conn/` the session state
//!   machine: `handshake.rs` (`Handshake`, run apart from the session, then
//!   `Connection::adopt_link`), `mod.rs` (`Connection`: read, transmit, written, timeout),
//!   `ping.rs` (PING/PONG, confirmation, flushes), `subs.rs` (subscriptions and their
//!   replay), `retire.rs` (the retiring link of a planned switch), `timer.rs`.
//! - **tether**: `client.rs` the handle; `connection/` the task: `transport.rs` (the byte
//!   stream, and dialing), `driver.rs` (`establish`, `adopt`, the core's events),
//!   `link.rs` (`LinkDriver`, one link's loop), `switch.rs` (the planned switch's
//!   pieces), `reconnect.rs` (the loop between links), `timer.rs`; and beside them
//!   `server_pool.rs` (the pool and its pure reconnect policy, `record_attempt`),
//!   `request.rs`, `buffer_watch.rs`, `credentials.rs`, `events.rs`.
//!
//! The transport seam: every byte of a link goes through its `Transport` (TCP, or TLS
//! over it): the driver's reads and writes (`read`, `write`), a caller's direct write of a
//! request, a SUB or UNSUB, or a flush's PING (`try_write`, under the connection lock, once, what it
//! does not take left in flight for the driver), the handshake's frames (`write_all`), and the retiring link of
//! a planned switch, which keeps the old link's `Transport` for the overlap. TLS puts
//! rustls's sans-IO `ClientConnection` behind the same three operations (records read
//! into it and plaintext read out; plaintext written into it and records written out,
//! under a short lock of its own; records the socket did not take are sent by the next
//! read, which also waits for the socket to take them), so neither the driver nor the
//! core changes. `tls.rs` builds the rustls configuration and classifies its errors.
//!
//! A publish: `Client::publish` → `publish_now` takes the lock → `buffer_publish` →
//! `Connection::publish` encodes the frame into the outbound buffer → `Shared::wake_driver`.
//! The driver's `LinkDriver::wait` wakes; `drive_transmit` takes `Connection::poll_transmit`
//! (on a new link first the subscription replay, one bounded chunk per call, then
//! everything buffered, as one chunk; runs of equal PUB frames are counted, not listed); `Transport::write` writes it and
//! `Connection::handle_written` counts it written (the buffer releases a PUB once written,
//! or, with `resend_unconfirmed`, once confirmed); a PING later, its PONG confirms it
//! (`ping.rs`), and until then it counts as unconfirmed. A request, a subscribe, an
//! unsubscribe and a flush also try `link::try_direct_write` from the caller's thread when the driver is idle (a request
//! only when no other is in flight); the driver
//! is woken only if the write left it something to do (a partial write, an event other
//! than freed space, a timer earlier than the one it sleeps until).
//!
//! A reconnect: `Transport::read` returns 0 → `Connection::handle_link_lost` →
//! `ConnEvent::Disconnected` → `driver::handle_event` / `on_disconnected` (the event, and
//! `request::on_disconnected`) → `LinkDriver::link_down` returns `LinkEnd::Down` to
//! `reconnect::run`, which picks the next due server (`pick`, `wait_until_due`), runs
//! `driver::establish` (`transport::dial`, then the `Handshake`), and `adopt_attempt` /
//! `driver::adopt` hands it to `Connection::adopt_link` (the replay cursor starts) and
//! `link::run_link` drives the new link: `Connection::poll_transmit` hands out the replay
//! one chunk per loop turn, then the buffered frames; the core's `ConnEvent::Replayed`
//! then lets `driver::handle_event` emit the `Reconnected` that `on_connected` prepared. A failed attempt goes to `on_failed` and
//! `ServerPool::record_attempt`, whose `Verdict` says when the server is due again and
//! whether it leaves the pool.
//!
//! # Choices where the protocol is silent
//! - A header block that cannot be parsed does not close the connection (any publisher can
//!   send one); the message is delivered with `headers: None` and
//!   `malformed_headers: true`, and counted in `Statistics::malformed_headers`.
//! - Requests, SUBs, UNSUBs and a flush's PING are written from the caller's thread when
//!   the driver is idle (as nats.c does for requests): no thread hop before they are on
//!   the wire, so subscribe + flush waits for the PONG alone. Publishes never are, so a
//!   fast publisher never pays a syscall per message; nor is a request while others are
//!   in flight (a JetStream publish window): the driver writes those together.
//! - The connection's task picks among ready reads, writes and timers at random, so a
//!   flood of deliveries never starves its writes (PONGs, publishes, flushes).
//! - A server that sends more than 4096 PINGs whose PONGs it does not read is treated as
//!   a stale link (the PONGs would otherwise pile up in memory).
//! - After a closing `-ERR` the writer stops at once, even mid-chunk; what the chunk held
//!   is resent on the next link, except a partly written publish, which is the likely
//!   cause when the error names our bytes (`Maximum Payload Violation`) and is reported in
//!   `FramesRemoved`.
//! - A lazy client starts a connect attempt at every use while `Idle`; a failed attempt
//!   fails the requests and flushes waiting for it and removes those requests' frames.
//! - `request_retry_after_reconnect(true)` retains written request frames until a PONG
//!   confirms them and resends them after a reconnect: a responder may see a request
//!   twice.
//! - Events emitted before `Client::events` is called are not queued for that stream (its
//!   first item, `CurrentState`, says where things stand); set
//!   `ConnectOptions::event_callback` to see every event from the first `Connected`.
