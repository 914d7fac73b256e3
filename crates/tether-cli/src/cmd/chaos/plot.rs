//! `--plot FILE.svg`: the run as a picture. Published and delivered messages per 100 ms
//! are two lines over time; each outage is a shaded band from its fault until the fault
//! has ended and the clients have recovered (`Window::recovered_at`), labelled on top
//! with its lost, unconfirmed and refused counts; the clients'
//! `Disconnected`, `Reconnected`, `Migrating` and `Migrated` events are markers in a row
//! above the lines (hollow for the subscriber's client under `--two-clients`).
//!
//! The file is opened before the run ([`PlotFile::open`]), so a path that cannot be
//! written fails before anything starts; the SVG is drawn in memory from a [`Record`] of
//! the run and written once the report is in.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::{Report, Setup};
use super::state::{lock, MarkKind, Shared};
use crate::error::Context as _;
use crate::CliError;

/// The picture's size in pixels: readable at the width of a README on GitHub.
const SIZE: (u32, u32) = (1000, 500);
/// The title, the summary line and the legend above the chart.
const HEAD_HEIGHT: u32 = 86;
/// The chart's margins and the x axis's label area; with [`HEAD_HEIGHT`], what leaves
/// the plotting area's height.
const CHART_MARGIN_TOP: u32 = 6;
const CHART_MARGIN_BOTTOM: u32 = 8;
const X_LABEL_AREA: u32 = 44;
/// Room kept free above the lines for the outage labels and the marker rows.
const TOP_ROOM: u32 = 118;
/// The marker rows, in pixels below the top of the plotting area.
const PUBLISHER_ROW: i32 = 84;
const SUBSCRIBER_ROW: i32 = 101;
/// An outage label's first line and line height, in pixels (up to five lines fit above
/// the marker rows).
const LABEL_TOP: i32 = 5;
const LABEL_LINE: i32 = 14;
/// The most points a line gets: a longer run merges neighbouring 100 ms buckets into
/// their mean, so the axis still reads "per 100 ms".
const MAX_POINTS: usize = 400;

const FONT: &str = "sans-serif";
const PUBLISHED: RGBColor = RGBColor(0x1F, 0x77, 0xB4);
const DELIVERED: RGBColor = RGBColor(0xFF, 0x7F, 0x0E);
const OUTAGE: RGBColor = RGBColor(0xD6, 0x27, 0x28);
/// The outage band's opacity.
const OUTAGE_ALPHA: f64 = 0.13;
const TEXT: RGBColor = RGBColor(0x33, 0x33, 0x33);
const MUTED: RGBColor = RGBColor(0x66, 0x66, 0x66);

/// The plot's file: opened (created if missing, an existing file left as it is) before
/// the run, written after it. A file this run created is removed again if no plot is
/// written into it.
#[derive(Debug)]
pub(super) struct PlotFile {
    path: PathBuf,
    file: File,
    created: bool,
    written: bool,
}

impl PlotFile {
    /// Opens `path` for writing, or says why it cannot be written (before the run).
    pub(super) fn open(path: &Path) -> Result<Self, CliError> {
        let created = !path.exists();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| {
                CliError::new(format!(
                    "--plot {}: cannot write the plot there ({e}); give a file in a \
                     directory that exists and that you can write to",
                    path.display()
                ))
            })?;
        Ok(Self {
            path: path.to_owned(),
            file,
            created,
            written: false,
        })
    }

    /// The path given to `--plot`.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's content with `svg`.
    pub(super) fn write(mut self, svg: &str) -> Result<(), CliError> {
        let what = format!("writing the plot to {}", self.path.display());
        self.file.set_len(0).context(&what)?;
        self.file.write_all(svg.as_bytes()).context(&what)?;
        self.written = true;
        Ok(())
    }
}

impl Drop for PlotFile {
    fn drop(&mut self) {
        if self.created && !self.written {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The counts at one moment of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Sample {
    /// Seconds since the run's first sample.
    pub(super) t: f64,
    /// Publishes accepted so far.
    pub(super) published: u64,
    /// Deliveries so far.
    pub(super) delivered: u64,
}

/// One outage: from its fault until it has ended and the clients have recovered, and
/// what it cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Band {
    pub(super) start: f64,
    /// `None`: the clients did not recover in time (the band runs to the end).
    pub(super) end: Option<f64>,
    pub(super) lost: u64,
    pub(super) unconfirmed: u64,
    pub(super) refused: u64,
    /// `--two-clients`: of the lost, those published while the subscriber was away.
    pub(super) undetectable: Option<u64>,
}

/// A client event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Marker {
    pub(super) t: f64,
    pub(super) kind: MarkKind,
    /// `--two-clients`: the subscriber's client.
    pub(super) subscriber: bool,
}

/// What the plot draws, times in seconds since the run's first sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Record {
    pub(super) title: String,
    /// The totals, in one line under the title.
    pub(super) summary: String,
    /// Counts so far, in time order (every 100 ms).
    pub(super) samples: Vec<Sample>,
    pub(super) outages: Vec<Band>,
    pub(super) markers: Vec<Marker>,
}

impl Record {
    /// The record of a finished run: what the tasks sampled and noted, and the report's
    /// counts per outage.
    pub(super) fn of(shared: &Shared, report: &Report) -> Self {
        let ticks = lock(&shared.timeline).clone();
        let windows = lock(&shared.windows).clone();
        let marks = lock(&shared.marks).clone();
        let origin = (ticks.first().map(|t| t.at))
            .or_else(|| windows.iter().find_map(|w| w.fault_at))
            .unwrap_or_else(Instant::now);
        let secs = |at: Instant| at.saturating_duration_since(origin).as_secs_f64();
        // Window 0 is the warm-up; window i is outage i.
        let outages = (windows.iter().skip(1).zip(&report.per_outage))
            .filter_map(|(w, o)| {
                Some(Band {
                    start: secs(w.fault_at?),
                    end: w.recovered_at.map(secs),
                    lost: o.lost,
                    unconfirmed: o.unconfirmed,
                    refused: o.refused,
                    undetectable: report.setup.two_clients.then_some(o.lost_undetectable),
                })
            })
            .collect();
        Self {
            title: title(&report.setup),
            summary: summary(report),
            samples: ticks
                .iter()
                .map(|t| Sample {
                    t: secs(t.at),
                    published: t.published,
                    delivered: t.delivered,
                })
                .collect(),
            outages,
            markers: marks
                .iter()
                .map(|m| Marker {
                    t: secs(m.at),
                    kind: m.kind,
                    subscriber: m.subscriber,
                })
                .collect(),
        }
    }

    /// The last moment the plot shows (at least 0.1 s).
    fn end(&self) -> f64 {
        let samples = self.samples.iter().map(|s| s.t);
        let bands = self.outages.iter().map(|b| b.end.unwrap_or(b.start));
        let markers = self.markers.iter().map(|m| m.t);
        samples.chain(bands).chain(markers).fold(0.1, f64::max)
    }
}

/// "tether chaos: 5 × kill of 1000 ms at 1000 msgs/s, one client".
fn title(s: &Setup) -> String {
    let mut t = format!(
        "tether chaos: {} × {} of {} ms at {} msgs/s, {}",
        s.outages,
        format!("{:?}", s.fault).to_lowercase(),
        s.outage_ms,
        s.rate,
        if s.two_clients {
            "two clients"
        } else {
            "one client"
        }
    );
    if s.cluster {
        t.push_str(", 3-node cluster");
    }
    if s.resend_unconfirmed {
        t.push_str(", resend unconfirmed");
    }
    t
}

/// The totals and the verdict, in one line.
fn summary(r: &Report) -> String {
    let mut s = format!(
        "published {} · delivered {} · lost {} · unconfirmed {} · refused {} · duplicates {}",
        r.published, r.delivered, r.lost, r.unconfirmed, r.errors, r.duplicates
    );
    if r.setup.two_clients {
        let _ = write!(s, " · undetectable {}", r.lost_undetectable);
    }
    s.push_str(if r.invariant_ok {
        " · invariant ok"
    } else {
        " · invariant FAILED"
    });
    s
}

/// A line's points: (seconds, messages per 100 ms).
type Line = Vec<(f64, f64)>;

/// The two lines: (middle of the bucket, messages per 100 ms) for published and for
/// delivered. Buckets are the intervals between samples, merged when there are more than
/// [`MAX_POINTS`]; a count is scaled to 100 ms by the bucket's real length.
pub(super) fn rates(samples: &[Sample]) -> (Line, Line) {
    let buckets = samples.len().saturating_sub(1);
    let step = buckets.div_ceil(MAX_POINTS).max(1);
    let mut published = Vec::new();
    let mut delivered = Vec::new();
    for i in (0..buckets).step_by(step) {
        let (a, b) = (samples[i], samples[(i + step).min(buckets)]);
        let dt = b.t - a.t;
        if dt <= 0.0 {
            continue;
        }
        let per_100ms = |from: u64, to: u64| to.saturating_sub(from) as f64 * 0.1 / dt;
        let mid = f64::midpoint(a.t, b.t);
        published.push((mid, per_100ms(a.published, b.published)));
        delivered.push((mid, per_100ms(a.delivered, b.delivered)));
    }
    (published, delivered)
}

/// The record drawn as an SVG document.
pub(super) fn render(r: &Record) -> Result<String, CliError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(r, &root).map_err(|e| CliError::new(format!("drawing the plot: {e}")))?;
        root.present()
            .map_err(|e| CliError::new(format!("drawing the plot: {e}")))?;
    }
    Ok(svg)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(r: &Record, root: &DrawingArea<SVGBackend<'_>, Shift>) -> DrawResult {
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(HEAD_HEIGHT);
    draw_head(r, &head)?;

    let (published, delivered) = rates(&r.samples);
    let peak = (published.iter().chain(&delivered))
        .map(|&(_, v)| v)
        .fold(1.0, f64::max);
    // The lines stay below the labels and markers at the top.
    let plot_height =
        f64::from(SIZE.1 - HEAD_HEIGHT - CHART_MARGIN_TOP - CHART_MARGIN_BOTTOM - X_LABEL_AREA);
    let y_top = peak * plot_height / (plot_height - f64::from(TOP_ROOM));
    let x_end = r.end();

    let mut chart = ChartBuilder::on(&body)
        .margin_top(CHART_MARGIN_TOP)
        .margin_bottom(CHART_MARGIN_BOTTOM)
        .margin_left(16)
        .margin_right(28)
        .x_label_area_size(X_LABEL_AREA)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_end, 0f64..y_top)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .y_desc("messages per 100 ms")
        .axis_desc_style((FONT, 17).into_font().color(&TEXT))
        .label_style((FONT, 15).into_font().color(&MUTED))
        .bold_line_style(BLACK.mix(0.08))
        .light_line_style(TRANSPARENT)
        .x_labels(14)
        .y_labels(6)
        .x_label_formatter(&|x| {
            let s = format!("{x:.1}");
            s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;

    chart.draw_series(r.outages.iter().map(|b| {
        Rectangle::new(
            [(b.start, 0.0), (b.end.unwrap_or(x_end), y_top)],
            OUTAGE.mix(OUTAGE_ALPHA).filled(),
        )
    }))?;
    chart.draw_series(LineSeries::new(published, PUBLISHED.stroke_width(3)))?;
    chart.draw_series(LineSeries::new(delivered, DELIVERED.stroke_width(2)))?;

    let label = TextStyle::from((FONT, 15).into_font())
        .color(&TEXT)
        .pos(Pos::new(HPos::Center, VPos::Top));
    for b in &r.outages {
        let end = b.end.unwrap_or(x_end);
        let mut lines = vec![
            format!("lost {}", b.lost),
            format!("unconfirmed {}", b.unconfirmed),
            format!("refused {}", b.refused),
        ];
        if let Some(n) = b.undetectable {
            lines.push(format!("undetectable {n}"));
        }
        if b.end.is_none() {
            lines.push("not recovered".into());
        }
        let at = (f64::midpoint(b.start, end), y_top);
        for (i, line) in (0..).zip(lines) {
            chart.plotting_area().draw(
                &(EmptyElement::at(at)
                    + Text::new(line, (0, LABEL_TOP + i * LABEL_LINE), label.clone())),
            )?;
        }
    }
    for m in &r.markers {
        let row = if m.subscriber {
            SUBSCRIBER_ROW
        } else {
            PUBLISHER_ROW
        };
        let at = (m.t, y_top);
        let points = shape(m.kind, (0, row));
        if m.subscriber {
            chart
                .plotting_area()
                .draw(&(EmptyElement::at(at) + hollow(points, colour(m.kind))))?;
        } else {
            chart
                .plotting_area()
                .draw(&(EmptyElement::at(at) + Polygon::new(points, colour(m.kind).filled())))?;
        }
    }
    Ok(())
}

/// The title, the summary and the legend, left-aligned in `head`.
fn draw_head(r: &Record, head: &DrawingArea<SVGBackend<'_>, Shift>) -> DrawResult {
    head.draw(&Text::new(
        r.title.clone(),
        (24, 12),
        (FONT, 22).into_font().style(FontStyle::Bold).color(&TEXT),
    ))?;
    head.draw(&Text::new(
        r.summary.clone(),
        (24, 40),
        (FONT, 16).into_font().color(&MUTED),
    ))?;
    let legend = TextStyle::from((FONT, 16).into_font())
        .color(&TEXT)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let y = 70;
    let mut x = 24;
    let entry = |label: &str, x: &mut i32| -> DrawResult {
        head.draw(&Text::new(label.to_owned(), (*x + 24, y), legend.clone()))?;
        // The naive font metrics of the SVG backend: about 7 px a character at this size.
        *x += 24 + 7 * label.chars().count() as i32 + 18;
        Ok(())
    };
    head.draw(&PathElement::new(
        vec![(x, y), (x + 18, y)],
        PUBLISHED.stroke_width(3),
    ))?;
    entry("published", &mut x)?;
    head.draw(&PathElement::new(
        vec![(x, y), (x + 18, y)],
        DELIVERED.stroke_width(2),
    ))?;
    entry("delivered", &mut x)?;
    head.draw(&Rectangle::new(
        [(x + 1, y - 7), (x + 17, y + 7)],
        OUTAGE.mix(OUTAGE_ALPHA * 2.0).filled(),
    ))?;
    entry("outage", &mut x)?;
    for kind in [
        MarkKind::Disconnected,
        MarkKind::Reconnected,
        MarkKind::Migrating,
        MarkKind::Migrated,
    ] {
        if r.markers.iter().any(|m| m.kind == kind) {
            head.draw(
                &(EmptyElement::at((x + 9, y)) + Polygon::new(shape(kind, (0, 0)), colour(kind))),
            )?;
            entry(&format!("{kind:?}"), &mut x)?;
        }
    }
    if r.markers.iter().any(|m| m.subscriber) {
        head.draw(
            &(EmptyElement::at((x + 9, y)) + hollow(shape(MarkKind::Migrated, (0, 0)), MUTED)),
        )?;
        entry("hollow: subscriber", &mut x)?;
    }
    Ok(())
}

/// A marker's outline around `(x, y)`, in pixels: ▼ Disconnected, ▲ Reconnected,
/// ◆ Migrating, ■ Migrated.
fn shape(kind: MarkKind, (x, y): (i32, i32)) -> Vec<(i32, i32)> {
    let outline: &[(i32, i32)] = match kind {
        MarkKind::Disconnected => &[(-6, -5), (6, -5), (0, 6)],
        MarkKind::Reconnected => &[(-6, 5), (6, 5), (0, -6)],
        MarkKind::Migrating => &[(0, -7), (7, 0), (0, 7), (-7, 0)],
        MarkKind::Migrated => &[(-5, -5), (5, -5), (5, 5), (-5, 5)],
    };
    outline.iter().map(|&(dx, dy)| (x + dx, y + dy)).collect()
}

/// The marker's colour.
fn colour(kind: MarkKind) -> RGBColor {
    match kind {
        MarkKind::Disconnected => OUTAGE,
        MarkKind::Reconnected => RGBColor(0x2C, 0xA0, 0x2C),
        MarkKind::Migrating => RGBColor(0x94, 0x67, 0xBD),
        MarkKind::Migrated => RGBColor(0x8C, 0x56, 0x4B),
    }
}

/// An outline drawn hollow (closed).
fn hollow(mut points: Vec<(i32, i32)>, colour: RGBColor) -> PathElement<(i32, i32)> {
    if let Some(&first) = points.first() {
        points.push(first);
    }
    PathElement::new(points, colour.stroke_width(2))
}
