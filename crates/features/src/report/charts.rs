//! The report's charts as SVG text, drawn with plotters (its SVG backend needs no font files:
//! the browser renders the text).

use plotters::prelude::*;

use super::{HourRow, ScoreHistogram, SeriesRow, Timeline};
use crate::FeaturesError;

const WIDTH: u32 = 960;
const FONT: &str = "sans-serif";
const NORMAL: RGBColor = RGBColor(0x3b, 0x6e, 0xa8);
const ANOMALY: RGBColor = RGBColor(0xd6, 0x27, 0x28);

fn chart_error(chart: &'static str) -> impl Fn(String) -> FeaturesError {
    move |reason| FeaturesError::Chart { chart, reason }
}

/// Draws into an SVG string of `height` pixels.
fn svg(
    chart: &'static str,
    height: u32,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<String, FeaturesError> {
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string()).map_err(chart_error(chart))?;
        draw(&root).map_err(chart_error(chart))?;
        root.present().map_err(|e| e.to_string()).map_err(chart_error(chart))?;
    }
    Ok(text)
}

/// Hours as chart x values (hours since the Unix epoch), and their labels.
fn hour_label(hours: f64) -> String {
    super::numbers::rfc3339((hours * 3_600_000_000.0) as i64)
        .get(5..16)
        .map(|s| s.replace('T', " "))
        .unwrap_or_default()
}

/// The fewest hours the per-hour chart spans: a run of an hour or two is a few narrow bars in
/// their place on a half day, not one bar the width of the chart.
const MIN_HOURS_SHOWN: f64 = 12.0;

/// An axis top for counts up to `max`: integer, with room above the highest bar.
fn count_top(max: u64) -> u64 {
    max.max(1) + max.max(1).div_ceil(10)
}

/// Anomalies per hour (bars) with the share of anomalous rows.
pub(super) fn per_hour(hours: &[HourRow]) -> Result<String, FeaturesError> {
    svg("anomalies per hour", 300, |root| {
        let x = |h: &HourRow| h.hour_us as f64 / 3_600_000_000.0;
        let (x0, x1) = match (hours.first(), hours.last()) {
            (Some(a), Some(b)) => (x(a), x(b) + 1.0),
            _ => (0.0, 1.0),
        };
        let pad = ((MIN_HOURS_SHOWN - (x1 - x0)) / 2.0).max(0.0).floor();
        let (x0, x1) = (x0 - pad, x1 + pad);
        let top = count_top(hours.iter().map(|h| h.anomalies).max().unwrap_or(0));
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, 0..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(8)
            .x_label_formatter(&|v| hour_label(*v))
            .y_labels(6)
            .y_label_formatter(&|v| super::html::thousands(*v))
            .y_desc("anomalous rows")
            .label_style((FONT, 12))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(hours.iter().map(|h| {
                let left = x(h);
                Rectangle::new([(left + 0.05, 0), (left + 0.95, h.anomalies)], ANOMALY.filled())
            }))
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// Height of one bar's row in the highest-rates chart, in pixels.
const BAR_ROW: u32 = 22;

/// The series with the highest anomaly rates, as horizontal bars, highest first, each labelled
/// with its model key. Rows are a float axis (bar `i` spans `i + 0.15 .. i + 0.85` from the
/// top) and the keys are drawn beside each bar's middle: an integer axis made plotters fill
/// each bar to the chart's top (a staircase) and put its labels between bars.
pub(super) fn top_series(series: &[SeriesRow]) -> Result<String, FeaturesError> {
    let n = series.len().max(1);
    let height = 60 + BAR_ROW * n as u32;
    svg("highest anomaly rates", height, |root| {
        let top = series.iter().map(|s| s.anomaly_rate).fold(0.0, f64::max).max(0.01) * 110.0;
        let rows = n as f64;
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(150)
            .build_cartesian_2d(0.0..top, 0.0..rows)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("anomalous rows, %")
            .label_style((FONT, 12))
            .draw()
            .map_err(|e| e.to_string())?;
        // Row i (highest rate first) sits at the top: y grows upwards.
        let y = |i: usize| rows - i as f64;
        chart
            .draw_series(series.iter().enumerate().map(|(i, s)| {
                Rectangle::new(
                    [(0.0, y(i) - 0.85), (s.anomaly_rate * 100.0, y(i) - 0.15)],
                    ANOMALY.mix(0.8).filled(),
                )
            }))
            .map_err(|e| e.to_string())?;
        let label =
            TextStyle::from((FONT, 12).into_font()).pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Right,
                plotters::style::text_anchor::VPos::Center,
            ));
        for (i, s) in series.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(0.0, y(i) - 0.5));
            root.draw(&Text::new(s.key.clone(), (px - 6, py), label.clone()))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// Scores of normal and anomalous rows.
pub(super) fn scores(h: &ScoreHistogram) -> Result<String, FeaturesError> {
    svg("score distribution", 300, |root| {
        let (lo, hi) = (h.edges[0], h.edges[h.edges.len() - 1]);
        let hi = if hi > lo { hi } else { lo + 1.0 };
        let top = count_top(h.normal.iter().chain(&h.anomalous).copied().max().unwrap_or(0));
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(lo..hi, 0..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("score (lower = more abnormal)")
            .y_labels(6)
            .y_label_formatter(&|v| super::html::thousands(*v))
            .y_desc("rows")
            .label_style((FONT, 12))
            .draw()
            .map_err(|e| e.to_string())?;
        for (counts, color, label) in
            [(&h.normal, NORMAL, "normal"), (&h.anomalous, ANOMALY, "anomaly")]
        {
            chart
                .draw_series(counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| {
                    Rectangle::new([(h.edges[i], 0), (h.edges[i + 1], *c)], color.mix(0.6).filled())
                }))
                .map_err(|e| e.to_string())?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 12))
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// One series' scores over time, anomalies marked.
pub(super) fn timeline(t: &Timeline) -> Result<String, FeaturesError> {
    svg("timeline", 220, |root| {
        let hours = |us: i64| us as f64 / 3_600_000_000.0;
        let all = t.points.iter().chain(&t.anomaly_points);
        let (t0, t1) = all.clone().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(hours(p.0)), b.max(hours(p.0)))
        });
        let (s0, s1) =
            all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let (t0, t1) = if t0 < t1 {
            (t0, t1)
        } else if t0.is_finite() {
            (t0 - 0.5, t0 + 0.5)
        } else {
            (0.0, 1.0)
        };
        let pad = ((s1 - s0) * 0.05).max(1e-6);
        let (s0, s1) = if s0 <= s1 { (s0 - pad, s1 + pad) } else { (0.0, 1.0) };
        let mut chart = ChartBuilder::on(root)
            .margin(10)
            .caption(format!("model {}", t.key), (FONT, 14))
            .x_label_area_size(30)
            .y_label_area_size(56)
            .build_cartesian_2d(t0..t1, s0..s1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(6)
            .x_label_formatter(&|v| hour_label(*v))
            .y_desc("score")
            .label_style((FONT, 11))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(
                t.points.iter().map(|p| (hours(p.0), p.1)),
                NORMAL.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(
                t.anomaly_points
                    .iter()
                    .map(|p| Circle::new((hours(p.0), p.1), 3, ANOMALY.filled())),
            )
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}
