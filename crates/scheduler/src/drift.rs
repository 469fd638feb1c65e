//! Drift of a run's scored data against each model's training data.
//!
//! While scoring, each series (a device's, or a (device, sensor)'s) observes its feature values
//! into [`Partial`]s against the bins its model stored at training. A series whose device no
//! other unit of the plan can hold is complete in its unit, which records its final figures; a
//! series that may continue in another unit records its counts and its reference. A unit's
//! record goes to `_drift/unit-NNNNN.bin` before its receipt, so a committed unit always has
//! it, and an attempt that finds the unit committed needs nothing else. When the run
//! completes, the publisher merges the counts of split series (units in order, so the figures
//! do not depend on which shard merged), writes the drift table in the run's tables folder
//! (`OUTPUT/_runs/RUN_ID/drift.parquet`, where no reader of the parts takes it for scored rows),
//! and `_SUCCESS` records its counts ([`DriftSummary`]).

use std::borrow::Cow;
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
use crate::layout::{DRIFT_TABLE, tables_path};

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
    pub features: Observed,
}

/// What a unit records of a series' features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Observed {
    /// The model has no drift reference (models imported from scikit-learn): drift unknown.
    Unknown,
    /// Other units may hold rows of the series: counts and the reference they were counted
    /// against, one per model feature, merged when the run is published.
    Partials(Vec<FeatureDrift>),
    /// No other unit of the plan can hold rows of the series: its figures, final here. Most
    /// series are this, and their unit files stay a few dozen bytes per feature.
    Final(Vec<FeatureRow>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FeatureDrift {
    pub feature: String,
    /// `None` when the feature had no finite training value.
    pub reference: Option<FeatureBins>,
    pub partial: Partial,
}

/// One feature's line of the drift table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FeatureRow {
    pub feature: String,
    pub non_finite: u64,
    pub outcome: FeatureOutcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum FeatureOutcome {
    /// The feature had no finite training value.
    Unknown,
    /// No finite value was scored.
    NoData {
        mean_train: f64,
    },
    Measured {
        mean_train: f64,
        figures: Figures,
    },
}

impl FeatureDrift {
    /// The feature's line once every unit's counts are in.
    fn row(&self) -> FeatureRow {
        let outcome = match &self.reference {
            None => FeatureOutcome::Unknown,
            Some(bins) => match Figures::of(bins, &self.partial) {
                None => FeatureOutcome::NoData { mean_train: bins.mean },
                Some(figures) => FeatureOutcome::Measured { mean_train: bins.mean, figures },
            },
        };
        FeatureRow { feature: self.feature.clone(), non_finite: self.partial.non_finite, outcome }
    }
}

impl SeriesDrift {
    /// Observes a series' feature columns (model order) against `model`'s reference. `whole`
    /// says that no other unit holds rows of the series, so its figures are final.
    pub fn observe(
        (device, sensor): (i64, Option<String>),
        model: &Model,
        columns: &[&[f64]],
        whole: bool,
    ) -> Self {
        let rows = columns.first().map_or(0, |c| c.len() as u64);
        let features = match &model.drift {
            None => Observed::Unknown,
            Some(reference) => {
                let partials =
                    model.meta.features.iter().zip(&reference.features).zip(columns).map(
                        |((feature, bins), values)| FeatureDrift {
                            feature: feature.clone(),
                            partial: bins.as_ref().map(|b| b.observe(values)).unwrap_or_default(),
                            reference: bins.clone(),
                        },
                    );
                match whole {
                    true => Observed::Final(partials.map(|f| f.row()).collect()),
                    false => Observed::Partials(partials.collect()),
                }
            }
        };
        Self { device, sensor, model_version: model.version().to_string(), rows, features }
    }

    fn key(&self) -> (i64, Option<String>) {
        (self.device, self.sensor.clone())
    }

    /// Adds a later unit's observation of the same series.
    fn merge(&mut self, other: SeriesDrift) {
        self.rows += other.rows;
        if let (Observed::Partials(mine), Observed::Partials(theirs)) =
            (&mut self.features, other.features)
        {
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
    /// The table, relative to the output location (`_runs/RUN_ID/drift.parquet`; runs of
    /// earlier builds: `drift.parquet`, relative to the run's folder).
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
/// table under `output`; returns its counts.
pub(crate) fn publish(
    output: &Location,
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
    let mut whole: Vec<SeriesDrift> = Vec::new();
    let mut split: BTreeMap<(i64, Option<String>), SeriesDrift> = BTreeMap::new();
    for ((unit, path), bytes) in paths.iter().zip(out.get_many(&rels, READ_CONCURRENCY)) {
        let record = decode_unit(out, path, &bytes?)?;
        if record.run_id != run_id || record.unit != *unit {
            return Err(SchedulerError::CorruptRecord {
                url: out.url_of(path),
                reason: format!("partials of run `{}` unit {}", record.run_id, record.unit),
            });
        }
        for series in record.series {
            // A series of a device other units share records partials, or nothing known (a
            // model without a drift reference): both merge here. Only final figures stand alone.
            if matches!(series.features, Observed::Final(_)) {
                whole.push(series);
                continue;
            }
            match split.entry(series.key()) {
                std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().merge(series),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(series);
                }
            }
        }
    }
    let mut merged = whole;
    merged.extend(split.into_values());
    merged.sort_by(|a, b| {
        crate::dataset::series_order(
            (a.device, a.sensor.as_deref()),
            (b.device, b.sensor.as_deref()),
        )
    });
    if let Some(pair) = merged.windows(2).find(|p| p[0].key() == p[1].key()) {
        // Units claim a series whole only when the plan gives no other unit its device.
        return Err(SchedulerError::CorruptRecord {
            url: out.url_of(DIR),
            reason: format!(
                "series {} is in more than one unit's final drift figures",
                ModelKey::name(pair[0].device, pair[0].sensor.as_deref())
            ),
        });
    }
    let (batch, summary) = table(run_id, &merged)?;
    let bytes = encode_parquet(&batch.schema(), &[batch], &WriteOptions::default())?;
    output.put_if_absent(&summary.table, bytes)?;
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

/// One row of the drift table, borrowing from the merged series.
struct Row<'a> {
    /// Position of the series in the merged list.
    series: usize,
    feature: Option<&'a str>,
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
    // Series split over units become lines here, once all their counts are in.
    let lines: Vec<Option<Cow<'_, [FeatureRow]>>> = merged
        .iter()
        .map(|series| match &series.features {
            Observed::Final(features) => Some(Cow::Borrowed(features.as_slice())),
            Observed::Partials(features) => {
                Some(Cow::Owned(features.iter().map(FeatureDrift::row).collect()))
            }
            Observed::Unknown => None,
        })
        .collect();
    let keys: Vec<String> =
        merged.iter().map(|s| ModelKey::name(s.device, s.sensor.as_deref())).collect();
    let mut rows =
        Vec::with_capacity(lines.iter().map(|l| l.as_ref().map_or(1, |f| f.len())).sum());
    let mut summary =
        DriftSummary { table: tables_path(run_id, DRIFT_TABLE), ..DriftSummary::default() };
    let mut drifted = BTreeSet::new();
    for (at, (series, features)) in merged.iter().zip(&lines).enumerate() {
        summary.series += 1;
        let Some(features) = features else {
            summary.series_unknown += 1;
            rows.push(Row {
                series: at,
                feature: None,
                status: "unknown",
                rows: series.rows,
                non_finite_rows: 0,
                figures: None,
                mean_train: None,
            });
            continue;
        };
        for f in features.iter() {
            let (status, figures, mean_train) = match f.outcome {
                FeatureOutcome::Unknown => ("unknown", None, None),
                FeatureOutcome::NoData { mean_train } => ("no_data", None, Some(mean_train)),
                FeatureOutcome::Measured { mean_train, figures } => {
                    match figures.band {
                        Band::Stable => summary.features_stable += 1,
                        Band::Moderate => summary.features_moderate += 1,
                        Band::Significant => {
                            summary.features_significant += 1;
                            drifted.insert(series.device);
                        }
                    }
                    (figures.band.as_str(), Some(figures), Some(mean_train))
                }
            };
            rows.push(Row {
                series: at,
                feature: Some(&f.feature),
                status,
                rows: figures.map_or(0, |f| f.rows),
                non_finite_rows: f.non_finite,
                figures,
                mean_train,
            });
        }
    }
    summary.devices_drifted = drifted.len() as u64;
    let figure = |get: fn(&Figures) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.figures.as_ref().map(get))))
    };
    let series = |r: &Row<'_>| &merged[r.series];
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
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| keys[r.series].as_str()))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| series(r).device))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| series(r).sensor.as_deref()))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.feature))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| series(r).model_version.as_str()),
        )),
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
        let features = features.map_or(Observed::Unknown, Observed::Partials);
        SeriesDrift { device, sensor: None, model_version: "v".into(), rows: 4, features }
    }

    /// Stores `series` as unit `unit`'s drift file.
    fn put(out: &Location, unit: usize, series: Vec<SeriesDrift>) {
        let bytes = encode_unit("run-x", unit, series).unwrap();
        out.put_if_absent(&unit_path(unit), bytes).unwrap();
    }

    fn whole(device: i64, features: &[FeatureDrift]) -> SeriesDrift {
        let features = Observed::Final(features.iter().map(FeatureDrift::row).collect());
        SeriesDrift { device, sensor: None, model_version: "v".into(), rows: 4, features }
    }

    /// A series split over units and merged at publish gets the line a series counted whole
    /// in one unit gets; the table is in series order whatever the units' order.
    #[test]
    fn split_series_merge_to_the_figures_of_whole_ones() {
        let bins = FeatureBins::of(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let values = [0.5, 1.5, 2.5, 4.5, f64::NAN, 9.0];
        let feature = |values: &[f64]| FeatureDrift {
            feature: "x".into(),
            partial: bins.observe(values),
            reference: Some(bins.clone()),
        };
        let storage = batchscore_io::Storage::new().unwrap();
        let split = storage.open("memory:///split").unwrap();
        let mut first = series(7, Some(vec![feature(&values[..2])]));
        first.rows = 2;
        put(&split, 0, vec![whole(9, &[feature(&values)]), first]);
        put(&split, 1, vec![series(7, Some(vec![feature(&values[2..])]))]);
        let together = storage.open("memory:///together").unwrap();
        let mut seven = whole(7, &[feature(&values)]);
        seven.rows = 6;
        put(&together, 0, vec![seven, whole(9, &[feature(&values)])]);
        let read = |out: &Location| {
            publish(out, out, "run-x", 2).unwrap();
            out.get(&tables_path("run-x", DRIFT_TABLE)).unwrap()
        };
        assert_eq!(read(&split), read(&together));
        let batches = batchscore_io::decode_parquet("drift", read(&split)).unwrap();
        let devices = batches[0].column_by_name("device_id").unwrap();
        let devices = devices.as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(devices.values().to_vec(), [7, 9]);
    }

    /// Regression (the side-by-side benchmark on sorted input with imported models): a device
    /// split over two units whose model has no drift reference is one unknown series, with the
    /// rows of both units, not "a series final in two units".
    #[test]
    fn an_unknown_series_split_over_units_merges() {
        let storage = batchscore_io::Storage::new().unwrap();
        let out = storage.open("memory:///unknown-split").unwrap();
        put(&out, 0, vec![series(3, None), series(5, None)]);
        put(&out, 1, vec![series(5, None)]);
        let summary = publish(&out, &out, "run-x", 2).unwrap();
        assert_eq!(summary.series_unknown, 2);
        assert_eq!(summary.table, "_runs/run-x/drift.parquet");
        let batches =
            batchscore_io::decode_parquet("drift", out.get(&summary.table).unwrap()).unwrap();
        let devices = batches[0].column_by_name("device_id").unwrap();
        let devices = devices.as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(devices.values().to_vec(), [3, 5]);
        let rows = batches[0].column_by_name("rows").unwrap();
        let rows = rows.as_primitive::<arrow::datatypes::UInt64Type>();
        assert_eq!(rows.values().to_vec(), [4, 8]);
    }

    #[test]
    fn a_series_final_in_two_units_is_refused() {
        let bins = FeatureBins::of(&[1.0, 2.0]).unwrap();
        let f = FeatureDrift {
            feature: "x".into(),
            partial: bins.observe(&[1.0]),
            reference: Some(bins),
        };
        let storage = batchscore_io::Storage::new().unwrap();
        let out = storage.open("memory:///twice").unwrap();
        for unit in 0..2 {
            put(&out, unit, vec![whole(3, std::slice::from_ref(&f))]);
        }
        let err = publish(&out, &out, "run-x", 2).unwrap_err().to_string();
        assert!(err.contains("more than one unit"), "{err}");
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
