//! `--plot FILE.svg`: the ratios of pub, pubsub and reqrep as bars, one group per
//! workload and payload size: tether / async-nats and tether / ceiling (pub) or floor
//! (reqrep), with a line at 1.0. Drawn with plotters' SVG backend and no font of the
//! system: text goes into the file as SVG `<text>` and the viewer lays it out.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::{headline, medians};
use crate::throughput::{raw_name, Series};
use crate::{Cli, Res, Workload};

/// Bars of tether / async-nats.
const VS_ASYNC: RGBColor = RGBColor(0x3b, 0x6e, 0xa8);
/// Bars of tether / ceiling or floor.
const VS_RAW: RGBColor = RGBColor(0xe0, 0x8a, 0x2c);
/// The line at 1.0.
const EVEN: RGBColor = RGBColor(0xc0, 0x30, 0x30);
const HEIGHT: u32 = 580;

/// Under a group whose ratio is a rate.
pub(crate) const ABOVE_FASTER: &str = "above 1 = tether faster";
/// Under a group whose ratio is a time.
pub(crate) const BELOW_FASTER: &str = "below 1 = tether faster";
/// Under a group whose ratio is memory.
pub(crate) const BELOW_SMALLER: &str = "below 1 = tether smaller";

/// The plot's file, opened for writing when the run starts so that a path that cannot
/// be written fails before any round.
#[derive(Debug)]
pub(crate) struct PlotFile {
    path: PathBuf,
    file: File,
}

/// One group of bars: one workload at one payload size.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// `pub 16 B`.
    pub(crate) label: String,
    /// Which side of 1 is better for tether, in words (`above 1 = tether faster`).
    pub(crate) better: &'static str,
    /// What the ratio is of: `msgs/s`, `p50`, `RSS/conn`...
    pub(crate) metric: &'static str,
    pub(crate) vs_async: f64,
    /// tether / ceiling or floor, and which of the two (None for pubsub).
    pub(crate) vs_raw: Option<(f64, &'static str)>,
}

impl PlotFile {
    /// Checks that the workloads have something to draw and opens `path` for writing.
    pub(crate) fn create(path: &Path, workloads: &[Workload]) -> Res<Self> {
        if !workloads.iter().any(|w| {
            matches!(
                w,
                Workload::Pub
                    | Workload::Pubsub
                    | Workload::Reqrep
                    | Workload::Conns
                    | Workload::Subs
                    | Workload::JsPub
                    | Workload::JsConsume
            )
        }) {
            return Err(format!(
                "--plot {}: the plot draws pub, pubsub, reqrep, conns and subs, and \
                 --workloads has none of them; add one or drop --plot",
                path.display()
            )
            .into());
        }
        let file = File::create(path).map_err(|e| {
            format!(
                "--plot {}: cannot write the plot there ({e}); give a path in an existing, \
                 writable directory",
                path.display()
            )
        })?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// Draws the results of the run and writes them; returns the path written.
    pub(crate) fn write(
        self,
        cli: &Cli,
        server_version: Option<&str>,
        all: &[Series],
        scale: Vec<Group>,
    ) -> Res<PathBuf> {
        let title = format!(
            "tether-compare, nats-server {}: median of {} rounds, {}",
            server_version.unwrap_or("(given)"),
            cli.rounds,
            utc_date(SystemTime::now())
        );
        let mut groups = groups(all);
        groups.extend(scale);
        self.finish(&title, &groups)
    }

    fn finish(mut self, title: &str, groups: &[Group]) -> Res<PathBuf> {
        let svg = render(title, groups)?;
        self.file
            .write_all(svg.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| format!("--plot {}: writing the plot: {e}", self.path.display()))?;
        Ok(self.path)
    }
}

/// One group per series: its headline metric's ratios.
fn groups(all: &[Series]) -> Vec<Group> {
    all.iter()
        .map(|s| {
            let (metric, higher_better, _) = headline(s.workload);
            let (t, a, r) = medians(s, metric);
            Group {
                label: s.name(),
                better: if higher_better {
                    ABOVE_FASTER
                } else {
                    BELOW_FASTER
                },
                metric: if higher_better { "msgs/s" } else { "p50" },
                vs_async: t / a,
                vs_raw: s.has_raw().then(|| (t / r, raw_name(s.workload))),
            }
        })
        .collect()
}

/// The SVG text of the bar chart.
fn render(title: &str, groups: &[Group]) -> Res<String> {
    let mut svg = String::new();
    // Groups of one bar (no ceiling or floor, as in the scale workloads) take less room.
    let pairs = groups.iter().any(|g| g.vs_raw.is_some());
    let per_group = if pairs { 190 } else { 135 };
    let width = u32::try_from(groups.len())?
        .saturating_mul(per_group)
        .max(520)
        + 120;
    {
        let root = SVGBackend::with_string(&mut svg, (width, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let finite = groups
            .iter()
            .flat_map(|g| [Some(g.vs_async), g.vs_raw.map(|r| r.0)])
            .flatten()
            .filter(|v| v.is_finite());
        let top = finite.fold(1.0_f64, f64::max) * 1.45;
        let n = groups.len() as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(100)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..n.max(1.0), 0.0..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_labels(0)
            .y_desc("tether / other (median)")
            .y_label_formatter(&|v| format!("{v:.1}"))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .draw()?;

        let bar = |i: usize, x: f64, v: f64, color: RGBColor| {
            let x = i as f64 + x;
            Rectangle::new([(x - 0.17, 0.0), (x + 0.17, v)], color.filled())
        };
        let async_bars = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.vs_async.is_finite())
            .map(|(i, g)| bar(i, async_x(g), g.vs_async, VS_ASYNC));
        chart
            .draw_series(async_bars)?
            .label("tether / async-nats")
            .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], VS_ASYNC.filled()));
        let raw_bars = groups.iter().enumerate().filter_map(|(i, g)| {
            let (v, _) = g.vs_raw?;
            v.is_finite().then(|| bar(i, RAW_X, v, VS_RAW))
        });
        let raw = chart.draw_series(raw_bars)?;
        if pairs {
            raw.label("tether / ceiling (pub) or floor (reqrep)")
                .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], VS_RAW.filled()));
        }
        chart
            .draw_series(LineSeries::new(
                [(0.0, 1.0), (n, 1.0)],
                EVEN.stroke_width(2),
            ))?
            .label("1.0 = tether as fast as the other")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], EVEN.stroke_width(2)));

        // The value on top of each bar.
        let value_style = TextStyle::from(("sans-serif", 16).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        let values = groups.iter().enumerate().flat_map(|(i, g)| {
            [
                Some((i as f64 + async_x(g), g.vs_async)),
                g.vs_raw.map(|(v, _)| (i as f64 + RAW_X, v)),
            ]
            .into_iter()
            .flatten()
            .filter(|(_, v)| v.is_finite())
            .map(|(x, v)| Text::new(format!("{v:.2}"), (x, v), value_style.clone()))
            .collect::<Vec<_>>()
        });
        chart.draw_series(values)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()?;

        group_labels(&root, |x| chart.backend_coord(&(x, 0.0)), groups, !pairs)?;
        root.present()?;
    }
    Ok(svg)
}

/// Where a group's raw bar is centred (in group widths from its left edge).
const RAW_X: f64 = 0.69;

/// Where a group's async-nats bar is centred: left of the raw bar, or alone in the middle.
fn async_x(g: &Group) -> f64 {
    if g.vs_raw.is_some() {
        0.31
    } else {
        0.5
    }
}

/// Under the axis, per group: what each bar is against, the group, its metric and which
/// side of 1 is better for tether. `at(x)` is the pixel of `(x, 0)` in the chart.
fn group_labels(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    at: impl Fn(f64) -> (i32, i32),
    groups: &[Group],
    narrow: bool,
) -> Res<()> {
    // Smaller text under narrow (one-bar) groups, so neighbours do not overlap.
    let small = |size: u32| if narrow { size * 4 / 5 } else { size };
    let under = |size: u32| {
        TextStyle::from(("sans-serif", size).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top))
    };
    for (i, g) in groups.iter().enumerate() {
        let (left, y) = at(i as f64 + async_x(g));
        let (right, _) = at(i as f64 + RAW_X);
        let (mid, _) = at(i as f64 + 0.5);
        root.draw(&Text::new("vs async-nats", (left, y + 6), under(small(14))))?;
        if let Some((_, raw)) = g.vs_raw {
            root.draw(&Text::new(format!("vs {raw}"), (right, y + 6), under(14)))?;
        }
        root.draw(&Text::new(g.label.clone(), (mid, y + 26), under(small(18))))?;
        root.draw(&Text::new(g.metric, (mid, y + 50), under(small(15))))?;
        root.draw(&Text::new(g.better, (mid, y + 68), under(small(15))))?;
    }
    Ok(())
}

/// `YYYY-MM-DD` (UTC) of `t`.
fn utc_date(t: SystemTime) -> String {
    let days = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    // Days since 1970-01-01 to a civil date, counting in 400-year eras that start on
    // March 1st (so the leap day ends a year).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::{utc_date, Group, PlotFile};
    use crate::Workload;

    fn groups() -> Vec<Group> {
        vec![
            Group {
                label: "pub 16 B".to_owned(),
                better: super::ABOVE_FASTER,
                metric: "msgs/s",
                vs_async: 2.2,
                vs_raw: Some((0.91, "ceiling")),
            },
            Group {
                label: "pubsub 16 B".to_owned(),
                better: super::ABOVE_FASTER,
                metric: "msgs/s",
                vs_async: 1.4,
                vs_raw: None,
            },
            Group {
                label: "reqrep 128 B".to_owned(),
                better: super::BELOW_FASTER,
                metric: "p50",
                vs_async: 0.97,
                vs_raw: Some((1.53, "floor")),
            },
        ]
    }

    #[test]
    fn the_plot_has_a_bar_and_a_value_per_ratio_and_says_which_side_is_better() {
        let path =
            std::env::temp_dir().join(format!("tether-compare-plot-{}.svg", std::process::id()));
        let file = PlotFile::create(&path, &[Workload::Pub]).unwrap();
        let written = file.finish("a title", &groups()).unwrap();
        assert_eq!(written, path);
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();

        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        // Five bars (pubsub has no raw one), each in its colour.
        assert_eq!(svg.matches(r##"fill="#3B6EA8""##).count() - 1, 3, "{svg}");
        assert_eq!(svg.matches(r##"fill="#E08A2C""##).count() - 1, 2, "{svg}");
        for text in [
            "a title",
            "pub 16 B",
            "pubsub 16 B",
            "reqrep 128 B",
            "2.20",
            "0.91",
            "1.40",
            "0.97",
            "1.53",
            "vs ceiling",
            "vs floor",
            "msgs/s",
            "p50",
            "above 1 = tether faster",
            "below 1 = tether faster",
            "tether / async-nats",
            "1.0 = tether as fast as the other",
        ] {
            assert!(
                svg.contains(&format!(">\n{text}\n</text>")),
                "no text {text:?} in the SVG"
            );
        }
    }

    #[test]
    fn a_plot_needs_a_workload_it_draws() {
        let path = std::env::temp_dir().join("tether-compare-never-written.svg");
        let e = PlotFile::create(&path, &[Workload::Memory])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--workloads has none"), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn utc_date_counts_leap_years() {
        assert_eq!(utc_date(UNIX_EPOCH), "1970-01-01");
        let day = |d: u64| utc_date(UNIX_EPOCH + Duration::from_secs(d * 86_400 + 3_600));
        assert_eq!(day(11_016), "2000-02-29");
        assert_eq!(day(11_017), "2000-03-01");
        assert_eq!(day(20_788), "2026-12-01");
    }
}
