//! `tether js stream add|info|ls|rm`

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};
use tether::jetstream::{
    Context, DiscardPolicy, JetStreamError, RetentionPolicy, StorageType, StreamConfig, StreamInfo,
};

use super::{print_json, print_line};
use crate::error::Context as _;
use crate::{util, CliError};

/// Manage streams
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create a stream (an existing one with the same configuration is left as it is)
    Add(AddArgs),
    /// Show a stream's configuration and state
    Info(NameArgs),
    /// List the streams (those whose subjects overlap --subject)
    Ls(LsArgs),
    /// Delete a stream and every message in it
    Rm(NameArgs),
}

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Storage {
    /// On disk
    File,
    /// In memory (lost when the server stops)
    Memory,
}

/// When a stream lets a message go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Retention {
    /// Kept until a limit (--max-msgs, --max-bytes, --max-age) removes it
    Limits,
    /// Kept while a consumer that has not acked it exists
    Interest,
    /// Removed once acked by its consumer
    Workqueue,
}

/// What a full stream does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Discard {
    /// Remove the oldest messages
    Old,
    /// Refuse the new message
    New,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tether js stream add ORDERS --subjects 'orders.>'
  tether js stream add EVENTS --subjects 'events.*,audit.>' --storage memory --max-age 1h
  tether js stream add JOBS --subjects 'jobs.>' --retention workqueue --dupe-window 5m

Sizes and counts take -1 for unlimited (the default). Durations: 500ms, 30s, 5m, 1h.")]
pub(crate) struct AddArgs {
    /// The stream's name (letters, digits, '-' and '_')
    pub name: String,
    /// Subjects it captures, comma-separated (wildcards allowed) [default: its name]
    #[arg(long, value_delimiter = ',', value_name = "SUBJECT[,SUBJECT...]")]
    pub subjects: Vec<String>,
    /// Where it keeps its messages
    #[arg(long, value_enum, default_value_t = Storage::File)]
    pub storage: Storage,
    /// When a message may go
    #[arg(long, value_enum, default_value_t = Retention::Limits)]
    pub retention: Retention,
    /// Replicas in a cluster (1 to 5)
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub replicas: usize,
    /// Oldest message kept (0: forever)
    #[arg(long, value_parser = util::parse_duration, value_name = "DURATION")]
    pub max_age: Option<Duration>,
    /// Most messages kept
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_name = "N")]
    pub max_msgs: i64,
    /// Most bytes kept
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_name = "N")]
    pub max_bytes: i64,
    /// Largest message accepted, in bytes
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_name = "N")]
    pub max_msg_size: i32,
    /// How long a Nats-Msg-Id is remembered to drop duplicates [default: the server's,
    /// 2m]
    #[arg(long, value_parser = util::parse_duration, value_name = "DURATION")]
    pub dupe_window: Option<Duration>,
    /// What a full stream does with a new message
    #[arg(long, value_enum, default_value_t = Discard::Old)]
    pub discard: Discard,
    /// A description
    #[arg(long)]
    pub description: Option<String>,
    /// Print the stream's info as one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct NameArgs {
    /// The stream's name
    pub name: String,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct LsArgs {
    /// Only streams whose subjects overlap this one (wildcards allowed)
    #[arg(long, value_name = "SUBJECT")]
    pub subject: Option<String>,
    /// One JSON object per stream, one per line
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(args: Args, js: &Context) -> Result<(), CliError> {
    match args.command {
        Command::Add(a) => add(a, js).await,
        Command::Info(a) => {
            let info = js
                .stream_info(&a.name)
                .await
                .context(format_args!("stream info {}", a.name))?;
            show(&info, a.json)
        }
        Command::Ls(a) => ls(a, js).await,
        Command::Rm(a) => {
            js.delete_stream(&a.name)
                .await
                .context(format_args!("deleting stream {}", a.name))?;
            if a.json {
                print_json(&json!({ "deleted": a.name }))?;
            } else {
                print_line(&format!("deleted stream {}", a.name))?;
            }
            Ok(())
        }
    }
}

/// The configuration `add` asks for.
pub(crate) fn config(a: &AddArgs) -> StreamConfig {
    let mut c = StreamConfig::new(a.name.clone(), a.subjects.iter().cloned())
        .storage(match a.storage {
            Storage::File => StorageType::File,
            Storage::Memory => StorageType::Memory,
        })
        .retention(match a.retention {
            Retention::Limits => RetentionPolicy::Limits,
            Retention::Interest => RetentionPolicy::Interest,
            Retention::Workqueue => RetentionPolicy::WorkQueue,
        })
        .discard(match a.discard {
            Discard::Old => DiscardPolicy::Old,
            Discard::New => DiscardPolicy::New,
        })
        .replicas(a.replicas)
        .max_msgs(a.max_msgs)
        .max_bytes(a.max_bytes)
        .max_msg_size(a.max_msg_size);
    if let Some(d) = a.max_age {
        c = c.max_age(d);
    }
    if let Some(d) = a.dupe_window {
        c = c.duplicate_window(d);
    }
    if let Some(d) = &a.description {
        c = c.description(d.clone());
    }
    c
}

async fn add(a: AddArgs, js: &Context) -> Result<(), CliError> {
    for s in &a.subjects {
        tether_proto::subject::validate_subscribe_subject(s)
            .map_err(|e| CliError::new(format!("--subjects: {e}")))?;
    }
    let info = js.create_stream(config(&a)).await.map_err(|e| match e {
        // The library's advice names its own call; the CLI's is `rm`.
        JetStreamError::StreamExists { stream, error } => CliError::new(format!(
            "adding stream {stream}: it already exists with a different configuration \
             ({error}); `tether js stream rm {stream}` deletes it (and its messages), or \
             choose another name"
        )),
        e => CliError::new(format!("adding stream {}: {e}", a.name)),
    })?;
    if !a.json {
        print_line(&format!("stream {} added", info.config.name))?;
    }
    show(&info, a.json)
}

async fn ls(a: LsArgs, js: &Context) -> Result<(), CliError> {
    let mut streams = js.streams().await.context("listing streams")?;
    if let Some(subject) = &a.subject {
        let names = js
            .stream_names(Some(subject))
            .await
            .context(format_args!("listing streams for subject {subject}"))?;
        streams.retain(|s| names.contains(&s.config.name));
    }
    streams.sort_by(|x, y| x.config.name.cmp(&y.config.name));
    if a.json {
        for s in &streams {
            if !print_json(&info_json(s))? {
                break;
            }
        }
        return Ok(());
    }
    if streams.is_empty() {
        let what = a
            .subject
            .as_ref()
            .map_or_else(String::new, |s| format!(" capturing {s}"));
        print_line(&format!("no streams{what}"))?;
        return Ok(());
    }
    for s in &streams {
        let line = format!(
            "{}  [{}]  {}  {} msgs  {} B  last seq {}",
            s.config.name,
            subjects(&s.config),
            storage_name(s.config.storage),
            s.state.messages,
            s.state.bytes,
            s.state.last_seq
        );
        if !print_line(&line)? {
            break;
        }
    }
    Ok(())
}

fn show(info: &StreamInfo, json: bool) -> Result<(), CliError> {
    if json {
        print_json(&info_json(info))?;
    } else {
        print_line(&human(info))?;
    }
    Ok(())
}

fn subjects(c: &StreamConfig) -> String {
    if c.subjects.is_empty() {
        c.name.clone()
    } else {
        c.subjects.join(", ")
    }
}

fn storage_name(s: StorageType) -> &'static str {
    match s {
        StorageType::File => "file",
        StorageType::Memory => "memory",
    }
}

fn retention_name(r: RetentionPolicy) -> &'static str {
    match r {
        RetentionPolicy::Limits => "limits",
        RetentionPolicy::Interest => "interest",
        RetentionPolicy::WorkQueue => "workqueue",
    }
}

fn discard_name(d: DiscardPolicy) -> &'static str {
    match d {
        DiscardPolicy::Old => "old",
        DiscardPolicy::New => "new",
    }
}

/// `1h`, `2m`, `1m30s`, `500ms`: the largest units that say it exactly.
pub(crate) fn duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    if d.subsec_nanos() != 0 {
        return if d.subsec_nanos() % 1_000_000 == 0 && d.as_secs() == 0 {
            format!("{}ms", d.subsec_millis())
        } else {
            format!("{d:?}")
        };
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (v, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if v > 0 {
            let _ = write!(out, "{v}{unit}");
        }
    }
    out
}

fn limit(n: i64) -> String {
    if n < 0 {
        "unlimited".to_owned()
    } else {
        n.to_string()
    }
}

/// The info as a reader wants it: a few lines.
pub(crate) fn human(info: &StreamInfo) -> String {
    let c = &info.config;
    let st = &info.state;
    let mut s = format!("Stream {}", c.name);
    if !info.created.is_empty() {
        let _ = write!(s, " (created {})", info.created);
    }
    if let Some(d) = &c.description {
        let _ = write!(s, "\n  description:  {d}");
    }
    let _ = write!(s, "\n  subjects:     {}", subjects(c));
    let _ = write!(
        s,
        "\n  storage:      {}, retention {}, replicas {}, discard {}",
        storage_name(c.storage),
        retention_name(c.retention),
        c.num_replicas,
        discard_name(c.discard)
    );
    let _ = write!(
        s,
        "\n  limits:       max msgs {}, max bytes {}, max age {}, max msg size {}",
        limit(c.max_msgs),
        limit(c.max_bytes),
        if c.max_age.is_zero() {
            "unlimited".to_owned()
        } else {
            duration(c.max_age)
        },
        limit(i64::from(c.max_msg_size))
    );
    let _ = write!(s, "\n  dupe window:  {}", duration(c.duplicate_window));
    let _ = write!(
        s,
        "\n  state:        {} messages, {} bytes, first seq {}, last seq {}, {} consumer{}",
        st.messages,
        st.bytes,
        st.first_seq,
        st.last_seq,
        st.consumer_count,
        if st.consumer_count == 1 { "" } else { "s" }
    );
    // A standalone server reports a leader only: not a cluster worth a line.
    if let Some(cl) = info
        .cluster
        .as_ref()
        .filter(|cl| cl.name.is_some() || !cl.replicas.is_empty())
    {
        let _ = write!(
            s,
            "\n  cluster:      {}, leader {}",
            cl.name.as_deref().unwrap_or("-"),
            cl.leader.as_deref().unwrap_or("none")
        );
        for p in &cl.replicas {
            let _ = write!(
                s,
                "\n    replica {}: {}{}, lag {}",
                p.name,
                if p.current { "current" } else { "behind" },
                if p.offline { ", offline" } else { "" },
                p.lag
            );
        }
    }
    s
}

/// The info as one JSON object: `config` as the server takes it (durations in
/// nanoseconds), `state`, `created`, and `cluster` when in one.
pub(crate) fn info_json(info: &StreamInfo) -> Value {
    let st = &info.state;
    let mut v = json!({
        "name": info.config.name,
        "config": serde_json::to_value(&info.config).unwrap_or(Value::Null),
        "state": {
            "messages": st.messages,
            "bytes": st.bytes,
            "first_seq": st.first_seq,
            "last_seq": st.last_seq,
            "consumer_count": st.consumer_count,
        },
        "created": info.created,
    });
    if let Some(cl) = &info.cluster {
        v["cluster"] = json!({
            "name": cl.name,
            "leader": cl.leader,
            "replicas": cl.replicas.iter().map(|p| json!({
                "name": p.name,
                "current": p.current,
                "offline": p.offline,
                "lag": p.lag,
            })).collect::<Vec<_>>(),
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::duration;
    use std::time::Duration;

    #[test]
    fn durations_read_as_given() {
        assert_eq!(duration(Duration::ZERO), "0s");
        assert_eq!(duration(Duration::from_secs(120)), "2m");
        assert_eq!(duration(Duration::from_secs(3600)), "1h");
        assert_eq!(duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(duration(Duration::from_secs(3601)), "1h1s");
        assert_eq!(duration(Duration::from_millis(500)), "500ms");
        assert_eq!(duration(Duration::from_millis(1500)), "1.5s");
    }
}
