//! The report's numbers, from the run's parts and drift table, with polars.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Cursor;

use batchscore_io::Location;
use batchscore_scheduler::{DriftSummary, Manifest};
use polars::prelude::{
    DataFrame, DataType, Expr, IntoLazy, NULL, ParquetReader, SerReader, col, len, lit,
};

use super::{
    DRIFT_ROWS, DriftRow, DriftSection, HourRow, ScoreHistogram, SeriesRow, TOP_SERIES, Timeline,
};
use crate::FeaturesError;

const HOUR_US: i64 = 3_600_000_000;
/// A series: its device, and its sensor in the long layout.
type SeriesKey = (i64, Option<String>);
/// Rows the score histogram counts at most: larger runs are sampled evenly.
const HISTOGRAM_ROWS: u64 = 2_000_000;
const HISTOGRAM_BINS: usize = 50;
/// Points of a timeline at most; longer series are drawn as per-bucket minima.
const TIMELINE_POINTS: usize = 1_500;
/// Anomalous rows marked on a timeline at most (the lowest scores).
const TIMELINE_ANOMALIES: usize = 500;

/// Which columns of the parts hold what (the standard and the `reference` output profiles).
#[derive(Debug, Clone)]
struct PartColumns {
    device: String,
    sensor: Option<String>,
    timestamp: String,
    score: Option<String>,
    anomaly: Anomaly,
}

#[derive(Debug, Clone)]
enum Anomaly {
    /// `is_anomaly`, a boolean.
    Flag(String),
    /// `Prediction`, 1 for an anomaly (the reference system's convention).
    Prediction(String),
}

impl PartColumns {
    /// Reads the roles off a part's schema.
    fn of(frame: &DataFrame, url: &str) -> Result<Self, FeaturesError> {
        let names: Vec<&str> = frame.get_column_names().into_iter().map(|n| n.as_str()).collect();
        let has = |n: &str| names.contains(&n);
        if has("Prediction") && has("TS") && has("Device") {
            return Ok(Self {
                device: "Device".into(),
                sensor: has("Tag").then(|| "Tag".into()),
                timestamp: "TS".into(),
                score: None,
                anomaly: Anomaly::Prediction("Prediction".into()),
            });
        }
        let table = |reason: &str| FeaturesError::Table { url: url.into(), reason: reason.into() };
        let columns = frame.columns();
        let ts = columns
            .iter()
            .position(|c| matches!(c.dtype(), DataType::Datetime(..)))
            .ok_or_else(|| table("no timestamp column: not a part of a batchscore run"))?;
        if !has("score") || !has("is_anomaly") || ts == 0 {
            return Err(table(
                "no `score` and `is_anomaly` columns: not a part of a batchscore run",
            ));
        }
        // Standard parts start with the device; in the long layout the sensor comes before
        // the timestamp.
        Ok(Self {
            device: names[0].into(),
            sensor: (ts == 2).then(|| names[1].into()),
            timestamp: names[ts].into(),
            score: Some("score".into()),
            anomaly: Anomaly::Flag("is_anomaly".into()),
        })
    }

    fn projection(&self) -> Vec<String> {
        let mut names = vec![self.device.clone()];
        names.extend(self.sensor.clone());
        names.push(self.timestamp.clone());
        names.extend(self.score.clone());
        names.push(match &self.anomaly {
            Anomaly::Flag(n) | Anomaly::Prediction(n) => n.clone(),
        });
        names
    }

    /// The part as `device, sensor, ts (µs), score, anomaly` under those names.
    fn normalise(&self, frame: DataFrame) -> Result<DataFrame, FeaturesError> {
        let sensor = match &self.sensor {
            Some(s) => col(s.as_str()).cast(DataType::String),
            None => lit(NULL).cast(DataType::String),
        };
        let score = match &self.score {
            Some(s) => col(s.as_str()).cast(DataType::Float64),
            None => lit(NULL).cast(DataType::Float64),
        };
        let anomaly = match &self.anomaly {
            Anomaly::Flag(n) => col(n.as_str()),
            Anomaly::Prediction(n) => col(n.as_str()).eq(lit(1i64)),
        };
        frame
            .lazy()
            .select([
                col(self.device.as_str()).cast(DataType::Int64).alias("device"),
                sensor.alias("sensor"),
                col(self.timestamp.as_str()).cast(DataType::Int64).alias("ts"),
                score.alias("score"),
                anomaly.alias("anomaly"),
            ])
            .collect()
            .map_err(FeaturesError::polars("read a part"))
    }
}

/// Reads each part `_SUCCESS` names, normalised, one at a time.
fn for_each_part(
    run_dir: &Location,
    manifest: &Manifest,
    mut each: impl FnMut(DataFrame) -> Result<(), FeaturesError>,
) -> Result<(), FeaturesError> {
    let mut columns: Option<PartColumns> = None;
    for part in &manifest.parts {
        let url = run_dir.url_of(&part.path);
        if !part.path.ends_with(".parquet") {
            return Err(FeaturesError::Table {
                url,
                reason: "reports read Parquet parts; this run wrote CSV (`--output-format csv`)"
                    .into(),
            });
        }
        // Every byte is checked against `_SUCCESS` before polars sees it: a damaged part is a
        // damaged run, never a report of other numbers.
        let bytes = part.read_checked(run_dir)?;
        let read = |projection: Option<Vec<String>>| {
            ParquetReader::new(Cursor::new(bytes.clone()))
                .with_columns(projection)
                .finish()
                .map_err(|e| FeaturesError::Table {
                    url: url.clone(),
                    reason: format!("not a Parquet part polars can read: {e}"),
                })
        };
        let frame = match &columns {
            Some(c) => read(Some(c.projection()))?,
            None => {
                let whole = read(None)?;
                let found = PartColumns::of(&whole, &url)?;
                let frame = whole
                    .select(found.projection())
                    .map_err(FeaturesError::polars("read a part"))?;
                columns = Some(found);
                frame
            }
        };
        let Some(c) = &columns else { continue };
        each(c.normalise(frame)?)?;
    }
    Ok(())
}

/// What the pass over every part gathers.
pub(super) struct PartNumbers {
    pub has_scores: bool,
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    pub per_hour: Vec<HourRow>,
    pub top_series: Vec<SeriesRow>,
    pub scores: Option<ScoreHistogram>,
}

#[derive(Default)]
struct SeriesAcc {
    rows: u64,
    anomalies: u64,
    score_sum: f64,
    min_score: Option<f64>,
}

/// Per hour, per series and a score sample, part by part.
pub(super) fn scan_parts(
    run_dir: &Location,
    manifest: &Manifest,
) -> Result<PartNumbers, FeaturesError> {
    let mut hours: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    let mut series: HashMap<SeriesKey, SeriesAcc> = HashMap::new();
    let mut sample: Vec<(f64, bool)> = Vec::new();
    let mut has_scores = false;
    let (mut from_us, mut to_us) = (None::<i64>, None::<i64>);
    let step = manifest.totals.rows.div_ceil(HISTOGRAM_ROWS).max(1) as usize;
    let mut seen = 0usize;
    for_each_part(run_dir, manifest, |frame| {
        let counts = [len().cast(DataType::Int64).alias("rows"), anomalies()];
        let per_hour = frame
            .clone()
            .lazy()
            .group_by([col("ts").floor_div(lit(HOUR_US)).alias("hour")])
            .agg(counts.clone())
            .collect()
            .map_err(FeaturesError::polars("count rows per hour"))?;
        let hour = per_hour.column("hour").and_then(|c| c.i64().cloned());
        let rows = per_hour.column("rows").and_then(|c| c.i64().cloned());
        let anomalous = per_hour.column("anomalies").and_then(|c| c.i64().cloned());
        let (hour, rows, anomalous) = (
            hour.map_err(FeaturesError::polars("count rows per hour"))?,
            rows.map_err(FeaturesError::polars("count rows per hour"))?,
            anomalous.map_err(FeaturesError::polars("count rows per hour"))?,
        );
        for ((h, r), a) in hour.iter().zip(rows.iter()).zip(anomalous.iter()) {
            let entry = hours.entry(h.unwrap_or_default() * HOUR_US).or_default();
            entry.0 += r.unwrap_or_default() as u64;
            entry.1 += a.unwrap_or_default() as u64;
        }

        let mut aggs = counts.to_vec();
        aggs.extend([
            col("score").sum().alias("score_sum"),
            col("score").min().alias("score_min"),
            col("ts").min().alias("ts_min"),
            col("ts").max().alias("ts_max"),
        ]);
        let per_series = frame
            .clone()
            .lazy()
            .group_by([col("device"), col("sensor")])
            .agg(aggs)
            .collect()
            .map_err(FeaturesError::polars("count rows per series"))?;
        merge_series(&per_series, &mut series, (&mut from_us, &mut to_us))
            .map_err(FeaturesError::polars("count rows per series"))?;

        let score = frame.column("score").and_then(|c| c.f64().cloned());
        let anomaly = frame.column("anomaly").and_then(|c| c.bool().cloned());
        let (score, anomaly) = (
            score.map_err(FeaturesError::polars("sample scores"))?,
            anomaly.map_err(FeaturesError::polars("sample scores"))?,
        );
        for (s, a) in score.iter().zip(anomaly.iter()) {
            if seen.is_multiple_of(step)
                && let Some(s) = s
            {
                has_scores = true;
                sample.push((s, a.unwrap_or(false)));
            }
            seen += 1;
        }
        Ok(())
    })?;
    let per_hour = hours
        .into_iter()
        .map(|(hour_us, (rows, anomalies))| HourRow {
            hour: rfc3339(hour_us),
            hour_us,
            rows,
            anomalies,
        })
        .collect();
    Ok(PartNumbers {
        has_scores,
        from_us,
        to_us,
        per_hour,
        top_series: top_series(series),
        scores: histogram(&sample),
    })
}

fn anomalies() -> Expr {
    col("anomaly").cast(DataType::Int64).sum().alias("anomalies")
}

fn merge_series(
    frame: &DataFrame,
    series: &mut HashMap<SeriesKey, SeriesAcc>,
    (from_us, to_us): (&mut Option<i64>, &mut Option<i64>),
) -> Result<(), polars::prelude::PolarsError> {
    let device = frame.column("device")?.i64()?;
    let sensor = frame.column("sensor")?.str()?;
    let rows = frame.column("rows")?.i64()?;
    let anomalies = frame.column("anomalies")?.i64()?;
    let score_sum = frame.column("score_sum")?.f64()?;
    let score_min = frame.column("score_min")?.f64()?;
    let ts_min = frame.column("ts_min")?.i64()?;
    let ts_max = frame.column("ts_max")?.i64()?;
    for i in 0..frame.height() {
        let key = (device.get(i).unwrap_or_default(), sensor.get(i).map(String::from));
        let acc = series.entry(key).or_default();
        acc.rows += rows.get(i).unwrap_or_default() as u64;
        acc.anomalies += anomalies.get(i).unwrap_or_default() as u64;
        acc.score_sum += score_sum.get(i).unwrap_or_default();
        if let Some(m) = score_min.get(i) {
            acc.min_score = Some(acc.min_score.map_or(m, |x| x.min(m)));
        }
        if let Some(t) = ts_min.get(i) {
            *from_us = Some(from_us.map_or(t, |x| x.min(t)));
        }
        if let Some(t) = ts_max.get(i) {
            *to_us = Some(to_us.map_or(t, |x| x.max(t)));
        }
    }
    Ok(())
}

/// The series with the highest anomaly rates.
fn top_series(series: HashMap<SeriesKey, SeriesAcc>) -> Vec<SeriesRow> {
    let mut rows: Vec<SeriesRow> = series
        .into_iter()
        .filter(|(_, acc)| acc.rows > 0)
        .map(|((device, sensor), acc)| SeriesRow {
            key: batchscore_registry::ModelKey::name(device, sensor.as_deref()),
            device,
            sensor,
            rows: acc.rows,
            anomalies: acc.anomalies,
            anomaly_rate: acc.anomalies as f64 / acc.rows as f64,
            min_score: acc.min_score,
            mean_score: acc.min_score.map(|_| acc.score_sum / acc.rows as f64),
        })
        .collect();
    rows.sort_by(|a, b| {
        b.anomaly_rate
            .total_cmp(&a.anomaly_rate)
            .then(b.anomalies.cmp(&a.anomalies))
            .then(a.device.cmp(&b.device))
            .then(a.sensor.cmp(&b.sensor))
    });
    rows.truncate(TOP_SERIES);
    rows
}

/// Scores of normal and anomalous rows in common bins over the sample's range.
fn histogram(sample: &[(f64, bool)]) -> Option<ScoreHistogram> {
    let finite = sample.iter().filter(|(s, _)| s.is_finite());
    let (lo, hi) = finite
        .clone()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (s, _)| (lo.min(*s), hi.max(*s)));
    if lo > hi {
        return None;
    }
    let width = if hi > lo { (hi - lo) / HISTOGRAM_BINS as f64 } else { 1.0 };
    let mut normal = vec![0u64; HISTOGRAM_BINS];
    let mut anomalous = vec![0u64; HISTOGRAM_BINS];
    for (s, a) in finite {
        let bin = (((s - lo) / width) as usize).min(HISTOGRAM_BINS - 1);
        if *a {
            anomalous[bin] += 1;
        } else {
            normal[bin] += 1;
        }
    }
    let edges = (0..=HISTOGRAM_BINS).map(|i| lo + width * i as f64).collect();
    Some(ScoreHistogram { edges, normal, anomalous, rows_counted: sample.len() as u64 })
}

/// The scores over time of `worst` (a second pass, keeping only their rows).
pub(super) fn timelines(
    run_dir: &Location,
    manifest: &Manifest,
    worst: &[&SeriesRow],
) -> Result<Vec<Timeline>, FeaturesError> {
    if worst.is_empty() {
        return Ok(Vec::new());
    }
    let wanted: HashSet<SeriesKey> = worst.iter().map(|s| (s.device, s.sensor.clone())).collect();
    let devices: HashSet<i64> = worst.iter().map(|s| s.device).collect();
    let mut rows: HashMap<SeriesKey, Vec<(i64, f64, bool)>> = HashMap::new();
    for_each_part(run_dir, manifest, |frame| {
        let read = FeaturesError::polars("read timelines");
        let device = frame.column("device").and_then(|c| c.i64().cloned()).map_err(&read)?;
        let sensor = frame.column("sensor").and_then(|c| c.str().cloned()).map_err(&read)?;
        let ts = frame.column("ts").and_then(|c| c.i64().cloned()).map_err(&read)?;
        let score = frame.column("score").and_then(|c| c.f64().cloned()).map_err(&read)?;
        let anomaly = frame.column("anomaly").and_then(|c| c.bool().cloned()).map_err(&read)?;
        for i in 0..frame.height() {
            let Some(d) = device.get(i) else { continue };
            if !devices.contains(&d) {
                continue;
            }
            let key = (d, sensor.get(i).map(String::from));
            if let (true, Some(t), Some(s)) = (wanted.contains(&key), ts.get(i), score.get(i)) {
                rows.entry(key).or_default().push((t, s, anomaly.get(i).unwrap_or(false)));
            }
        }
        Ok(())
    })?;
    Ok(worst
        .iter()
        .map(|s| {
            let mut points = rows.remove(&(s.device, s.sensor.clone())).unwrap_or_default();
            points.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
            timeline(s, points)
        })
        .collect())
}

/// One series' timeline, bucketed when it has more rows than a chart can show.
fn timeline(s: &SeriesRow, rows: Vec<(i64, f64, bool)>) -> Timeline {
    let mut anomaly_points: Vec<(i64, f64)> =
        rows.iter().filter(|r| r.2).map(|r| (r.0, r.1)).collect();
    if anomaly_points.len() > TIMELINE_ANOMALIES {
        anomaly_points.sort_by(|a, b| a.1.total_cmp(&b.1));
        anomaly_points.truncate(TIMELINE_ANOMALIES);
        anomaly_points.sort_by_key(|p| p.0);
    }
    let bucketed = rows.len() > TIMELINE_POINTS;
    let points = if bucketed {
        let (first, last) = (rows[0].0, rows[rows.len() - 1].0);
        let span = (last - first).max(1) as f64;
        let mut buckets: BTreeMap<usize, (i64, f64)> = BTreeMap::new();
        for (t, score, _) in &rows {
            let b = (((t - first) as f64 / span) * (TIMELINE_POINTS - 1) as f64) as usize;
            let e = buckets.entry(b).or_insert((*t, *score));
            if *score < e.1 {
                *e = (*t, *score);
            }
        }
        buckets.into_values().collect()
    } else {
        rows.iter().map(|r| (r.0, r.1)).collect()
    };
    Timeline {
        key: s.key.clone(),
        rows: s.rows,
        anomalies: s.anomalies,
        points,
        anomaly_points,
        bucketed,
    }
}

/// The drift table's worst rows, read with polars.
pub(super) fn drift(
    output: &Location,
    run_id: &str,
    summary: &DriftSummary,
) -> Result<DriftSection, FeaturesError> {
    let (dir, table) = batchscore_scheduler::table_location(output, run_id, &summary.table)?;
    let url = dir.url_of(&table);
    let damaged = |reason: String| FeaturesError::Table { url: url.clone(), reason };
    let bytes = match dir.get(&table) {
        Ok(bytes) => bytes,
        Err(batchscore_io::IoError::NotFound { .. }) => {
            return Err(damaged("the drift table `_SUCCESS` names is missing".into()));
        }
        Err(e) => return Err(e.into()),
    };
    // Whatever polars cannot read or find in it, the table is damaged.
    let read = |e: polars::prelude::PolarsError| damaged(format!("a damaged drift table: {e}"));
    let frame = ParquetReader::new(Cursor::new(bytes)).finish().map_err(read)?;
    let total = frame.height() as u64;
    let worst = frame
        .lazy()
        .sort_by_exprs(
            [col("psi_decile")],
            polars::prelude::SortMultipleOptions::default()
                .with_order_descending(true)
                .with_nulls_last(true)
                .with_maintain_order(true),
        )
        .limit(DRIFT_ROWS as u32)
        .collect()
        .map_err(&read)?;
    let text = |name: &str| worst.column(name).and_then(|c| c.str().cloned());
    let float = |name: &str| worst.column(name).and_then(|c| c.f64().cloned());
    let key = text("model_key").map_err(&read)?;
    let feature = text("feature").map_err(&read)?;
    let status = text("status").map_err(&read)?;
    let rows = worst.column("rows").and_then(|c| c.u64().cloned()).map_err(&read)?;
    let psi = float("psi_decile").map_err(&read)?;
    let wasserstein = float("wasserstein_norm_q").map_err(&read)?;
    let shift = float("mean_shift_sd").map_err(&read)?;
    let rows = (0..worst.height())
        .map(|i| DriftRow {
            key: key.get(i).unwrap_or_default().to_string(),
            feature: feature.get(i).map(String::from),
            status: status.get(i).unwrap_or_default().to_string(),
            rows: rows.get(i).unwrap_or_default(),
            psi: psi.get(i),
            wasserstein_norm: wasserstein.get(i),
            mean_shift_sd: shift.get(i),
        })
        .collect();
    Ok(DriftSection { summary: summary.clone(), rows, rows_total: total })
}

/// A timestamp in microseconds as RFC 3339 UTC (seconds).
pub(super) fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| us.to_string())
}
