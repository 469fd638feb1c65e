//! The records of the commit protocol: per-unit receipts, shard manifests, the plan record,
//! the failures table, and how outcomes of split series merge. Serialised as they are stored.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use batchscore_io::{Location, WriteOptions, encode_parquet};
use serde::{Deserialize, Serialize};

use crate::SchedulerError;

pub(crate) const FORMAT: u32 = 1;
pub(crate) const SUCCESS: &str = "_SUCCESS";
pub(crate) const PLAN: &str = "_plan.json";

/// What `_plan.json` holds: what the run id stands for, fixed by the first attempt of any shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanRecord {
    pub format: u32,
    pub run_id: String,
    /// Everything that determines the output (input files, registry index, selection, window,
    /// columns, unit bounds), hashed.
    pub fingerprint: String,
    /// A digest per part of the fingerprint (input files, registry index, window, ...), so a
    /// refused rerun can say what differs; absent in records of older builds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, String>,
    /// `(path, size, version tag)` of every input file the plan read, in records of builds that
    /// stored no plan (the stored plan lists them now: see [`PlanRecord::file_identities`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<(String, u64, String)>,
    pub units: usize,
    /// The shard count every shard of the run must use; absent in records of older builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_count: Option<u32>,
    /// The run-level settings (no shard index, no thread count): `_SUCCESS` records these,
    /// whichever shard finishes last.
    #[serde(default)]
    pub settings: serde_json::Value,
    /// What the first shard's scan found, so the others need not scan again; absent in
    /// records of older builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<crate::stored::StoredPlan>,
}

/// What happened to one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    Scored,
    Failed,
    /// Selected, but the input has no rows for it in the window.
    NoInput,
}

/// One series' outcome (a device's, or in the long layout a (device, sensor)'s), as recorded
/// in receipts and manifests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceOutcome {
    pub device: i64,
    /// The sensor of a long-layout series; absent for device models (and for a selected device
    /// with no rows at all).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sensor: Option<String>,
    pub status: DeviceStatus,
    pub rows: u64,
    pub anomalies: u64,
    /// Rows whose (device, sensor, timestamp) repeats an earlier row of the series: scored as
    /// given (one output row per input row), and counted here.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub duplicate_rows: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub model_version: Option<String>,
    /// Where it failed: `model_key` (the sensor name cannot be part of a key),
    /// `model_missing`, `model_invalid`, `feature_mismatch` or `scoring`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

impl DeviceOutcome {
    /// The model key the outcome is about: `DEVICE` or `DEVICE.SENSOR`.
    pub fn model_key(&self) -> String {
        batchscore_registry::ModelKey::name(self.device, self.sensor.as_deref())
    }

    /// Orders outcomes by device, then sensor (integers by value).
    pub(crate) fn order(a: &Self, b: &Self) -> std::cmp::Ordering {
        crate::dataset::series_order(
            (a.device, a.sensor.as_deref()),
            (b.device, b.sensor.as_deref()),
        )
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One committed part file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    pub unit: usize,
    /// Path relative to the run's directory.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

impl PartInfo {
    /// Reads the part from the run's folder `run_dir` and checks it is the part committed: the
    /// size and SHA-256 recorded. A missing or altered part is a damaged run.
    pub fn read_checked(&self, run_dir: &Location) -> Result<bytes::Bytes, SchedulerError> {
        use sha2::Digest;
        let url = run_dir.url_of(&self.path);
        let damaged = |reason: String| SchedulerError::CorruptRecord { url: url.clone(), reason };
        let bytes = match run_dir.get(&self.path) {
            Ok(bytes) => bytes,
            Err(batchscore_io::IoError::NotFound { .. }) => {
                return Err(damaged("a part `_SUCCESS` names is missing".into()));
            }
            Err(e) => return Err(e.into()),
        };
        if bytes.len() as u64 != self.bytes {
            return Err(damaged(format!(
                "{} bytes, `_SUCCESS` recorded {}: the part was changed after its run",
                bytes.len(),
                self.bytes
            )));
        }
        if hex::encode(sha2::Sha256::digest(&bytes)) != self.sha256 {
            return Err(damaged(
                "its SHA-256 is not the one `_SUCCESS` recorded: the part was changed after its \
                 run"
                .into(),
            ));
        }
        Ok(bytes)
    }
}

/// What a unit committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Receipt {
    pub format: u32,
    pub run_id: String,
    pub unit: usize,
    pub part: Option<PartInfo>,
    pub devices: Vec<DeviceOutcome>,
}

/// Counts over a manifest's devices and parts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub units: u64,
    pub parts: u64,
    pub rows: u64,
    pub anomalies: u64,
    /// Input rows that repeat the (device, sensor, timestamp) of another row (all scored).
    #[serde(default)]
    pub duplicate_rows: u64,
    pub devices_scored: u64,
    pub devices_failed: u64,
    pub devices_no_input: u64,
}

/// A shard's manifest, or (in `_SUCCESS`) the whole run's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub run_id: String,
    /// `shard-I-of-N` for a shard manifest, `all` for `_SUCCESS`.
    pub scope: String,
    pub shard_count: u32,
    pub totals: Totals,
    pub parts: Vec<PartInfo>,
    pub devices: Vec<DeviceOutcome>,
    /// Failures tables written, relative to the output location (`_runs/RUN_ID/failures/...`;
    /// runs of earlier builds: `_failures/...`, relative to the run's folder).
    pub failures_tables: Vec<String>,
    /// Wall-clock milliseconds per phase (of this attempt; merged manifests keep each shard's).
    pub timings_ms: BTreeMap<String, u64>,
    /// The settings the run was started with (no secrets).
    pub settings: serde_json::Value,
    /// Counts of the run's drift table (`_SUCCESS` of a scoring run only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<crate::DriftSummary>,
}

impl PlanRecord {
    /// `(path, size, version tag)` of every input file the plan read.
    fn file_identities(&self) -> BTreeMap<&str, (u64, &str)> {
        match &self.plan {
            Some(plan) => plan
                .files
                .iter()
                .map(|f| (f.path.as_str(), (f.size, f.e_tag.as_deref().unwrap_or_default())))
                .collect(),
            None => self
                .files
                .iter()
                .map(|(p, size, tag)| (p.as_str(), (*size, tag.as_str())))
                .collect(),
        }
    }

    /// What differs between the plan `self` records and `other`, in words: the components
    /// whose digests differ, and which input files were added, removed or rewritten.
    pub(crate) fn differences(&self, other: &PlanRecord) -> String {
        const SHOWN: usize = 3;
        if self.components.is_empty() || other.components.is_empty() {
            return "its inputs or settings differ".into();
        }
        let mut changes: Vec<String> = self
            .components
            .iter()
            .filter(|(name, digest)| {
                *name != "input files" && other.components.get(*name) != Some(digest)
            })
            .map(|(name, _)| format!("the {name} changed"))
            .collect();
        let (before, now) = (self.file_identities(), other.file_identities());
        let mut list = |what: &str, paths: Vec<String>| {
            if !paths.is_empty() {
                let more = paths.len().saturating_sub(SHOWN);
                let mut shown = paths.into_iter().take(SHOWN).collect::<Vec<_>>().join(", ");
                if more > 0 {
                    shown.push_str(&format!(" and {more} more"));
                }
                changes.push(format!("{what}: {shown}"));
            }
        };
        list(
            "input files rewritten",
            now.iter()
                .filter_map(|(p, (size, tag))| {
                    let (old_size, old_tag) = before.get(p)?;
                    (old_size != size || old_tag != tag).then(|| {
                        if old_size == size {
                            format!("{p} (same size, new version tag)")
                        } else {
                            format!("{p} ({old_size} -> {size} bytes)")
                        }
                    })
                })
                .collect(),
        );
        list(
            "input files added",
            now.keys().filter(|p| !before.contains_key(*p)).map(|p| p.to_string()).collect(),
        );
        list(
            "input files removed",
            before.keys().filter(|p| !now.contains_key(*p)).map(|p| p.to_string()).collect(),
        );
        if changes.is_empty() { "its inputs or settings differ".into() } else { changes.join("; ") }
    }
}

impl Manifest {
    /// A manifest over `parts` and `devices`, its totals counted from them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assemble(
        run_id: &str,
        scope: String,
        shard_count: u32,
        units: u64,
        parts: Vec<PartInfo>,
        devices: Vec<DeviceOutcome>,
        failures_tables: Vec<String>,
        timings_ms: BTreeMap<String, u64>,
        settings: serde_json::Value,
    ) -> Self {
        Self {
            format: FORMAT,
            run_id: run_id.to_string(),
            scope,
            shard_count,
            totals: Totals::of(&parts, &devices, units),
            parts,
            devices,
            failures_tables,
            timings_ms,
            settings,
            drift: None,
        }
    }
}

impl Receipt {
    pub(crate) fn path(unit: usize) -> String {
        format!("_receipts/part-{unit:05}.json")
    }
}

pub(crate) fn to_json<T: Serialize>(
    what: &'static str,
    value: &T,
) -> Result<bytes::Bytes, SchedulerError> {
    serde_json::to_vec_pretty(value)
        .map(bytes::Bytes::from)
        .map_err(|e| SchedulerError::Encode { what, reason: e.to_string() })
}

pub(crate) fn from_json<T: for<'de> Deserialize<'de>>(
    location: &Location,
    path: &str,
    bytes: &[u8],
) -> Result<T, SchedulerError> {
    serde_json::from_slice(bytes).map_err(|e| SchedulerError::CorruptRecord {
        url: location.url_of(path),
        reason: e.to_string(),
    })
}

/// Merges the outcomes of series whose rows were split over units, sorted by device and
/// sensor: rows and anomalies add up; a failure anywhere makes the series failed.
pub(crate) fn merge_outcomes(outcomes: Vec<DeviceOutcome>) -> Vec<DeviceOutcome> {
    let mut by_series: BTreeMap<(i64, Option<String>), DeviceOutcome> = BTreeMap::new();
    for outcome in outcomes {
        match by_series.get_mut(&(outcome.device, outcome.sensor.clone())) {
            None => {
                by_series.insert((outcome.device, outcome.sensor.clone()), outcome);
            }
            Some(merged) => {
                merged.rows += outcome.rows;
                merged.anomalies += outcome.anomalies;
                merged.duplicate_rows += outcome.duplicate_rows;
                let rank = |s: DeviceStatus| match s {
                    DeviceStatus::Failed => 2,
                    DeviceStatus::Scored => 1,
                    DeviceStatus::NoInput => 0,
                };
                if rank(outcome.status) > rank(merged.status) {
                    merged.status = outcome.status;
                    merged.stage = outcome.stage;
                    merged.reason = outcome.reason;
                    merged.model_version = outcome.model_version.or(merged.model_version.take());
                }
            }
        }
    }
    let mut merged: Vec<DeviceOutcome> = by_series.into_values().collect();
    merged.sort_by(DeviceOutcome::order);
    merged
}

impl Totals {
    pub(crate) fn of(parts: &[PartInfo], devices: &[DeviceOutcome], units: u64) -> Self {
        let count = |s: DeviceStatus| devices.iter().filter(|d| d.status == s).count() as u64;
        Self {
            units,
            parts: parts.len() as u64,
            rows: parts.iter().map(|p| p.rows).sum(),
            anomalies: devices.iter().map(|d| d.anomalies).sum(),
            duplicate_rows: devices.iter().map(|d| d.duplicate_rows).sum(),
            devices_scored: count(DeviceStatus::Scored),
            devices_failed: count(DeviceStatus::Failed),
            devices_no_input: count(DeviceStatus::NoInput),
        }
    }
}

/// The failures table: one row per failed series.
pub(crate) fn failures_table(
    run_id: &str,
    devices: &[DeviceOutcome],
) -> Result<bytes::Bytes, SchedulerError> {
    let failed: Vec<&DeviceOutcome> =
        devices.iter().filter(|d| d.status == DeviceStatus::Failed).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("device_id", DataType::Int64, false),
        Field::new("sensor", DataType::Utf8, true),
        Field::new("model_key", DataType::Utf8, false),
        Field::new("stage", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![run_id; failed.len()])),
            Arc::new(Int64Array::from_iter_values(failed.iter().map(|d| d.device))),
            Arc::new(StringArray::from_iter(failed.iter().map(|d| d.sensor.as_deref()))),
            Arc::new(StringArray::from_iter_values(failed.iter().map(|d| d.model_key()))),
            Arc::new(StringArray::from_iter(failed.iter().map(|d| d.stage.as_deref()))),
            Arc::new(StringArray::from_iter(failed.iter().map(|d| d.reason.as_deref()))),
        ],
    )
    .map_err(|source| SchedulerError::Arrow { what: "failures", source })?;
    Ok(encode_parquet(&schema, &[batch], &WriteOptions::default())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(device: i64, status: DeviceStatus, rows: u64) -> DeviceOutcome {
        DeviceOutcome {
            device,
            sensor: None,
            status,
            rows,
            anomalies: 1,
            duplicate_rows: 0,
            model_version: None,
            stage: None,
            reason: None,
        }
    }

    #[test]
    fn split_devices_merge() {
        let merged = merge_outcomes(vec![
            outcome(2, DeviceStatus::Scored, 10),
            outcome(1, DeviceStatus::Scored, 5),
            outcome(2, DeviceStatus::Scored, 7),
            outcome(3, DeviceStatus::NoInput, 0),
            outcome(3, DeviceStatus::Failed, 4),
        ]);
        let view: Vec<(i64, DeviceStatus, u64, u64)> =
            merged.iter().map(|d| (d.device, d.status, d.rows, d.anomalies)).collect();
        assert_eq!(
            view,
            vec![
                (1, DeviceStatus::Scored, 5, 1),
                (2, DeviceStatus::Scored, 17, 2),
                (3, DeviceStatus::Failed, 4, 2),
            ]
        );
    }
}

/// Why a shard's last attempt failed (`_shard_errors/SHARD.json`), written by the attempt;
/// not part of the commit: a committed shard's record is stale and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardError {
    pub shard: String,
    /// `usage`, `bad_input`, `unavailable` or `internal`.
    pub class: String,
    /// The error and its causes, credentials redacted.
    pub error: String,
    /// When the attempt failed (RFC 3339).
    pub at: String,
}

impl ShardError {
    pub const DIR: &'static str = "_shard_errors";

    pub fn path(shard: &str) -> String {
        format!("{}/{shard}.json", Self::DIR)
    }
}
