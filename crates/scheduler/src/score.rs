//! Scoring one unit: load each device's model once, score its rows in column batches, and
//! assemble the scored table.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use batchscore_detectors::Detector;
use batchscore_registry::{ModelKey, Registry, RegistryError};

use crate::commit::{DeviceOutcome, DeviceStatus};
use crate::dataset::UnitTable;
use crate::{InputColumns, SchedulerError};

/// Rows handed to a detector per call: bounds the scratch memory of one call.
const SCORE_BATCH_ROWS: usize = 64 * 1024;
/// Model files fetched together from a remote registry: one round trip per group, and at most
/// this many files held per worker. Local registries read one at a time (no latency to hide,
/// less memory).
const MODEL_PREFETCH: usize = 32;

/// The scored output schema: keys, inputs, scores, provenance.
pub(crate) fn output_schema(columns: &InputColumns, sensors: &[String]) -> SchemaRef {
    let mut fields = vec![
        Field::new(&columns.device, DataType::Int64, false),
        Field::new(
            &columns.timestamp,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ];
    fields.extend(sensors.iter().map(|s| Field::new(s, DataType::Float64, true)));
    fields.extend([
        Field::new("score", DataType::Float64, false),
        Field::new("decision", DataType::Float64, false),
        Field::new("is_anomaly", DataType::Boolean, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("run_id", DataType::Utf8, false),
    ]);
    Arc::new(Schema::new(fields))
}

fn failed(device: i64, rows: usize, stage: &str, reason: String) -> DeviceOutcome {
    DeviceOutcome {
        device,
        status: DeviceStatus::Failed,
        rows: rows as u64,
        anomalies: 0,
        model_version: None,
        stage: Some(stage.into()),
        reason: Some(reason),
    }
}

/// An error's message and those of its sources, each said once: many errors repeat their
/// source in their own message, so a source already quoted by the line before is left out.
pub fn error_causes(error: &dyn std::error::Error) -> Vec<String> {
    let mut lines = vec![error.to_string()];
    let mut last = lines[0].clone();
    let mut source = error.source();
    while let Some(e) = source {
        let line = e.to_string();
        if !last.contains(&line) {
            lines.push(line.clone());
        }
        last = line;
        source = e.source();
    }
    lines
}

/// An error and its sources on one line (`outer: inner: innermost`), credentials removed: the
/// form of every failure reason in manifests and failures tables.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let text = error_causes(error).join(": ");
    // Storage errors can quote request URLs; SAS signatures in them must not reach manifests.
    batchscore_io::redact(&batchscore_io::compact_service_errors(&text))
}

/// Scores every device of `table`. Per-device problems become failed outcomes; only storage
/// faults (worth retrying) abort the unit.
pub(crate) fn score_unit(
    table: &UnitTable,
    columns: &InputColumns,
    sensors: &[String],
    registry: &Registry,
    run_id: &str,
) -> Result<(Option<RecordBatch>, Vec<DeviceOutcome>), SchedulerError> {
    let mut outcomes = Vec::with_capacity(table.runs.len());
    let mut rows: Vec<usize> = Vec::new();
    let mut score = Vec::new();
    let mut decision = Vec::new();
    let mut is_anomaly = Vec::new();
    let mut versions: Vec<(String, usize)> = Vec::new();
    let group_size = if registry.is_remote() { MODEL_PREFETCH } else { 1 };
    for group in table.runs.chunks(group_size) {
        let keys: Vec<ModelKey> =
            group.iter().map(|(device, _)| ModelKey::device(*device)).collect();
        for ((device, range), loaded) in group.iter().zip(registry.load_many(&keys)) {
            let (device, range) = (*device, range.clone());
            let n = range.len();
            let model = match loaded {
                Ok(model) => model,
                Err(e) if e.is_retryable() => return Err(SchedulerError::Registry(e)),
                Err(e @ RegistryError::NoModel { .. }) => {
                    outcomes.push(failed(device, n, "model_missing", error_chain(&e)));
                    continue;
                }
                Err(e) => {
                    outcomes.push(failed(device, n, "model_invalid", error_chain(&e)));
                    continue;
                }
            };
            let mut indices = Vec::with_capacity(model.meta.features.len());
            let mut missing = Vec::new();
            for feature in &model.meta.features {
                match sensors.iter().position(|s| s == feature) {
                    Some(i) => indices.push(i),
                    None => missing.push(feature.as_str()),
                }
            }
            if !missing.is_empty() {
                let reason = format!(
                    "model {} expects column(s) {} that the input does not have (input sensors: {})",
                    model.version(),
                    missing.join(", "),
                    sensors.join(", ")
                );
                outcomes.push(failed(device, n, "feature_mismatch", reason));
                continue;
            }
            let start_len = score.len();
            let mut ok = true;
            for chunk_start in (range.start..range.end).step_by(SCORE_BATCH_ROWS) {
                let chunk = chunk_start..(chunk_start + SCORE_BATCH_ROWS).min(range.end);
                let cols: Vec<&[f64]> =
                    indices.iter().map(|&i| &table.sensors[i][chunk.clone()]).collect();
                match model.detector.score(&cols) {
                    Ok(s) => {
                        score.extend(s.score);
                        decision.extend(s.decision);
                        is_anomaly.extend(s.is_anomaly);
                    }
                    Err(e) => {
                        score.truncate(start_len);
                        decision.truncate(start_len);
                        is_anomaly.truncate(start_len);
                        outcomes.push(failed(device, n, "scoring", error_chain(&e)));
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                continue;
            }
            let anomalies = is_anomaly[start_len..].iter().filter(|a| **a).count() as u64;
            rows.extend(range);
            versions.push((model.version().to_string(), n));
            outcomes.push(DeviceOutcome {
                device,
                status: DeviceStatus::Scored,
                rows: n as u64,
                anomalies,
                model_version: Some(model.version().to_string()),
                stage: None,
                reason: None,
            });
        }
    }
    if rows.is_empty() {
        return Ok((None, outcomes));
    }
    let schema = output_schema(columns, sensors);
    let mut arrays: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|&r| table.device[r]))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                rows.iter().map(|&r| table.timestamp_us[r]),
            )
            .with_timezone("UTC"),
        ),
    ];
    for column in &table.sensors {
        arrays.push(Arc::new(Float64Array::from_iter_values(rows.iter().map(|&r| column[r]))));
    }
    let mut version_column =
        arrow::array::StringBuilder::with_capacity(rows.len(), rows.len() * 16);
    for (version, n) in &versions {
        for _ in 0..*n {
            version_column.append_value(version);
        }
    }
    arrays.extend([
        Arc::new(Float64Array::from(score)) as ArrayRef,
        Arc::new(Float64Array::from(decision)),
        Arc::new(BooleanArray::from(is_anomaly)),
        Arc::new(version_column.finish()),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(run_id, rows.len()))),
    ]);
    let batch = RecordBatch::try_new(schema, arrays)
        .map_err(|source| SchedulerError::Arrow { what: "scored", source })?;
    Ok((Some(batch), outcomes))
}
