//! Scoring one unit: load each series' model once (a device's, or a (device, sensor)'s), score
//! its rows in column batches, and assemble the part's table.

use arrow::array::RecordBatch;
use batchscore_detectors::Detector;
use batchscore_registry::{ModelKey, Registry, RegistryError};

use batchscore_io::error_chain;

use crate::SchedulerError;
use crate::commit::{DeviceOutcome, DeviceStatus};
use crate::dataset::{Columns, Series, Shape, UnitTable};
use crate::drift::SeriesDrift;
use crate::output::{OutputSpec, ScoredRows};
use crate::plan::SharedDevices;

/// Rows handed to a detector per call: bounds the scratch memory of one call.
const SCORE_BATCH_ROWS: usize = 64 * 1024;
/// Model files fetched together from a remote registry: a pack's worth, so a group costs a
/// ranged request or two (neighbouring series share packs) and a worker holds at most this
/// many files (~13 MB of forests). Local registries read one at a time (no latency to hide,
/// less memory).
const MODEL_PREFETCH: usize = batchscore_registry::PACK_MODELS;

fn failed(series: &Key, rows: usize, stage: &str, reason: String) -> DeviceOutcome {
    DeviceOutcome {
        device: series.0,
        sensor: series.1.clone(),
        status: DeviceStatus::Failed,
        rows: rows as u64,
        anomalies: 0,
        duplicate_rows: 0,
        model_version: None,
        stage: Some(stage.into()),
        reason: Some(reason),
    }
}

/// A series' device and sensor name, as recorded in outcomes.
type Key = (i64, Option<String>);

/// The model key of a series: the device's, or `DEVICE.SENSOR`.
fn model_key(key: &Key) -> Result<ModelKey, RegistryError> {
    match &key.1 {
        None => Ok(ModelKey::device(key.0)),
        Some(sensor) => ModelKey::series(key.0, sensor),
    }
}

/// Which of the table's value columns feed the model, in model order, or why none can.
fn feature_columns(
    columns: &Columns,
    model: &batchscore_registry::Model,
) -> Result<Vec<usize>, String> {
    let features = &model.meta.features;
    match &columns.shape {
        Shape::Wide { sensors } => {
            let mut indices = Vec::with_capacity(features.len());
            let mut missing = Vec::new();
            for feature in features {
                match sensors.iter().position(|s| s == feature) {
                    Some(i) => indices.push(i),
                    None => missing.push(feature.as_str()),
                }
            }
            if missing.is_empty() {
                Ok(indices)
            } else {
                Err(format!(
                    "model {} expects column(s) {} that the input does not have (input sensors: {})",
                    model.version(),
                    missing.join(", "),
                    sensors.join(", ")
                ))
            }
        }
        // A long-layout series is one sensor's values: its model must be univariate, whatever
        // its feature is called.
        Shape::Long { .. } if features.len() == 1 => Ok(vec![0]),
        Shape::Long { value, .. } => Err(format!(
            "model {} expects {} features ({}); in the long layout each (device, sensor) series \
             is scored on its `{value}` column alone, by a model of one feature",
            model.version(),
            features.len(),
            features.join(", ")
        )),
    }
}

/// Records in each series' outcome how many of its rows repeat the timestamp of the row before
/// (rows are sorted by time within a series). They are scored as given, and counted so that a
/// duplicated feed does not go unnoticed.
fn count_duplicates(table: &UnitTable, outcomes: &mut [DeviceOutcome]) {
    let mut duplicates: std::collections::HashMap<Key, u64> = std::collections::HashMap::new();
    for series in &table.runs {
        let ts = &table.timestamp_us[series.rows.clone()];
        let n = ts.windows(2).filter(|w| w[0] == w[1]).count() as u64;
        if n > 0 {
            duplicates.insert((series.device, table.sensor_name(series).map(String::from)), n);
        }
    }
    if duplicates.is_empty() {
        return;
    }
    for outcome in outcomes {
        let key = (outcome.device, outcome.sensor.clone());
        outcome.duplicate_rows = duplicates.get(&key).copied().unwrap_or(0);
    }
}

/// What scoring a unit produced.
pub(crate) struct ScoredUnit {
    /// The part's rows; `None` when no series scored.
    pub batch: Option<RecordBatch>,
    pub outcomes: Vec<DeviceOutcome>,
    /// Drift partials of every scored series.
    pub drift: Vec<SeriesDrift>,
}

/// Scores every series of `table`. Per-series problems become failed outcomes; only storage
/// faults (worth retrying) abort the unit. With `drift`, each scored series is observed against
/// its model's reference: final figures unless other units hold its device too.
pub(crate) fn score_unit(
    table: &UnitTable,
    columns: &Columns,
    registry: &Registry,
    run_id: &str,
    output: &OutputSpec,
    drift: Option<&SharedDevices>,
) -> Result<ScoredUnit, SchedulerError> {
    let mut outcomes = Vec::with_capacity(table.runs.len());
    let mut observed = Vec::new();
    let mut scored = ScoredRows::default();
    // On a remote registry the models of a group of series are fetched together.
    let group_size = if registry.is_remote() { MODEL_PREFETCH } else { 1 };
    for group in table.runs.chunks(group_size) {
        let mut pending: Vec<(&Series, Key)> = Vec::with_capacity(group.len());
        let mut keys = Vec::with_capacity(group.len());
        for series in group {
            let key: Key = (series.device, table.sensor_name(series).map(String::from));
            match model_key(&key) {
                Ok(model_key) => {
                    pending.push((series, key));
                    keys.push(model_key);
                }
                Err(e) => {
                    outcomes.push(failed(&key, series.rows.len(), "model_key", error_chain(&e)))
                }
            }
        }
        for ((series, key), loaded) in pending.iter().zip(registry.load_many(&keys)) {
            let n = series.rows.len();
            let model = match loaded {
                Ok(model) => model,
                Err(e) if e.is_retryable() => return Err(SchedulerError::Registry(e)),
                Err(e @ RegistryError::NoModel { .. }) => {
                    outcomes.push(failed(key, n, "model_missing", error_chain(&e)));
                    continue;
                }
                Err(e) => {
                    outcomes.push(failed(key, n, "model_invalid", error_chain(&e)));
                    continue;
                }
            };
            let (outcome, features) =
                score_series(table, columns, series, key, &model, &mut scored);
            // A scored series' feature columns, counted against the model's training bins.
            if let (Some(indices), Some(shared)) = (features, drift) {
                let rows = series.rows.clone();
                let values: Vec<&[f64]> =
                    indices.iter().map(|&i| &table.values[i][rows.clone()]).collect();
                let whole = !shared.contains(key.0);
                observed.push(SeriesDrift::observe(key.clone(), &model, &values, whole));
            }
            outcomes.push(outcome);
        }
    }
    count_duplicates(table, &mut outcomes);
    let batch = match scored.rows.is_empty() {
        true => None,
        false => Some(output.batch(columns, table, scored, run_id)?),
    };
    Ok(ScoredUnit { batch, outcomes, drift: observed })
}

/// Scores one series with its model in column batches, appending its rows to `scored`; a
/// failure leaves `scored` as it was and is the series' outcome. A scored series also returns
/// the table columns of its model's features.
fn score_series(
    table: &UnitTable,
    columns: &Columns,
    series: &Series,
    key: &Key,
    model: &batchscore_registry::Model,
    scored: &mut ScoredRows,
) -> (DeviceOutcome, Option<Vec<usize>>) {
    let range = series.rows.clone();
    let n = range.len();
    let indices = match feature_columns(columns, model) {
        Ok(indices) => indices,
        Err(reason) => return (failed(key, n, "feature_mismatch", reason), None),
    };
    let start_len = scored.score.len();
    for chunk_start in (range.start..range.end).step_by(SCORE_BATCH_ROWS) {
        let chunk = chunk_start..(chunk_start + SCORE_BATCH_ROWS).min(range.end);
        let cols: Vec<&[f64]> = indices.iter().map(|&i| &table.values[i][chunk.clone()]).collect();
        match model.detector.score(&cols) {
            Ok(s) => {
                scored.score.extend(s.score);
                scored.decision.extend(s.decision);
                scored.is_anomaly.extend(s.is_anomaly);
            }
            Err(e) => {
                scored.score.truncate(start_len);
                scored.decision.truncate(start_len);
                scored.is_anomaly.truncate(start_len);
                return (failed(key, n, "scoring", error_chain(&e)), None);
            }
        }
    }
    let anomalies = scored.is_anomaly[start_len..].iter().filter(|a| **a).count() as u64;
    scored.rows.extend(range.clone());
    scored.versions.push((model.version().to_string(), n));
    let outcome = DeviceOutcome {
        device: key.0,
        sensor: key.1.clone(),
        status: DeviceStatus::Scored,
        rows: n as u64,
        anomalies,
        duplicate_rows: 0,
        model_version: Some(model.version().to_string()),
        stage: None,
        reason: None,
    };
    (outcome, Some(indices))
}
