//! The report printed for a reader (without `--json`), and the one line an invariant
//! failure ends the run with.

use std::fmt::Write as _;

use super::report::{Migrations, Report, Setup};
use super::Fault;

/// "2 started, 2 ended, 0 unconfirmed".
fn migrations_text(m: &Migrations) -> String {
    format!(
        "{} started, {} ended, {} unconfirmed",
        m.migrating, m.migrated, m.unconfirmed_msgs
    )
}

/// Per outage: the clients' disconnects and planned switches.
fn print_migrations(r: &Report) {
    println!(
        "{:>3} {:>11} {:>19} {:>11} {:>15} {:>19}",
        "#",
        "disconnects",
        "migrating/migrated",
        "migrated in",
        "sub disconnects",
        "sub migr./migrated"
    );
    for (i, o) in r.per_outage.iter().enumerate() {
        let pair = |m: &Migrations| format!("{}/{}", m.migrating, m.migrated);
        println!(
            "{:>3} {:>11} {:>19} {:>8.0} ms {:>15} {:>19}",
            i + 1,
            o.disconnects,
            pair(&o.migrations),
            o.migrated_ms.unwrap_or(f64::NAN),
            if r.setup.two_clients {
                o.subscriber_disconnects.to_string()
            } else {
                "-".into()
            },
            if r.setup.two_clients {
                pair(&o.subscriber_migrations)
            } else {
                "-".into()
            },
        );
    }
}

/// One line saying why the run failed.
pub(super) fn invariant_failure(r: &Report) -> String {
    let failed: Vec<String> = (r.per_outage.iter().enumerate())
        .filter(|(_, o)| !o.invariant_ok)
        .map(|(i, _)| (i + 1).to_string())
        .collect();
    let mut why = format!(
        "invariant failed ({}): lost {}, lost_undetectable {}, unconfirmed {}, \
         client_dropped {}, removed {}, disconnects {}, subscriber_disconnects {}",
        r.invariant,
        r.lost,
        r.lost_undetectable,
        r.unconfirmed,
        r.client_dropped,
        r.removed,
        r.disconnects,
        r.subscriber_disconnects
    );
    if !failed.is_empty() {
        let _ = write!(why, "; outages failing it: {}", failed.join(", "));
    }
    if r.not_reconnected > 0 {
        let _ = write!(
            why,
            "; {} outage(s) not recovered in time",
            r.not_reconnected
        );
    }
    why
}

/// Prints the report for a reader: a table per outage, the totals, and notes where the
/// statistics and the events disagree.
pub(super) fn print_report(r: &Report) {
    print_title(&r.setup);
    print_outages(r);
    let show_migrations =
        r.setup.fault == Fault::Ldm || r.migrations.any() || r.subscriber_migrations.any();
    if show_migrations {
        print_migrations(r);
    }
    print_totals(r, show_migrations);
    print_notes(r);
    println!(
        "invariant ({}, per outage and in total): {}",
        r.invariant,
        if r.invariant_ok { "ok" } else { "FAILED" }
    );
}

/// "chaos: 5 outages of 1000 ms (Kill, one client) at 1000 msgs/s".
fn print_title(s: &Setup) {
    println!(
        "chaos: {} outages of {} ms ({:?}{}{}{}) at {} msgs/s",
        s.outages,
        s.outage_ms,
        s.fault,
        if s.cluster { ", cluster" } else { "" },
        if s.two_clients {
            ", two clients"
        } else {
            ", one client"
        },
        if s.resend_unconfirmed {
            ", resend unconfirmed"
        } else {
            ""
        },
        s.rate
    );
}

/// Per outage: downtime, counts and the invariant.
fn print_outages(r: &Report) {
    println!(
        "{:>3} {:>10} {:>10} {:>9} {:>9} {:>7} {:>7} {:>7} {:>11} {:>8} {:>12} {:>9}",
        "#",
        "downtime",
        "reconnect",
        "published",
        "delivered",
        "lost",
        "dups",
        "refused",
        "unconfirmed",
        "removed",
        "peak buffer",
        "invariant"
    );
    for (i, o) in r.per_outage.iter().enumerate() {
        println!(
            "{:>3} {:>7.0} ms {:>10} {:>9} {:>9} {:>7} {:>7} {:>7} {:>11} {:>8} {:>10} B {:>9}",
            i + 1,
            o.downtime_ms,
            // NaN: no Reconnected (a planned switch moved the client instead).
            if o.reconnect_ms.is_nan() {
                "-".to_owned()
            } else {
                format!("{:.0} ms", o.reconnect_ms)
            },
            o.published,
            o.delivered,
            o.lost,
            o.duplicates,
            o.refused,
            o.unconfirmed,
            o.removed,
            o.max_buffer_bytes,
            if o.invariant_ok { "ok" } else { "FAILED" }
        );
    }
}

/// The totals; the planned switches when `show_migrations`; the subscriber's outages.
fn print_totals(r: &Report, show_migrations: bool) {
    println!(
        "total: published {}, delivered {}, lost {}, refused {}, duplicates {}, unconfirmed {}, \
         client dropped {}, removed {}, peak buffer {} B, disconnects {}",
        r.published,
        r.delivered,
        r.lost,
        r.errors,
        r.duplicates,
        r.unconfirmed,
        r.client_dropped,
        r.removed,
        r.max_buffer_bytes,
        r.disconnects
    );
    if show_migrations {
        println!(
            "planned switches: publisher {}{}",
            migrations_text(&r.migrations),
            if r.setup.two_clients {
                format!(", subscriber {}", migrations_text(&r.subscriber_migrations))
            } else {
                String::new()
            }
        );
    }
    if r.setup.two_clients {
        println!(
            "subscriber outages: {} disconnects, {} messages published meanwhile, {} of them \
             lost (undetectable)",
            r.subscriber_disconnects, r.subscriber_outage_msgs, r.lost_undetectable
        );
    }
}

/// The first publish error, and where the statistics and the events disagree.
fn print_notes(r: &Report) {
    if let Some(e) = &r.first_error {
        println!("first publish error: {e}");
    }
    if r.delivered_refused > 0 {
        println!(
            "delivered although publish returned an error: {}",
            r.delivered_refused
        );
    }
    if r.stats_unconfirmed != r.unconfirmed || r.stats_removed != r.removed {
        println!(
            "note: statistics() says unconfirmed {} and removed {}; events say {} and {}",
            r.stats_unconfirmed, r.stats_removed, r.unconfirmed, r.removed
        );
    }
    if r.stats_migrations != r.migrations.migrated
        || (r.setup.two_clients
            && r.subscriber_stats_migrations != r.subscriber_migrations.migrated)
    {
        println!(
            "note: statistics() says {} and {} migrations; Migrated events say {} and {} \
             (publisher, subscriber)",
            r.stats_migrations,
            r.subscriber_stats_migrations,
            r.migrations.migrated,
            r.subscriber_migrations.migrated
        );
    }
}
