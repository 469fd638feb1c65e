//! Drift of a run's scored data against each model's training data.
//!
//! While scoring, each series (a device's, or a (device, sensor)'s) observes its feature values
//! into [`Partial`]s against the bins its model stored at training. A unit's partials go to
//! `_drift/unit-NNNNN.bin` before its receipt, so a committed unit always has them, and an
//! attempt that finds the unit committed needs nothing else. When the run completes, the
//! publisher merges every unit's partials per series and feature (units in order, so the
//! figures do not depend on which shard merged) and writes `drift.parquet` beside the parts;
//! `_SUCCESS` records its counts ([`DriftSummary`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use batchscore_drift::{Band, FeatureBins, Figures, Partial};
use batchscore_io::{Location, WriteOptions, encode_parquet};
use batchscore_registry::{Model, ModelKey};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::SchedulerError;

/// The drift table of a complete run, relative to its directory.
pub const DRIFT_TABLE: &str = "drift.parquet";
const DIR: &str = "_drift";
/// Unit files are read this many at a time when the run is published.
const READ_CONCURRENCY: usize = 16;
/// Bounds what decoding a damaged unit file may allocate.
const MAX_UNIT_FILE: usize = 1 << 30;

/// One series' values in one unit, against its model's reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SeriesDrift {
    pub device: i64,
    pub sensor: Option<String>,
    pub model_version: String,
    /// Rows scored.
    pub rows: u64,
    /// One entry per model feature; `None` when the model has no drift reference (imported
    /// models, models of format version 2): drift unknown.
    pub features: Option<Vec<FeatureDrift>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FeatureDrift {
    pub feature: String,
    /// `None` when the feature had no finite training value.
    pub reference: Option<FeatureBins>,
    pub partial: Partial,
}

impl SeriesDrift {
    /// Observes a series' feature columns (model order) against `model`'s reference.
    pub fn observe(
        (device, sensor): (i64, Option<String>),
        model: &Model,
        columns: &[&[f64]],
    ) -> Self {
        let rows = columns.first().map_or(0, |c| c.len() as u64);
        let features = model.drift.as_ref().map(|reference| {
            model
                .meta
                .features
                .iter()
                .zip(&reference.features)
                .zip(columns)
                .map(|((feature, bins), values)| FeatureDrift {
                    feature: feature.clone(),
                    partial: bins.as_ref().map(|b| b.observe(values)).unwrap_or_default(),
                    reference: bins.clone(),
                })
                .collect()
        });
        Self { device, sensor, model_version: model.version().to_string(), rows, features }
    }

    fn key(&self) -> (i64, Option<String>) {
        (self.device, self.sensor.clone())
    }

    /// Adds a later unit's observation of the same series.
    fn merge(&mut self, other: SeriesDrift) {
        self.rows += other.rows;
        if let (Some(mine), Some(theirs)) = (&mut self.features, other.features) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                a.partial.merge(&b.partial);
            }
        }
    }
}

/// What one unit observed, as stored in `_drift/unit-NNNNN.bin`.
#[derive(Debug, Serialize, Deserialize)]
struct UnitDrift {
    run_id: String,
    unit: usize,
    series: Vec<SeriesDrift>,
}

/// The path of unit `unit`'s partials.
pub(crate) fn unit_path(unit: usize) -> String {
    format!("{DIR}/unit-{unit:05}.bin")
}

/// Encodes a unit's partials (deterministic bytes: concurrent attempts write the same file).
pub(crate) fn encode_unit(
    run_id: &str,
    unit: usize,
    series: Vec<SeriesDrift>,
) -> Result<Bytes, SchedulerError> {
    let record = UnitDrift { run_id: run_id.to_string(), unit, series };
    bincode::serde::encode_to_vec(&record, bincode::config::standard())
        .map(Bytes::from)
        .map_err(|e| SchedulerError::Encode { what: "drift partials", reason: e.to_string() })
}

/// Counts of a run's drift table, recorded in `_SUCCESS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftSummary {
    /// The table, relative to the run's directory.
    pub table: String,
    /// Series scored, and those whose model has no drift reference (drift unknown).
    pub series: u64,
    pub series_unknown: u64,
    /// Features measured, by PSI band.
    pub features_stable: u64,
    pub features_moderate: u64,
    pub features_significant: u64,
    /// Distinct devices with at least one feature of PSI > 0.25.
    pub devices_drifted: u64,
}

/// Merges every unit's partials of the run in `out` (`units` units) and writes the drift
/// table; returns its counts.
pub(crate) fn publish(
    out: &Location,
    run_id: &str,
    units: usize,
) -> Result<DriftSummary, SchedulerError> {
    let mut paths: Vec<(usize, String)> = out
        .list(DIR)?
        .into_iter()
        .filter_map(|e| {
            let unit = e.path.strip_prefix("_drift/unit-")?.strip_suffix(".bin")?.parse().ok()?;
            (unit < units).then_some((unit, e.path))
        })
        .collect();
    paths.sort();
    let rels: Vec<&str> = paths.iter().map(|(_, p)| p.as_str()).collect();
    let mut merged: BTreeMap<(i64, Option<String>), SeriesDrift> = BTreeMap::new();
    for ((unit, path), bytes) in paths.iter().zip(out.get_many(&rels, READ_CONCURRENCY)) {
        let record = decode_unit(out, path, &bytes?)?;
        if record.run_id != run_id || record.unit != *unit {
            return Err(SchedulerError::CorruptRecord {
                url: out.url_of(path),
                reason: format!("partials of run `{}` unit {}", record.run_id, record.unit),
            });
        }
        for series in record.series {
            match merged.entry(series.key()) {
                std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().merge(series),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(series);
                }
            }
        }
    }
    let mut merged: Vec<SeriesDrift> = merged.into_values().collect();
    merged.sort_by(|a, b| {
        crate::dataset::series_order(
            (a.device, a.sensor.as_deref()),
            (b.device, b.sensor.as_deref()),
        )
    });
    let (batch, summary) = table(run_id, &merged)?;
    let bytes = encode_parquet(&batch.schema(), &[batch], &WriteOptions::default())?;
    out.put_if_absent(DRIFT_TABLE, bytes)?;
    Ok(summary)
}

fn decode_unit(out: &Location, path: &str, bytes: &[u8]) -> Result<UnitDrift, SchedulerError> {
    let config = bincode::config::standard().with_limit::<MAX_UNIT_FILE>();
    let damaged = |what: String| {
        // The unit is committed, so no rerun rewrites its partials on its own.
        let receipt = path
            .strip_prefix("_drift/unit-")
            .and_then(|p| p.strip_suffix(".bin"))
            .map(|n| format!("_receipts/part-{n}.json"))
            .unwrap_or_else(|| "its receipt".into());
        SchedulerError::CorruptRecord {
            url: out.url_of(path),
            reason: format!(
                "{what}; delete it and {receipt} and run the same command again to recompute \
                 the unit"
            ),
        }
    };
    match bincode::serde::decode_from_slice::<UnitDrift, _>(bytes, config) {
        Ok((record, read)) if read == bytes.len() => Ok(record),
        Ok(_) => Err(damaged("trailing bytes".into())),
        Err(e) => Err(damaged(format!("damaged drift partials ({e})"))),
    }
}

/// One row of the drift table.
#[derive(Default)]
struct Row {
    key: String,
    device: i64,
    sensor: Option<String>,
    feature: Option<String>,
    model_version: String,
    status: &'static str,
    rows: u64,
    non_finite_rows: u64,
    figures: Option<Figures>,
    mean_train: Option<f64>,
}

/// The drift table of merged series and its counts. One row per (series, feature); a series
/// whose model has no reference gets one row of status `unknown`.
fn table(
    run_id: &str,
    merged: &[SeriesDrift],
) -> Result<(RecordBatch, DriftSummary), SchedulerError> {
    let mut rows = Vec::new();
    let mut summary = DriftSummary { table: DRIFT_TABLE.into(), ..DriftSummary::default() };
    let mut drifted = BTreeSet::new();
    for series in merged {
        summary.series += 1;
        let base = Row {
            key: ModelKey::name(series.device, series.sensor.as_deref()),
            device: series.device,
            sensor: series.sensor.clone(),
            model_version: series.model_version.clone(),
            rows: series.rows,
            ..Row::default()
        };
        let Some(features) = &series.features else {
            summary.series_unknown += 1;
            rows.push(Row { status: "unknown", ..base });
            continue;
        };
        for f in features {
            let figures = f.reference.as_ref().and_then(|bins| Figures::of(bins, &f.partial));
            let status = match (&f.reference, figures) {
                (None, _) => "unknown",
                (Some(_), None) => "no_data",
                (Some(_), Some(figures)) => {
                    match figures.band {
                        Band::Stable => summary.features_stable += 1,
                        Band::Moderate => summary.features_moderate += 1,
                        Band::Significant => {
                            summary.features_significant += 1;
                            drifted.insert(series.device);
                        }
                    }
                    figures.band.as_str()
                }
            };
            rows.push(Row {
                key: base.key.clone(),
                device: base.device,
                sensor: base.sensor.clone(),
                feature: Some(f.feature.clone()),
                model_version: base.model_version.clone(),
                status,
                rows: f.partial.rows(),
                non_finite_rows: f.partial.non_finite,
                figures,
                mean_train: f.reference.as_ref().map(|b| b.mean),
            });
        }
    }
    summary.devices_drifted = drifted.len() as u64;
    let figure = |get: fn(&Figures) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.figures.as_ref().map(get))))
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("model_key", DataType::Utf8, false),
        Field::new("device_id", DataType::Int64, false),
        Field::new("sensor", DataType::Utf8, true),
        Field::new("feature", DataType::Utf8, true),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("non_finite_rows", DataType::UInt64, false),
        Field::new("psi_decile", DataType::Float64, true),
        Field::new("wasserstein_norm_q", DataType::Float64, true),
        Field::new("mean", DataType::Float64, true),
        Field::new("mean_train", DataType::Float64, true),
        Field::new("mean_shift_sd", DataType::Float64, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![run_id; rows.len()])),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.key.as_str()))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.device))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.sensor.as_deref()))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.feature.as_deref()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.model_version.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.status))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.rows))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.non_finite_rows))),
        figure(|f| f.psi),
        figure(|f| f.wasserstein_norm),
        figure(|f| f.mean),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.mean_train))),
        figure(|f| f.mean_shift_sd),
    ];
    let batch = RecordBatch::try_new(schema, columns)
        .map_err(|source| SchedulerError::Arrow { what: "drift table", source })?;
    Ok((batch, summary))
}

impl DriftSummary {
    /// "12 devices drifted, PSI > 0.25", with the unknowns when there are any.
    pub fn line(&self) -> String {
        let devices = if self.devices_drifted == 1 { "device" } else { "devices" };
        let mut line = format!("{} {devices} drifted, PSI > 0.25", self.devices_drifted);
        if self.features_moderate > 0 {
            line.push_str(&format!("; {} features in 0.1-0.25", self.features_moderate));
        }
        if self.series_unknown > 0 {
            line.push_str(&format!(
                "; drift unknown for {} series (models without a training reference)",
                self.series_unknown
            ));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;

    fn series(device: i64, features: Option<Vec<FeatureDrift>>) -> SeriesDrift {
        SeriesDrift { device, sensor: None, model_version: "v".into(), rows: 4, features }
    }

    #[test]
    fn models_without_a_reference_are_unknown_and_counted() {
        let bins = FeatureBins::of(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        let measured = FeatureDrift {
            feature: "x".into(),
            partial: bins.observe(&[10.0, 11.0, 12.0, 13.0]),
            reference: Some(bins.clone()),
        };
        let no_data = FeatureDrift {
            feature: "y".into(),
            partial: Partial::default(),
            reference: Some(bins),
        };
        let untrained =
            FeatureDrift { feature: "z".into(), partial: Partial::default(), reference: None };
        let merged = [series(1, None), series(2, Some(vec![measured, no_data, untrained]))];
        let (batch, summary) = table("run-x", &merged).unwrap();
        let status: Vec<&str> =
            batch.column_by_name("status").unwrap().as_string::<i32>().iter().flatten().collect();
        assert_eq!(status, ["unknown", "significant", "no_data", "unknown"]);
        assert_eq!((summary.series, summary.series_unknown), (2, 1));
        assert_eq!((summary.features_significant, summary.devices_drifted), (1, 1));
        assert!(summary.line().starts_with("1 device drifted, PSI > 0.25; drift unknown for 1"));
    }

    #[test]
    fn unit_files_round_trip_and_damage_is_an_error() {
        let bins = FeatureBins::of(&[1.0, 2.0]).unwrap();
        let feature = FeatureDrift {
            feature: "x".into(),
            partial: bins.observe(&[1.5]),
            reference: Some(bins),
        };
        let bytes = encode_unit("run-x", 3, vec![series(1, Some(vec![feature]))]).unwrap();
        let storage = batchscore_io::Storage::new().unwrap();
        let out = storage.open("memory:///drift").unwrap();
        let record = decode_unit(&out, "p", &bytes).unwrap();
        assert_eq!((record.run_id.as_str(), record.unit, record.series.len()), ("run-x", 3, 1));
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode_unit(&out, "p", &bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
