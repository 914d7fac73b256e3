//! The report and the invariant on made-up runs; the subscriber's outages and probes;
//! the plot of a made-up run.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tether::EventKind;

use super::plot::{rates, render, Band, Marker, PlotFile, Record, Sample};
use super::report::{build_report, Invariant, Migrations, Report, Tally};
use super::state::{lock, Gap, Mark, MarkKind, Shared, Tick, Window};
use super::tasks::subscriber_event;
use super::{ChaosArgs, Fault};

fn args(two_clients: bool, resend_unconfirmed: bool) -> ChaosArgs {
    ChaosArgs {
        cluster: false,
        fault: Fault::Kill,
        outages: 2,
        outage_ms: 300,
        rate: 500,
        json: true,
        resend_unconfirmed,
        two_clients,
        no_echo: false,
        subject: "chaos.test".into(),
        plot: None,
        server: None,
        tls: false,
        global: None,
    }
}

/// 30 messages in three windows of 10 (before the first fault, outage 1, outage 2),
/// all accepted; the ones in `lost` never delivered; `unconfirmed[i]` reported in
/// window i; subscriber outages `gaps` (start..end).
fn run(
    args: &ChaosArgs,
    lost: &[usize],
    unconfirmed: [u64; 3],
    gaps: &[(u64, u64)],
    client_dropped: u64,
    not_reconnected: u64,
) -> Report {
    let shared = fixture(lost, unconfirmed, gaps);
    report(args, &shared, client_dropped, not_reconnected)
}

/// The state [`run`] reports on.
fn fixture(lost: &[usize], unconfirmed: [u64; 3], gaps: &[(u64, u64)]) -> Shared {
    let shared = Shared::default();
    *lock(&shared.windows) = (0..3)
        .map(|i| Window {
            first_seq: 10 * i as u64,
            unconfirmed: unconfirmed[i],
            ..Window::default()
        })
        .collect();
    *lock(&shared.accepted) = vec![true; 30];
    *lock(&shared.delivered) = (0..30).map(|s| u32::from(!lost.contains(&s))).collect();
    *lock(&shared.gaps) = gaps
        .iter()
        .map(|&(start, end)| Gap {
            start,
            end: Some(end),
            first_probe: 0,
        })
        .collect();
    shared
}

fn report(args: &ChaosArgs, shared: &Shared, client_dropped: u64, not_reconnected: u64) -> Report {
    let mut sub_stats = tether::Statistics::default();
    sub_stats.slow_consumer_dropped = client_dropped;
    build_report(
        args,
        Duration::from_millis(300),
        shared,
        tether::Statistics::default(),
        sub_stats,
        not_reconnected,
    )
}

fn ldm_args() -> ChaosArgs {
    ChaosArgs {
        cluster: true,
        fault: Fault::Ldm,
        ..args(true, false)
    }
}

fn migrating() -> tether::Event {
    tether::Event::now(EventKind::Migrating {
        from: "nats://127.0.0.1:4222".into(),
        to: "nats://127.0.0.1:4223".into(),
        reason: tether::MigrateReason::LameDuck,
    })
}

fn migrated(unconfirmed_msgs: u64) -> tether::Event {
    tether::Event::now(EventKind::Migrated {
        from: "nats://127.0.0.1:4222".into(),
        to: "nats://127.0.0.1:4223".into(),
        unconfirmed_msgs,
        unconfirmed_bytes: 10 * unconfirmed_msgs,
    })
}

#[test]
fn migrations_and_duplicates_are_reported_per_outage() {
    let shared = fixture(&[], [0, 0, 0], &[]);
    // Outage 1: both clients move; sequence numbers 12 and 13 arrive twice.
    shared.window.store(1, Ordering::SeqCst);
    {
        let mut w = lock(&shared.windows);
        w[1].migrations.count(&migrating().kind);
        w[1].migrations.count(&migrated(2).kind);
        w[2].migrations.count(&migrating().kind);
    }
    subscriber_event(&shared, migrating());
    subscriber_event(&shared, migrated(0));
    lock(&shared.delivered)[12] = 2;
    lock(&shared.delivered)[13] = 3;
    let r = report(&ldm_args(), &shared, 0, 0);
    let o = &r.per_outage;
    assert_eq!((o[0].duplicates, o[1].duplicates, r.duplicates), (3, 0, 3));
    let one = Migrations {
        migrating: 1,
        migrated: 1,
        unconfirmed_msgs: 2,
        unconfirmed_bytes: 20,
    };
    assert_eq!(o[0].migrations, one);
    assert_eq!(
        o[1].migrations,
        Migrations {
            migrating: 1,
            ..Migrations::default()
        }
    );
    assert_eq!(r.migrations.migrating, 2);
    assert_eq!(r.migrations.migrated, 1);
    assert_eq!(
        o[0].subscriber_migrations,
        Migrations {
            migrating: 1,
            migrated: 1,
            ..Migrations::default()
        }
    );
    assert_eq!(r.subscriber_migrations.migrated, 1);
    // Nothing lost, no disconnect: lame duck mode's rule holds.
    assert_eq!((r.lost, r.disconnects, r.subscriber_disconnects), (0, 0, 0));
    assert!(r.invariant_ok, "{r:?}");
    assert_eq!(
        r.invariant,
        "lost == 0 and disconnects + subscriber_disconnects == 0"
    );
}

#[test]
fn a_planned_switch_is_no_outage() {
    let shared = fixture(&[14], [0, 1, 0], &[]);
    shared.window.store(1, Ordering::SeqCst);
    shared.delivered_upto.store(14, Ordering::SeqCst);
    // The subscriber moves: no subscriber outage opens, so a message it missed is
    // lost, not undetectable.
    subscriber_event(&shared, migrating());
    subscriber_event(&shared, migrated(0));
    assert!(!shared.subscriber_outage_open());
    assert!(lock(&shared.gaps).is_empty());
    let r = report(&ldm_args(), &shared, 0, 0);
    assert_eq!((r.lost, r.lost_undetectable), (1, 0));
    assert_eq!(r.subscriber_disconnects, 0);
    // Lame duck mode: a loss fails the run, even one reported unconfirmed...
    assert!(!r.invariant_ok);
    assert!(!r.per_outage[0].invariant_ok);
    // ... which the other faults accept.
    let r = report(&args(true, false), &shared, 0, 0);
    assert!(r.invariant_ok, "{r:?}");
    // A Disconnected is an outage, and fails lame duck mode even without a loss.
    let shared = fixture(&[], [0, 0, 0], &[]);
    shared.window.store(2, Ordering::SeqCst);
    subscriber_event(
        &shared,
        tether::Event::now(EventKind::Disconnected {
            server: "nats://127.0.0.1:4222".into(),
            reason: tether::DisconnectReason::Eof,
            unconfirmed_msgs: 0,
            unconfirmed_bytes: 0,
        }),
    );
    assert!(shared.subscriber_outage_open());
    let r = report(&ldm_args(), &shared, 0, 0);
    assert_eq!(r.per_outage[1].subscriber_disconnects, 1);
    assert!(!r.per_outage[1].invariant_ok);
    assert!(r.per_outage[0].invariant_ok);
}

fn per_outage_ok(r: &Report) -> Vec<bool> {
    r.per_outage.iter().map(|o| o.invariant_ok).collect()
}

fn holds(inv: Invariant, lost: u64, undetectable: u64, unconfirmed: u64) -> bool {
    let t = Tally {
        lost,
        undetectable,
        unconfirmed,
        client_dropped: 1,
        removed: 0,
        disconnects: 0,
    };
    inv.holds(&t)
}

#[test]
fn the_invariant_needs_a_report_for_every_loss() {
    let inv = |ldm, resend_unconfirmed| Invariant {
        ldm,
        two_clients: true,
        resend_unconfirmed,
    };
    assert!(holds(inv(false, false), 3, 0, 2));
    assert!(!holds(inv(false, false), 4, 0, 2));
    let removed = Tally {
        lost: 4,
        unconfirmed: 2,
        client_dropped: 1,
        removed: 1,
        ..Tally::default()
    };
    assert!(inv(false, false).holds(&removed));
    // With resending, nothing may be lost, whatever was unconfirmed.
    assert!(holds(inv(false, true), 0, 0, 5));
    assert!(!holds(inv(false, true), 1, 0, 5));
    // Losses during the subscriber's own outages are set apart, not the others.
    assert!(holds(inv(false, false), 5, 4, 0));
    assert!(!holds(inv(false, false), 5, 3, 0));
    assert!(holds(inv(false, false), 5, 3, 1));
    assert!(holds(inv(false, true), 4, 4, 0));
    assert!(!holds(inv(false, true), 4, 3, 1));
}

#[test]
fn lame_duck_mode_may_neither_lose_nor_disconnect() {
    for (two_clients, resend_unconfirmed) in [(false, false), (true, false), (true, true)] {
        let inv = Invariant {
            ldm: true,
            two_clients,
            resend_unconfirmed,
        };
        assert!(holds(inv, 0, 0, 5));
        // A loss fails it, reported or not, even during a subscriber outage.
        assert!(!holds(inv, 1, 0, 5));
        assert!(!holds(inv, 1, 1, 0));
        // So does a link the server closed before the client moved.
        let dropped = Tally {
            disconnects: 1,
            ..Tally::default()
        };
        assert!(!inv.holds(&dropped));
        assert!(inv.rule().starts_with("lost == 0 and disconnects"));
    }
}

#[test]
fn one_client_losses_beyond_the_reports_fail() {
    let a = args(false, false);
    // Outage 1 loses 2 and reports 2 unconfirmed: fine.
    let r = run(&a, &[14, 15], [0, 2, 0], &[], 0, 0);
    assert_eq!((r.published, r.delivered, r.lost), (30, 28, 2));
    assert!(r.invariant_ok, "{r:?}");
    // One more lost than reported.
    let r = run(&a, &[14, 15, 16], [0, 2, 0], &[], 0, 0);
    assert!(!r.invariant_ok);
    assert_eq!(per_outage_ok(&r), [false, true]);
    // Client drops count for every outage.
    let r = run(&a, &[14, 15, 16], [0, 2, 0], &[], 1, 0);
    assert!(r.invariant_ok, "{r:?}");
    // Enough in total, but reported in the other outage: fails per outage.
    let r = run(&a, &[14, 15], [0, 0, 2], &[], 0, 0);
    assert!(!r.invariant_ok);
    assert_eq!(per_outage_ok(&r), [false, true]);
    // A client that did not come back fails the run.
    let r = run(&a, &[], [0, 0, 0], &[], 0, 1);
    assert!(!r.invariant_ok);
    // --resend-unconfirmed: nothing may be lost.
    let r = run(&args(false, true), &[14], [0, 5, 0], &[], 0, 0);
    assert!(!r.invariant_ok);
    let r = run(&args(false, true), &[], [0, 5, 0], &[], 0, 0);
    assert!(r.invariant_ok, "{r:?}");
}

#[test]
fn two_clients_excuse_only_the_subscriber_outages() {
    let a = args(true, false);
    // Lost while the subscriber was away (12..18): undetectable, not a failure.
    let r = run(&a, &[14, 15, 16], [0, 0, 0], &[(12, 18)], 0, 0);
    assert_eq!(r.lost_undetectable, 3);
    assert_eq!(r.subscriber_outage_msgs, 6);
    assert_eq!(r.per_outage[0].lost_undetectable, 3);
    assert!(r.invariant_ok, "{r:?}");
    // One lost after the subscriber was back and nothing reported: fails.
    let r = run(&a, &[14, 15, 16, 19], [0, 0, 0], &[(12, 18)], 0, 0);
    assert_eq!(r.lost_undetectable, 3);
    assert!(!r.invariant_ok);
    assert_eq!(per_outage_ok(&r), [false, true]);
    // ... unless the publisher reported it unconfirmed.
    let r = run(&a, &[14, 15, 16, 19], [0, 1, 0], &[(12, 18)], 0, 0);
    assert!(r.invariant_ok, "{r:?}");
    // With resending, only the subscriber's outages may lose anything.
    let r = run(&args(true, true), &[14, 19], [0, 1, 0], &[(12, 18)], 0, 0);
    assert!(!r.invariant_ok);
    let r = run(&args(true, true), &[14], [0, 1, 0], &[(12, 18)], 0, 0);
    assert!(r.invariant_ok, "{r:?}");
}

#[test]
fn a_subscriber_outage_ends_at_its_first_probe_received() {
    let shared = Shared::default();
    shared.delivered_upto.store(7, Ordering::SeqCst);
    shared.subscriber_down();
    assert!(shared.subscriber_outage_open());
    // Probe 0 is sent, then the subscriber drops again: only later probes count.
    lock(&shared.probes).after.push(Some(9));
    shared.subscriber_down();
    lock(&shared.probes).seen.push(0);
    assert!(shared.subscriber_outage_open());
    lock(&shared.probes).after.extend([Some(12), Some(15)]);
    lock(&shared.probes).seen.extend([2, 1]);
    assert!(!shared.subscriber_outage_open());
    assert_eq!(
        *lock(&shared.gaps),
        [Gap {
            start: 7,
            end: Some(12),
            first_probe: 1
        }]
    );
    // The next outage starts where the subscriber's messages stopped.
    shared.delivered_upto.store(20, Ordering::SeqCst);
    shared.subscriber_down();
    assert_eq!(lock(&shared.gaps)[1].start, 20);
    assert!(shared.subscriber_outage_open());
}

#[test]
fn the_json_report_starts_with_what_was_run() {
    let r = run(&args(false, false), &[], [0, 0, 0], &[], 0, 0);
    let json = serde_json::to_string(&r).expect("encode the report");
    assert!(
        json.starts_with(
            "{\"fault\":\"kill\",\"cluster\":false,\"two_clients\":false,\
             \"resend_unconfirmed\":false,\"rate\":500,\"outage_ms\":300,\"outages\":2,\
             \"published\":30,"
        ),
        "{json}"
    );
}

/// A fresh directory for one test's files.
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-chaos-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// The SVG elements `<tag ...>` whose attributes include `attr`.
fn elements<'a>(svg: &'a str, tag: &str, attr: &str) -> Vec<&'a str> {
    svg.lines()
        .filter(|l| l.starts_with(&format!("<{tag} ")) && l.contains(attr))
        .collect()
}

/// The number of points of a `<polyline>` or `<polygon>`.
fn points(element: &str) -> usize {
    element
        .split("points=\"")
        .nth(1)
        .and_then(|p| p.split('"').next())
        .map_or(0, |p| p.split_whitespace().count())
}

/// A made-up run of 6 s sampled every 100 ms at 100 msgs per 100 ms: two outages, the
/// second never recovered, with the events of both clients.
fn plot_record() -> Record {
    use MarkKind::{Disconnected, Migrated, Migrating, Reconnected};
    let samples = (0..=60u64)
        .map(|i| Sample {
            t: i as f64 / 10.0,
            published: 100 * i,
            // Nothing delivered during the first outage (1 s to 2 s), then all of it.
            delivered: match i {
                0..=10 => 100 * i,
                11..=19 => 1000,
                _ => 100 * i - 3,
            },
        })
        .collect();
    let marker = |t, kind, subscriber| Marker {
        t,
        kind,
        subscriber,
    };
    Record {
        title: "tether chaos: 2 × kill of 1000 ms at 1000 msgs/s, two clients".into(),
        summary: "published 6000 · delivered 5997 · lost 3".into(),
        samples,
        outages: vec![
            Band {
                start: 1.0,
                end: Some(2.0),
                lost: 3,
                unconfirmed: 2,
                refused: 1,
                undetectable: Some(1),
            },
            Band {
                start: 4.0,
                end: None,
                lost: 0,
                unconfirmed: 0,
                refused: 0,
                undetectable: Some(0),
            },
        ],
        markers: vec![
            marker(1.01, Disconnected, false),
            marker(1.02, Disconnected, true),
            marker(1.9, Reconnected, false),
            marker(1.95, Reconnected, true),
            marker(4.1, Migrating, false),
            marker(4.3, Migrated, false),
        ],
    }
}

#[test]
fn a_plot_draws_both_lines_a_band_per_outage_the_events_and_the_counts() {
    let dir = temp_dir("plot");
    let path = dir.join("run.svg");
    let file = PlotFile::open(&path).expect("open the plot file");
    let record = plot_record();
    file.write(&render(&record).expect("render"))
        .expect("write the plot");
    let svg = std::fs::read_to_string(&path).expect("read the plot back");
    assert!(svg.starts_with("<svg "), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains(&record.title), "no title");
    for axis in ["seconds since the start", "messages per 100 ms"] {
        assert!(svg.contains(axis), "no axis title {axis:?}");
    }
    // The two lines: one point per 100 ms bucket (the legend's swatch has 2 points).
    for colour in ["#1F77B4", "#FF7F0E"] {
        let lines: Vec<usize> = elements(&svg, "polyline", &format!("stroke=\"{colour}\""))
            .into_iter()
            .map(points)
            .collect();
        assert_eq!(lines, [2, 60], "lines in {colour}");
    }
    // A shaded band per outage (the legend's swatch is darker), the second to the end.
    let bands = elements(&svg, "rect", "opacity=\"0.13\" fill=\"#D62728\"");
    assert_eq!(bands.len(), 2, "{bands:?}");
    let x = |rect: &str, attr: &str| -> i32 {
        rect.split(&format!(" {attr}=\""))
            .nth(1)
            .and_then(|v| v.split('"').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {attr} in {rect}"))
    };
    assert!(x(bands[0], "width") < x(bands[1], "width"), "{bands:?}");
    // The counts above each band.
    for label in [
        "lost 3",
        "unconfirmed 2",
        "refused 1",
        "undetectable 1",
        "lost 0",
        "not recovered",
    ] {
        assert!(svg.contains(&format!("\n{label}\n")), "no label {label:?}");
    }
    // The publisher's markers filled, the subscriber's hollow; one more of each filled
    // shape in the legend.
    let filled = |colour: &str| elements(&svg, "polygon", &format!("fill=\"{colour}\"")).len();
    assert_eq!(filled("#D62728"), 2, "Disconnected");
    assert_eq!(filled("#2CA02C"), 2, "Reconnected");
    assert_eq!(filled("#9467BD"), 2, "Migrating");
    assert_eq!(filled("#8C564B"), 2, "Migrated");
    let hollow = |colour: &str| {
        elements(
            &svg,
            "polyline",
            &format!("stroke=\"{colour}\" stroke-width=\"2\""),
        )
        .into_iter()
        .filter(|l| points(l) == 4)
        .count()
    };
    assert_eq!((hollow("#D62728"), hollow("#2CA02C")), (1, 1));
    for legend in [
        "published",
        "delivered",
        "Disconnected",
        "Reconnected",
        "Migrating",
        "Migrated",
        "hollow: subscriber",
    ] {
        assert!(
            svg.contains(&format!("\n{legend}\n")),
            "no legend {legend:?}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn plot_rates_are_per_100_ms_and_long_runs_are_merged() {
    // 10 s at 1000 msgs/s, sampled every 100 ms but one sample late by 100 ms.
    let samples: Vec<Sample> = (0..=100u64)
        .filter(|&i| i != 50)
        .map(|i| Sample {
            t: i as f64 / 10.0,
            published: 100 * i,
            delivered: 50 * i,
        })
        .collect();
    let (published, delivered) = rates(&samples);
    assert_eq!(published.len(), 99);
    assert!(published.iter().all(|&(_, v)| (v - 100.0).abs() < 1e-9));
    assert!(delivered.iter().all(|&(_, v)| (v - 50.0).abs() < 1e-9));
    assert!((published[0].0 - 0.05).abs() < 1e-9);
    // An hour: merged to at most 400 points, still per 100 ms.
    let samples: Vec<Sample> = (0..=36_000u64)
        .map(|i| Sample {
            t: i as f64 / 10.0,
            published: 100 * i,
            delivered: 100 * i,
        })
        .collect();
    let (published, _) = rates(&samples);
    assert!(
        (300..=400).contains(&published.len()),
        "{}",
        published.len()
    );
    assert!(published.iter().all(|&(_, v)| (v - 100.0).abs() < 1e-9));
    assert!(rates(&[]).0.is_empty());
}

#[test]
fn a_plot_path_that_cannot_be_written_is_refused_and_a_failed_run_leaves_no_file() {
    let dir = temp_dir("plotfile");
    let missing = dir.join("no-such-dir").join("x.svg");
    let err = PlotFile::open(&missing)
        .expect_err("a missing directory")
        .to_string();
    assert!(
        err.starts_with(&format!(
            "--plot {}: cannot write the plot there (",
            missing.display()
        )) && err.contains("os error"),
        "{err}"
    );
    let err = PlotFile::open(&dir).expect_err("a directory").to_string();
    assert!(err.contains("os error"), "{err}");
    // Created for the run, removed when the run ends without a plot.
    let fresh = dir.join("fresh.svg");
    drop(PlotFile::open(&fresh).expect("open"));
    assert!(!fresh.exists());
    // An existing file is kept as it is until the plot replaces it.
    let old = dir.join("old.svg");
    std::fs::write(&old, "an older plot, longer than the new one").expect("write");
    drop(PlotFile::open(&old).expect("open"));
    assert_eq!(
        std::fs::read_to_string(&old).expect("read"),
        "an older plot, longer than the new one"
    );
    PlotFile::open(&old)
        .expect("open")
        .write("new")
        .expect("write");
    assert_eq!(std::fs::read_to_string(&old).expect("read"), "new");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_plot_record_comes_from_the_samples_the_windows_and_the_events() {
    let shared = fixture(&[14], [0, 2, 0], &[]);
    let t0 = std::time::Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    *lock(&shared.timeline) = (0..=30u64)
        .map(|i| Tick {
            at: at(100 * i),
            published: i,
            delivered: i,
        })
        .collect();
    {
        let mut w = lock(&shared.windows);
        w[1].fault_at = Some(at(1000));
        w[1].recovered_at = Some(at(1500));
        w[2].fault_at = Some(at(2000));
    }
    lock(&shared.marks).push(Mark {
        at: at(1250),
        kind: MarkKind::Reconnected,
        subscriber: false,
    });
    let r = report(&args(false, false), &shared, 0, 0);
    let record = Record::of(&shared, &r);
    assert_eq!(record.samples.len(), 31);
    assert!((record.samples[30].t - 3.0).abs() < 1e-9);
    let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
    let b = record.outages[0];
    assert!(
        near(b.start, 1.0) && b.end.is_some_and(|e| near(e, 1.5)),
        "{b:?}"
    );
    assert_eq!(
        (b.lost, b.unconfirmed, b.refused, b.undetectable),
        (1, 2, 0, None)
    );
    assert!(record.outages[1].end.is_none());
    assert_eq!(record.markers.len(), 1);
    assert!(near(record.markers[0].t, 1.25));
    assert!(record
        .title
        .starts_with("tether chaos: 2 × kill of 300 ms at 500 msgs/s"));
    assert!(record.summary.contains("lost 1"), "{}", record.summary);
}
