//! The report of a complete run: what an operator looks at instead of Parquet.
//!
//! [`RunReport::build`] reads the parts `_SUCCESS` names (never a listing) and the run's drift
//! table with polars, one part at a time so memory stays bounded by a part, and gathers the
//! numbers: anomalies per hour, the series with the highest anomaly rate, the score
//! distribution, timelines of the worst series, drift and failures. A second pass reads the
//! rows of the worst series only. The numbers serialise as the JSON report; [`html::render`]
//! draws them as one self-contained HTML page with inline SVG charts (plotters), no script and
//! no external resource, so it opens anywhere, offline.

mod charts;
pub mod html;
mod numbers;

use std::collections::BTreeMap;

use batchscore_io::Location;
use batchscore_scheduler::{DeviceStatus, DriftSummary, Manifest, Totals};
use serde::Serialize;

use crate::FeaturesError;

/// Series in the table and chart of the highest anomaly rates.
pub const TOP_SERIES: usize = 20;
/// Series whose timelines are drawn.
pub const TIMELINES: usize = 6;
/// Drift rows shown (the highest PSI first).
pub const DRIFT_ROWS: usize = 50;
/// Failed series listed.
pub const FAILURES: usize = 200;

/// Everything a report shows, as numbers.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub url: String,
    pub shard_count: u32,
    pub totals: Totals,
    /// Wall-clock milliseconds per phase and shard, as `_SUCCESS` records them.
    pub timings_ms: BTreeMap<String, u64>,
    /// The settings the run was started with.
    pub settings: serde_json::Value,
    /// First and last scored timestamp (RFC 3339, UTC).
    pub from: Option<String>,
    pub to: Option<String>,
    /// Whether the parts carry scores (the `reference` output profile has predictions only).
    pub has_scores: bool,
    pub per_hour: Vec<HourRow>,
    /// Highest anomaly rate first (ties: more anomalies, then key).
    pub top_series: Vec<SeriesRow>,
    pub scores: Option<ScoreHistogram>,
    pub timelines: Vec<Timeline>,
    pub drift: Option<DriftSection>,
    pub failures: Vec<FailureRow>,
    pub failures_total: u64,
}

/// Scored rows and anomalies in one hour.
#[derive(Debug, Clone, Serialize)]
pub struct HourRow {
    /// Start of the hour, RFC 3339 UTC.
    pub hour: String,
    pub hour_us: i64,
    pub rows: u64,
    pub anomalies: u64,
}

/// One series' counts over the run.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesRow {
    pub key: String,
    pub device: i64,
    pub sensor: Option<String>,
    pub rows: u64,
    pub anomalies: u64,
    pub anomaly_rate: f64,
    pub min_score: Option<f64>,
    pub mean_score: Option<f64>,
}

/// Scores of normal and anomalous rows in common bins.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreHistogram {
    /// `bins + 1` edges.
    pub edges: Vec<f64>,
    pub normal: Vec<u64>,
    pub anomalous: Vec<u64>,
    /// Rows the histogram counts: every row, or an even sample of large runs.
    pub rows_counted: u64,
}

/// Scores of one series over time.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub key: String,
    pub rows: u64,
    pub anomalies: u64,
    /// (timestamp µs, score): every row, or the lowest score per time bucket of long series.
    pub points: Vec<(i64, f64)>,
    /// (timestamp µs, score) of anomalous rows (the lowest scores when there are many).
    pub anomaly_points: Vec<(i64, f64)>,
    /// True when `points` are bucket minima rather than rows.
    pub bucketed: bool,
}

/// The run's drift table, its counts and its worst rows.
#[derive(Debug, Clone, Serialize)]
pub struct DriftSection {
    pub summary: DriftSummary,
    /// Highest PSI first.
    pub rows: Vec<DriftRow>,
    pub rows_total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriftRow {
    pub key: String,
    pub feature: Option<String>,
    pub status: String,
    pub rows: u64,
    pub psi: Option<f64>,
    pub wasserstein_norm: Option<f64>,
    pub mean_shift_sd: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureRow {
    pub key: String,
    pub rows: u64,
    pub stage: Option<String>,
    pub reason: Option<String>,
}

impl RunReport {
    /// The report of the complete run in `run_dir` (under `output`) whose `_SUCCESS` is
    /// `manifest`.
    pub fn build(
        output: &Location,
        run_dir: &Location,
        manifest: &Manifest,
    ) -> Result<Self, FeaturesError> {
        let parts = numbers::scan_parts(run_dir, manifest)?;
        let worst: Vec<&SeriesRow> = parts.top_series.iter().take(TIMELINES).collect();
        let timelines = match parts.has_scores {
            true => numbers::timelines(run_dir, manifest, &worst)?,
            false => Vec::new(),
        };
        let drift = match &manifest.drift {
            Some(summary) => Some(numbers::drift(output, &manifest.run_id, summary)?),
            None => None,
        };
        let failed = manifest.devices.iter().filter(|d| d.status == DeviceStatus::Failed);
        let failures: Vec<FailureRow> = failed
            .clone()
            .take(FAILURES)
            .map(|d| FailureRow {
                key: d.model_key(),
                rows: d.rows,
                stage: d.stage.clone(),
                reason: d.reason.clone(),
            })
            .collect();
        Ok(Self {
            run_id: manifest.run_id.clone(),
            url: run_dir.url().to_string(),
            shard_count: manifest.shard_count,
            totals: manifest.totals.clone(),
            timings_ms: manifest.timings_ms.clone(),
            settings: manifest.settings.clone(),
            from: parts.from_us.map(numbers::rfc3339),
            to: parts.to_us.map(numbers::rfc3339),
            has_scores: parts.has_scores,
            per_hour: parts.per_hour,
            top_series: parts.top_series,
            scores: parts.scores,
            timelines,
            drift,
            failures,
            failures_total: failed.count() as u64,
        })
    }
}
