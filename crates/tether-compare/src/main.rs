//! `tether-compare`: the same end-to-end workloads with tether and async-nats, against one
//! nats-server, in one run.
//!
//! ```text
//! cargo run --release -p tether-compare -- --rounds 5 [--msgs N] [--size S[,S...]]
//!     [--requests R] [--server URL] [--json] [--plot FILE.svg] [--conns 100,1000]
//!     [--subs 1000,10000,100000]
//!     [--workloads pub,pubsub,reqrep,reconnect,memory,conns,subs,js-pub,js-consume]
//!     [--tls [on|both]] [--js-size 128] [--js-window 256] [--js-batch 500] [--in-task]
//! ```
//!
//! Each library's run is the future the main thread blocks on, as in a program working
//! from `main`; with `--in-task` it is a task spawned on the runtime's workers, as a
//! service's handlers run, where a wake-up from the library's I/O task need not cross to
//! a thread outside the runtime. The report says which.
//!
//! `pub`, `pubsub` and `reqrep` run by default; `reconnect`, `memory`, `conns`, `subs`,
//! `js-pub` and `js-consume` only when named. With a JetStream workload the servers this
//! binary starts run with JetStream (a store in their temp dir); a `--server` given
//! must have it.
//! `--size 16,128` runs each of pub, pubsub and reqrep once per payload size, each with
//! its own ceiling or floor. `--plot` also draws the ratios as bars (see `plot.rs`); the
//! file is opened for writing before anything else, so a path that cannot be written
//! fails at once, naming the path and the OS error.
//!
//! # Workloads
//!
//! - **pub**: one connection publishes `--msgs` messages of `--size` bytes (one payload,
//!   reused) to `bench.pub`, which nobody listens on, then a marker message to a per-run
//!   subject the same connection subscribed to before the run. The run ends when that
//!   marker comes back: the server handles one connection's messages in order, so by then
//!   it has processed every publish. Metric: messages per second (higher is better).
//!
//!   Beside the libraries runs the **ceiling** (`raw.rs`): a plain blocking socket on its
//!   own thread that sends `CONNECT` (every option off) and `PING`, waits for the `PONG`,
//!   then, clock started, writes the same `PUB bench.pub <size>` frames pre-encoded in
//!   64 KiB buffers of whole frames (plus a tail, so exactly `--msgs` go), then `PING`;
//!   the clock stops at the `PONG`, which the server sends only after processing every
//!   PUB before it. No client can publish faster over one connection to this server on
//!   this machine, so tether / ceiling says how much of the possible tether gets.
//!
//!   With the server this binary started, pub and pubsub also report the nats-server's
//!   CPU time over the measured window as a share of one core (utime + stime from
//!   `/proc/PID/stat`). nats-server reads and processes each connection on one
//!   goroutine, so near 100 % the server is the limit, not the client: then the ratio
//!   says how close the other library comes to that ceiling, and no client can raise it.
//! - **pubsub**: a subscriber connection counts what a publisher connection sends (both
//!   connections of the same library, with the same options). The run ends when the
//!   subscriber has all `--msgs` messages, or when the marker (the only message with a
//!   reply subject, published last) arrives. Metric: messages received per second
//!   (higher is better). Pending limits are large enough that neither library should drop
//!   (tether `pending_limits(n + 10, 1 GiB)`, async-nats `subscription_capacity(n + 10)`);
//!   any message missing at the end is reported as dropped.
//! - **reqrep**: `--requests` sequential requests with a `--size` payload to an echo
//!   responder. Metrics: p50/p90/p99 latency in µs (lower is better).
//!
//!   Beside the libraries runs the **floor** (`raw.rs`): two plain sockets through the
//!   server, a raw responder on its own thread (subscribed to its own echo subject,
//!   answering each `MSG` by publishing its payload to the reply subject) and a raw
//!   requester (one `SUB` to its inbox, then per request a `PUB` with a reply subject in
//!   that inbox, waiting for the answer), with the same payload and as many requests.
//!   The floor has its own raw responder while the libraries share the async-nats one,
//!   so the floor also leaves out what the responder side costs: tether / floor is the
//!   cost of both library ends, tether / async-nats the cost of the requesting end.
//!
//!   Each reqrep run also counts its **wakes per request**: how often a thread of this
//!   process went to sleep and was woken again during the measured requests (voluntary
//!   context switches summed over `/proc/self/task/*/status`, the floor's responder
//!   thread left out). These are the thread hops of the request path: the raw requester
//!   sleeps once per request, in its socket read; a library also sleeps where its
//!   runtime hands the reply from the thread that read the socket to the caller's, and
//!   wherever else a request passes between threads.
//! - **reconnect** (opt-in): one nats-server of its own (started through tether-testkit
//!   even with `--server`, since it is killed). Per library, one connection with default
//!   options, then 10 times: SIGKILL the server, wait 1 s (the injected fault), restart it
//!   on the same port; the clock starts when the restart returns (the server accepts
//!   connections again) and stops when the client reports its reconnect (tether
//!   `Event::Reconnected` from `events()`, async-nats `Event::Connected` from
//!   `event_callback`, both timestamped on arrival and forwarded through a channel; the
//!   callback is the only option set on async-nats). Not quite like for like: tether's
//!   `Reconnected` comes once its subscription replay and buffered frames are written
//!   (with the one subscription of this workload, a write later), async-nats's
//!   `Connected` at the end of its handshake. Then the same with a fixed 100 ms
//!   reconnect wait on both sides, and a third series with default options again but
//!   the server down 1.0 s, 1.1 s, ... 1.9 s. The 1 s series alone can mislead: a
//!   deterministic schedule such as async-nats's (0, 2, 4, 8, ... ms, so attempts about
//!   1,022 ms and 2,046 ms into the outage) is either just in time for a server that
//!   restarts in under 20 ms or about 1 s late, so the varied series shows what an
//!   outage of unknown length costs. The order alternates (default wait: tether first;
//!   the others: async-nats first). Metrics: p50/p90/max in ms over the 10 restarts
//!   (lower is better); `--rounds` and `--warmup` do not apply.
//! - **memory** (opt-in): VmHWM growth, one child process per measurement (this binary
//!   re-invoked with the hidden `memory-child` subcommand), since both libraries in one
//!   process would share the high-water mark. The child connects with default options,
//!   publishes 4 MiB of 1 KiB messages and flushes (warm-up), reads VmHWM (the baseline)
//!   and prints `READY`; the parent kills the server (its own, as for reconnect) and
//!   writes `GO`; the child waits for the library's Disconnected event, publishes 50 MiB of
//!   1 KiB messages (one payload, reused) with the default buffer, and reads VmHWM again.
//!   tether publishes with `try_publish` (never waits); async-nats with `publish` under a
//!   50 ms timeout, a timeout counting as refused. Once async-nats has refused, its
//!   channel is full and nothing drains it while the server is down, so further
//!   publishes are polled once (`now_or_never`, still counted) and only every 1024th
//!   refusal waits the full 50 ms again (else the run would take about 40 minutes).
//!   `--rounds` rounds, alternating order; metric: VmHWM growth in MiB (lower is
//!   better), plus accepted and refused counts, and for tether its own refused counters
//!   and `BufferOverflow` events, which must account for every refused message.
//! - **conns** (opt-in): N connections from one process, for each N of `--conns`
//!   (default 100 and 1,000), one child process per library and round (this binary
//!   re-invoked with the hidden `scale-child` subcommand), so RSS and threads are one
//!   library's. The child connects N clients one after another with default options
//!   (connect time per client), then per client subscribes one subject and flushes
//!   (subscribe + flush), subscribes a second subject, publishes to it without a flush
//!   and waits for the message (subscribe → live), and reads VmRSS and Threads from
//!   `/proc/self/status`. async-nats's `flush` returns once its buffer is written to the
//!   socket, without the server's PONG, and tether's waits for the PONG: subscribe +
//!   flush is not like for like, subscribe → live is. Metrics: connect p50/p90,
//!   subscribe + flush and subscribe → live p50
//!   (ms, over the clients), RSS growth per connection over a baseline taken before the
//!   first connect (KiB), threads.
//! - **subs** (opt-in): N subscriptions on one connection, for each N of `--subs`
//!   (default 1,000, 10,000 and 100,000), one child per library and round, against a
//!   nats-server of its own (it is killed). The child connects with default options,
//!   subscribes N distinct subjects and flushes (setup), publishes to the last subject
//!   and waits for the message (setup → message), and reads VmRSS (growth per
//!   subscription over a baseline taken after the connect, in bytes). The parent checks
//!   the server's `/subsz` count, SIGKILLs the server and restarts it on the same port;
//!   resubscribe is the time from the restarted server answering a connection with INFO
//!   (polled every 250 µs from another thread) to `/subsz` counting all N again (polled
//!   every 2 ms), and first resub the time to it counting any of them (the client's
//!   reconnect delay). Before either runs, the open-file limit is compared with what the
//!   run needs and the soft limit raised up to the hard one; a hard limit too low, or a
//!   connect failing with EMFILE, is an error saying how many descriptors are needed and
//!   what to raise.
//! - **js-pub** and **js-consume** (opt-in): JetStream publish with acks and a pull
//!   consumer draining a memory stream, at `--js-size` bytes (128 by default), with
//!   `--msgs` messages; see `jetstream.rs` for exactly what each run does. js-pub keeps
//!   `--js-window` acks outstanding (256; the oldest is awaited when the window is full;
//!   both contexts are built with that bound). Its ceiling is the same work over a plain
//!   socket (`raw.rs`): on the same fresh stream, subject, payload and window, pre-encoded
//!   PUBs with reply subjects in one inbox, as many as the window allows per write (at
//!   most 64 KiB), the acks counted as they come, clock to the last ack: what that server
//!   acks on one connection, so tether / it says how much of the possible tether gets.
//!   Beside it, on a row of its own, the core pub ceiling at the same size (raw PUBs to
//!   `bench.pub`, no JetStream). js-consume drains a stream filled once per series, each client and
//!   round with a durable pull consumer of its own made with the same config (ack
//!   explicit, each message acked as it arrives, not confirmed) and the same pull shape
//!   (`--js-batch` 500, expires 30 s, idle heartbeat 10 s).
//!
//! # Fairness rules
//!
//! - One nats-server for the whole run (started through tether-testkit unless `--server`
//!   is given), and one process running both libraries on the same tokio runtime.
//! - Same subjects, same payload bytes, same message counts. Every pub run, libraries
//!   and ceiling, publishes to the same subject `bench.pub` (a subject's length is part
//!   of every frame and of the server's work per message: at 16 B, a 30-character
//!   subject instead of `bench.pub` took the ceiling from 7.4 M to 5.0 M msgs/s in one
//!   run); only the
//!   libraries' end-of-run marker has a per-run subject. The floor's echo and inbox
//!   subjects are as long as the libraries' (`cmp.echo.raw.PID` beside
//!   `cmp.echo.lib.PID`, `_INBOX.` and a 22-character id). The clock
//!   starts after the connections are up and their subscriptions are known to be
//!   registered (each connection round-trips a message through its own subscription
//!   first), and stops on a message received from the server, never on a local flush:
//!   async-nats's `flush` does not wait for the server, so it cannot end a fair run.
//! - The echo responder runs in its own process (this binary, re-invoked with the hidden
//!   `responder` subcommand) and always uses async-nats, so both libraries talk to the
//!   very same responder. Measurement starts only once it answers, and each round starts
//!   with a few unmeasured warm-up requests (async-nats sets up its reply subscription on
//!   the first request). The floor brings its own raw responder (see reqrep) and makes
//!   the same warm-up requests.
//! - Each library uses its own default options except where the workload needs
//!   otherwise (pending limits above); options that exist on both sides are set alike
//!   (echo on, no name, no auth). async-nats publishes with a pre-built `Subject` and a
//!   `Bytes` payload, both cloned per message (reference-count bumps, the cheapest way
//!   to call it); tether publishes `&str` and `&[u8]`, which it copies into its buffer.
//! - Every round runs every side (both libraries, and the ceiling or floor where the
//!   workload has one), each on fresh connections, and the order rotates by one each
//!   round: with two sides they alternate, with three (or js-pub's four) each goes
//!   first, second, third (and fourth) in turn (tether first in the first measured round). Warm-up rounds (`--warmup`,
//!   default 1) are run the same way and discarded. At least 5 measured rounds; each
//!   figure is the median over rounds, and the ratios are of the medians: tether /
//!   async-nats, and tether / ceiling (pub) or tether / floor (reqrep, every
//!   percentile). For msgs/s above 1 means tether is faster; for latency below 1 does.
//!   pubsub has no ceiling column. The scale workloads follow the same rounds and
//!   alternate the two libraries, one child process per library and round (each with
//!   the same default multi-threaded tokio runtime).
//!
//! # TLS
//!
//! `--tls` (or `--tls on`) runs pub, pubsub, reqrep and conns over TLS: against a
//! nats-server started with TLS on its client port (tether-testkit, certificates from a
//! throwaway CA made for the run, the server certificate an ECDSA P-256 one for
//! `127.0.0.1`), both libraries trusting that CA and nothing else (tether `tls_ca_file`,
//! async-nats `add_root_certificates` and `require_tls(true)`), and the echo responder
//! too. `--tls both` runs every series twice, in plaintext against a plain server and
//! over TLS against the TLS one (the two alternate round by round; conns runs its
//! plaintext rounds, then its TLS ones), and adds each library's own cost of TLS: TLS /
//! plaintext of the medians of every headline figure, measured in the same run. Over
//! TLS the ceiling writes the same pre-encoded chunks through a rustls session (its INFO
//! read in plaintext, then the TLS handshake, as nats-server expects): the most a client
//! can get through TLS to that server; the floor speaks no TLS, so reqrep over TLS has
//! none. `--tls` starts its own servers (no `--server`), and refuses the workloads
//! that run on a server of their own (reconnect, memory, subs).
//!
//! Not a test: never run it as a timed check in CI.
//!
//! # Layout
//!
//! - `main.rs`: the command line and the run of the comparison rounds.
//! - `client.rs`: the calls the workloads make, as one trait with an implementation per
//!   library (`client/tether_client.rs`, `client/async_nats_client.rs`); every workload
//!   is written once, generic over it.
//! - `throughput.rs`: the pub, pubsub and reqrep workloads, who runs them (`Side`) and
//!   what one run measured.
//! - `jetstream.rs`: the js-pub and js-consume workloads and their stream housekeeping.
//! - `raw.rs`: the ceilings (pub, js-pub) and the floor over plain sockets, with the
//!   least protocol parser they need.
//! - `responder.rs`: the echo responder process of reqrep.
//! - `reconnect.rs` and `memory.rs`: the workloads that kill their server.
//! - `faulty.rs`: their results, targets, table rows and JSON.
//! - `scale.rs`: the conns and subs workloads (the parent's side, their table and JSON);
//!   `scale/child.rs` the measuring child, `scale/nofile.rs` the open-file limit check.
//! - `report.rs`: the progress lines, the summary table and the JSON object (one entry
//!   per workload and size, keyed `pub_16b` and so on, with `ratio` = tether /
//!   async-nats and `ratio_to_raw` = tether / ceiling or floor of the headline metric).
//! - `plot.rs`: `--plot`, the ratios as an SVG bar chart.
//! - `stats.rs`: median and percentile.

mod client;
mod faulty;
mod jetstream;
mod memory;
mod plot;
mod raw;
mod reconnect;
mod report;
mod responder;
mod scale;
mod stats;
mod throughput;

use std::error::Error;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};

use crate::faulty::Faulty;
use crate::memory::{run_memory, run_memory_child};
use crate::plot::PlotFile;
use crate::reconnect::run_reconnect;
use crate::report::{describe, table, to_json};
use crate::responder::{run_responder, wait_responder, Responder};
use crate::scale::{
    add_scale_json, run_scale, run_scale_child, scale_table, ConnsTarget, ScaleKind,
};
use crate::throughput::{run_one, Params, Series, Side};

type BoxError = Box<dyn Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

/// How long a run may wait for the marker (pub) or between two messages (pubsub).
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two runs, so one run's teardown does not overlap the next.
const SETTLE: Duration = Duration::from_millis(200);
/// Subject the echo responder process listens on (suffixed with the process id).
const ECHO_SUBJECT: &str = "cmp.echo.lib";
/// Subject the floor's raw responder listens on: as long as [`ECHO_SUBJECT`].
const RAW_ECHO_SUBJECT: &str = "cmp.echo.raw";
/// Subject of every pub run, libraries and ceiling alike (nobody subscribes to it).
const PUB_SUBJECT: &str = "bench.pub";

#[derive(Debug, Parser)]
#[command(
    name = "tether-compare",
    about = "Side-by-side benchmark of tether and async-nats against one nats-server.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Measured rounds (each runs both libraries; at least 5).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(5..))]
    rounds: u32,
    /// Unmeasured rounds before the measured ones.
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// Messages per run for pub and pubsub.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    msgs: u64,
    /// Payload sizes in bytes, comma-separated (every workload runs at each).
    #[arg(long, value_delimiter = ',', default_value = "16")]
    size: Vec<usize>,
    /// Payload sizes in bytes of js-pub and js-consume, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128")]
    js_size: Vec<usize>,
    /// js-pub: publish acks outstanding at once, both libraries.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    js_window: u64,
    /// js-consume: messages per pull request, both libraries.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    js_batch: u64,
    /// Sequential requests per run for reqrep.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,
    /// Use this server instead of starting one.
    #[arg(long)]
    server: Option<String>,
    /// Run each library's runs in a task spawned on the runtime (as a service's handlers
    /// run) instead of on the main thread, which blocks on the runtime (as a program
    /// working from `main` does, the default).
    #[arg(long)]
    in_task: bool,
    /// Workloads to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "pub,pubsub,reqrep"
    )]
    workloads: Vec<Workload>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Connection counts for the conns workload.
    #[arg(long, value_delimiter = ',', default_value = "100,1000",
          value_parser = clap::value_parser!(u64).range(1..))]
    conns: Vec<u64>,
    /// Subscription counts for the subs workload.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000",
          value_parser = clap::value_parser!(u64).range(1..))]
    subs: Vec<u64>,
    /// Also draw the pub, pubsub and reqrep ratios as bars into this SVG file (opened
    /// for writing before the first round).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Run pub, pubsub, reqrep and conns over TLS, against a nats-server started with
    /// TLS (certificates from a throwaway CA both libraries trust): `on` (a bare --tls)
    /// over TLS only; `both` in plaintext and over TLS, with each library's TLS /
    /// plaintext ratios. The raw ceiling and floor stay plaintext only.
    #[arg(long, value_enum, value_name = "on|both", num_args = 0..=1,
          default_missing_value = "on")]
    tls: Option<TlsMode>,
}

/// What `--tls` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TlsMode {
    /// Over TLS only.
    On,
    /// In plaintext and over TLS, in the same run.
    Both,
}

impl Cli {
    /// Whether each series runs over TLS, in order: plaintext only without `--tls`,
    /// TLS only with `--tls on`, plaintext then TLS with `--tls both`.
    fn transports(&self) -> &'static [bool] {
        match self.tls {
            None => &[false],
            Some(TlsMode::On) => &[true],
            Some(TlsMode::Both) => &[false, true],
        }
    }

    /// Whether a workload needs JetStream on the servers this binary starts.
    fn needs_js(&self) -> bool {
        self.workloads.iter().any(|w| w.is_js())
    }

    /// Refuses what `--tls` cannot run: a given server (the run needs the CA of its
    /// own), and the workloads that start a server of their own.
    fn check_tls(&self) -> Res<()> {
        if self.tls.is_none() {
            return Ok(());
        }
        if self.server.is_some() {
            return Err(
                "--tls starts its own TLS nats-server (with a CA made for the run); \
                        drop --server"
                    .into(),
            );
        }
        let own_server: Vec<&str> = self
            .workloads
            .iter()
            .filter(|w| w.kills_server() || **w == Workload::Subs)
            .map(|w| w.name())
            .collect();
        if !own_server.is_empty() {
            return Err(format!(
                "--tls covers pub, pubsub, reqrep and conns; {} run on a plaintext server of \
                 their own: run them without --tls",
                own_server.join(", ")
            )
            .into());
        }
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Echo responder (async-nats), run in its own process by the reqrep workload.
    #[command(hide = true)]
    Responder {
        #[arg(long)]
        server: String,
        #[arg(long)]
        subject: String,
        /// Over TLS, trusting this CA.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
    },
    /// One memory measurement of one library, run in its own process by the memory
    /// workload (prints `READY`, waits for `GO` on stdin, prints one JSON line).
    #[command(hide = true)]
    MemoryChild {
        #[arg(long, value_enum)]
        client: Lib,
        #[arg(long)]
        server: String,
    },
    /// One scale measurement of one library, run in its own process by the conns and
    /// subs workloads (prints one JSON line; subs then waits for `DONE` on stdin).
    #[command(hide = true)]
    ScaleChild {
        #[arg(long, value_enum)]
        kind: ScaleKind,
        #[arg(long, value_enum)]
        client: Lib,
        #[arg(long)]
        n: u64,
        #[arg(long)]
        server: String,
        /// Over TLS, trusting this CA (conns).
        #[arg(long)]
        tls_ca: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    Pub,
    Pubsub,
    Reqrep,
    Reconnect,
    Memory,
    Conns,
    Subs,
    JsPub,
    JsConsume,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Pub => "pub",
            Workload::Pubsub => "pubsub",
            Workload::Reqrep => "reqrep",
            Workload::Reconnect => "reconnect",
            Workload::Memory => "memory",
            Workload::Conns => "conns",
            Workload::Subs => "subs",
            Workload::JsPub => "js-pub",
            Workload::JsConsume => "js-consume",
        }
    }

    /// Whether it needs JetStream (the servers this binary starts then run with it).
    fn is_js(self) -> bool {
        matches!(self, Workload::JsPub | Workload::JsConsume)
    }

    /// Whether the workload kills the server (and so runs against its own).
    fn kills_server(self) -> bool {
        matches!(self, Workload::Reconnect | Workload::Memory)
    }

    /// Whether it is a scale workload (one child process per measurement).
    fn is_scale(self) -> bool {
        matches!(self, Workload::Conns | Workload::Subs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Lib {
    Tether,
    AsyncNats,
}

impl Lib {
    fn name(self) -> &'static str {
        match self {
            Lib::Tether => "tether",
            Lib::AsyncNats => "async-nats",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Lib::Tether => "tether",
            Lib::AsyncNats => "async_nats",
        }
    }
}

/// One value per library.
#[derive(Debug, Default)]
struct ByLib<T> {
    tether: T,
    async_nats: T,
}

impl<T> ByLib<T> {
    fn of(&self, lib: Lib) -> &T {
        match lib {
            Lib::Tether => &self.tether,
            Lib::AsyncNats => &self.async_nats,
        }
    }

    fn of_mut(&mut self, lib: Lib) -> &mut T {
        match lib {
            Lib::Tether => &mut self.tether,
            Lib::AsyncNats => &mut self.async_nats,
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Some(Cmd::Responder {
            server,
            subject,
            tls_ca,
        }) => run_responder(server, subject, tls_ca.as_deref()),
        Some(Cmd::MemoryChild { client, server }) => run_memory_child(*client, server),
        Some(Cmd::ScaleChild {
            kind,
            client,
            n,
            server,
            tls_ca,
        }) => run_scale_child(*kind, *client, *n, server, tls_ca.as_deref()),
        None => run_compare(&cli),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-compare: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// One server the series run against, plaintext or TLS, and what runs there.
struct Target {
    tls: bool,
    url: String,
    params: Params,
    /// The echo responder of reqrep on this server.
    responder: Option<Responder>,
}

fn run_compare(cli: &Cli) -> Res<()> {
    cli.check_tls()?;
    // Bad output paths fail here, before any server or round.
    let plot = match &cli.plot {
        Some(path) => Some(PlotFile::create(path, &cli.workloads)?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let transports = cli.transports();
    let local = match &cli.server {
        Some(_) => None,
        None if transports.contains(&false) => Some(tether_testkit::NatsServer::start_with(
            tether_testkit::ServerConfig {
                jetstream: cli.needs_js(),
                ..tether_testkit::ServerConfig::default()
            },
        )?),
        None => None,
    };
    let url = match (&cli.server, &local) {
        (Some(u), _) => Some(u.clone()),
        (None, Some(s)) => Some(s.url()),
        (None, None) => None,
    };
    let (tls_server, tls_ca) = start_tls_server(transports, cli.needs_js())?;
    let server_version = if local.is_some() || tls_server.is_some() {
        tether_testkit::nats_server_version()
            .ok()
            .map(|(a, b, c)| format!("{a}.{b}.{c}"))
    } else {
        None
    };

    let mut workloads = cli.workloads.clone();
    workloads.dedup();
    let (scales, workloads): (Vec<Workload>, Vec<Workload>) =
        workloads.into_iter().partition(|w| w.is_scale());
    let (faults, workloads): (Vec<Workload>, Vec<Workload>) =
        workloads.into_iter().partition(|w| w.kills_server());
    let mut sizes = cli.size.clone();
    sizes.dedup();
    let servers = Servers {
        url: url.as_deref(),
        local: local.as_ref(),
        tls: tls_server.as_ref(),
        tls_ca: tls_ca.as_ref(),
    };
    let mut targets = start_targets(&rt, cli, &servers, &workloads)?;

    let started = Instant::now();
    let all = run_series(&rt, cli, &targets, &workloads, &sizes)?;
    for t in &mut targets {
        drop(t.responder.take());
    }

    let faulty = run_faults(&rt, cli, &faults)?;
    let conns_targets: Vec<ConnsTarget> = targets
        .iter()
        .map(|t| ConnsTarget {
            url: t.url.clone(),
            tls_ca: t.params.tls_ca.clone(),
        })
        .collect();
    let scale = run_scale(cli, &conns_targets, &scales)?;
    let elapsed = started.elapsed();

    // The server(s): the plaintext URL as before, or the TLS one, or both.
    let server = match targets.as_slice() {
        [one] => one.url.clone(),
        _ => targets
            .iter()
            .map(|t| format!("{} ({})", t.url, if t.tls { "TLS" } else { "plaintext" }))
            .collect::<Vec<_>>()
            .join(" and "),
    };
    if cli.json {
        let mut json = to_json(cli, &server, server_version.clone(), &all, &faulty, elapsed);
        add_scale_json(&scale, &mut json);
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!(
            "{}{}",
            table(
                cli,
                &server,
                server_version.as_deref(),
                &all,
                &faulty,
                elapsed
            ),
            scale_table(&scale)
        );
    }
    if let Some(plot) = plot {
        let path = plot.write(cli, server_version.as_deref(), &all, scale.plot_groups())?;
        if !cli.json {
            println!("plot written to {}", path.display());
        }
    }
    drop(local);
    drop(tls_server);
    Ok(())
}

/// `--tls`: a server of its own with TLS on the client port (certificates from a CA made
/// for the run; its config keeps them, so the CA file lives as long as the server), and
/// that CA for the clients to trust. Nothing when no series runs over TLS.
fn start_tls_server(
    transports: &[bool],
    jetstream: bool,
) -> Res<(Option<tether_testkit::NatsServer>, Option<Arc<Path>>)> {
    if !transports.contains(&true) {
        return Ok((None, None));
    }
    let certs = tether_testkit::TlsCerts::new()?;
    let mut cfg = tether_testkit::ServerConfig::default().with_tls(&certs);
    cfg.jetstream = jetstream;
    let server = tether_testkit::NatsServer::start_with(cfg)?;
    let ca: Arc<Path> = Arc::from(certs.ca_file());
    Ok((Some(server), Some(ca)))
}

/// The servers of a run: the plaintext one (given or started) and the TLS one.
struct Servers<'a> {
    url: Option<&'a str>,
    local: Option<&'a tether_testkit::NatsServer>,
    tls: Option<&'a tether_testkit::NatsServer>,
    tls_ca: Option<&'a Arc<Path>>,
}

/// One [`Target`] per transport of the run, each with its echo responder when reqrep
/// runs.
fn start_targets(
    rt: &tokio::runtime::Runtime,
    cli: &Cli,
    servers: &Servers<'_>,
    workloads: &[Workload],
) -> Res<Vec<Target>> {
    // Checked before any round, and only when a raw side will connect (plaintext only).
    let needs_raw = workloads
        .iter()
        .any(|&w| Side::of_workload(w).contains(&Side::Raw));
    let mut targets = Vec::new();
    for &tls in cli.transports() {
        let (url, server_pid, tls_ca) = if tls {
            let s = servers.tls.ok_or("no TLS server")?;
            (s.url(), s.pid(), servers.tls_ca.cloned())
        } else {
            let url = servers.url.ok_or("no plaintext server")?.to_owned();
            (
                url,
                servers.local.and_then(tether_testkit::NatsServer::pid),
                None,
            )
        };
        let params = Params {
            raw_addr: if needs_raw {
                // Over TLS the ceiling dials the same address and upgrades itself.
                raw::addr(&url.replacen("tls://", "nats://", 1))?
            } else {
                String::new()
            },
            url: url.clone(),
            msgs: cli.msgs,
            requests: cli.requests,
            payload: Bytes::new(),
            echo_subject: format!("{ECHO_SUBJECT}.{}", std::process::id()),
            raw_echo_subject: format!("{RAW_ECHO_SUBJECT}.{}", std::process::id()),
            server_pid,
            tls_ca,
            js_window: usize::try_from(cli.js_window)?,
            js_pull: jetstream::pull_shape(usize::try_from(cli.js_batch)?),
            in_task: cli.in_task,
        };
        let mut responder = None;
        if workloads.contains(&Workload::Reqrep) {
            let ca = params.tls_ca.as_deref();
            let mut r = Responder::spawn(&url, &params.echo_subject, ca)?;
            rt.block_on(wait_responder(&url, &params.echo_subject, &mut r, ca))?;
            responder = Some(r);
        }
        targets.push(Target {
            tls,
            url,
            params,
            responder,
        });
    }
    Ok(targets)
}

/// The pub, pubsub and reqrep series: per workload and size, one series per target.
fn run_series(
    rt: &tokio::runtime::Runtime,
    cli: &Cli,
    targets: &[Target],
    workloads: &[Workload],
    sizes: &[usize],
) -> Res<Vec<Series>> {
    let total_rounds = cli.warmup + cli.rounds;
    let mut all = Vec::new();
    for &w in workloads {
        let sizes = if w.is_js() { &cli.js_size[..] } else { sizes };
        for &size in sizes {
            let payload = Bytes::from(vec![b'x'; size]);
            // One series per target; with `--tls both` they alternate round by round, so
            // load from the rest of the machine falls on plaintext and TLS alike.
            let mut series: Vec<(Params, Series)> = targets
                .iter()
                .map(|t| {
                    let params = Params {
                        payload: payload.clone(),
                        ..t.params.clone()
                    };
                    (params, Series::new(w, size, t.tls))
                })
                .collect();
            for (params, _) in &series {
                rt.block_on(jetstream::prepare_series(w, params))?;
            }
            for round in 0..total_rounds {
                for (params, s) in &mut series {
                    run_round(rt, cli, round, params, s)?;
                }
            }
            for (params, _) in &series {
                rt.block_on(jetstream::finish_series(w, params))?;
            }
            all.extend(series.into_iter().map(|(_, s)| s));
        }
    }
    Ok(all)
}

/// Every side of `series`'s workload once, in this round's order; adds the measured
/// rounds to `series`.
fn run_round(
    rt: &tokio::runtime::Runtime,
    cli: &Cli,
    round: u32,
    params: &Params,
    series: &mut Series,
) -> Res<()> {
    let w = series.workload;
    // The order rotates by one each round, tether first in measured round 1: with two
    // sides they alternate, with three each is first, second and third in turn.
    let mut order = series.sides();
    let shift = (i64::from(round) - i64::from(cli.warmup)).rem_euclid(order.len() as i64);
    order.rotate_left(usize::try_from(shift)?);
    let measured = round >= cli.warmup;
    for side in order {
        let tag = format!(
            "{}{}.{}.{round}.{}",
            w.name(),
            if series.tls { ".tls" } else { "" },
            side.key(),
            std::process::id()
        );
        let r = run_one(rt, w, side, params, &tag)?;
        if !cli.json {
            eprintln!(
                "{:<7} {:>5} B{} {} {:<10} {}",
                w.name(),
                series.size,
                if series.tls { " tls" } else { "" },
                if measured {
                    format!("round {:>2}", round - cli.warmup + 1)
                } else {
                    "warm-up ".to_owned()
                },
                side.name(w),
                describe(&r)
            );
        }
        if measured {
            series.push(side, r);
        }
        std::thread::sleep(SETTLE);
    }
    Ok(())
}

/// The workloads that kill their server, on a server of their own: never the shared
/// one, nor a given one.
fn run_faults(rt: &tokio::runtime::Runtime, cli: &Cli, faults: &[Workload]) -> Res<Faulty> {
    let mut faulty = Faulty::default();
    if faults.is_empty() {
        return Ok(faulty);
    }
    let mut server = tether_testkit::NatsServer::start()?;
    faulty.url = server.url();
    if faults.contains(&Workload::Reconnect) {
        faulty.reconnect = run_reconnect(rt, &mut server, cli.json)?;
    }
    if faults.contains(&Workload::Memory) {
        faulty.memory = run_memory(&mut server, cli.rounds, cli.json)?;
    }
    Ok(faulty)
}

/// Waits for `fut`, failing with `what` after `STALL_TIMEOUT`.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Res<T> {
    tokio::time::timeout(STALL_TIMEOUT, fut)
        .await
        .map_err(|_| format!("timed out waiting for {what}").into())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::{Cli, TlsMode};

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("tether-compare").chain(args.iter().copied()))
            .expect("parses")
    }

    #[test]
    fn tls_modes() {
        assert_eq!(cli(&[]).tls, None);
        assert_eq!(cli(&[]).transports(), [false]);
        assert_eq!(cli(&["--tls"]).tls, Some(TlsMode::On));
        assert_eq!(cli(&["--tls", "--rounds", "7"]).transports(), [true]);
        assert_eq!(cli(&["--tls", "both"]).transports(), [false, true]);
        assert_eq!(cli(&["--tls", "on"]).tls, Some(TlsMode::On));
        assert!(Cli::try_parse_from(["tether-compare", "--tls", "off"]).is_err());
    }

    #[test]
    fn tls_refusals() {
        assert!(
            cli(&["--tls", "both", "--workloads", "pub,reqrep,conns,pubsub"])
                .check_tls()
                .is_ok()
        );
        assert!(cli(&["--workloads", "subs", "--server", "nats://x:4222"])
            .check_tls()
            .is_ok());
        let e = cli(&["--tls", "--workloads", "memory"])
            .check_tls()
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory run on a plaintext server"), "{e}");
        let e = cli(&["--tls", "--server", "tls://x:4222"])
            .check_tls()
            .unwrap_err()
            .to_string();
        assert!(e.contains("drop --server"), "{e}");
    }
}
