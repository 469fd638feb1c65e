//! A run's state, read from its output directory alone: which shards committed, how many
//! units, what `_SUCCESS` says. What an operator or a pipeline step waits on (`batchscore
//! status`); it writes nothing.

use std::collections::BTreeSet;

use batchscore_io::Location;
use serde::Serialize;

use crate::commit::{
    DeviceOutcome, DeviceStatus, Manifest, PLAN, PlanRecord, Receipt, SUCCESS, ShardError, Totals,
    from_json, read_manifest, validate_success,
};
use crate::{MaxFailed, SchedulerError, Shard};

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// `_SUCCESS` is there and valid, and failed series are within the run's `--max-failed`.
    Complete,
    /// `_SUCCESS` is there, but more series failed than the run's `--max-failed` allows.
    Failed,
    /// Some shards have not committed yet (running, waiting for a retry, or lost).
    Incomplete,
}

/// One shard's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardState {
    pub name: String,
    pub committed: bool,
    /// Why the last failed attempt of a shard not committed yet failed (an engine may still
    /// retry it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ShardError>,
}

/// What `status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    pub run_id: String,
    pub url: String,
    pub state: RunState,
    /// Shards of the run, as its plan records them (older runs: as their manifests show).
    pub shards: Vec<ShardState>,
    /// Units of the plan, and those with a receipt.
    pub units: usize,
    pub units_committed: usize,
    /// Totals of `_SUCCESS`, or of the shard manifests committed so far.
    pub totals: Totals,
    /// Failed series (device, or device and sensor), with stage and reason.
    pub failed: Vec<DeviceOutcome>,
    /// The run's tolerance of failed series, as it was started.
    pub max_failed: Option<MaxFailed>,
    /// Counts of the drift table (complete scoring runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<crate::DriftSummary>,
}

/// The directory of run `run_id` under `output` and its plan record.
fn plan_of(output: &Location, run_id: &str) -> Result<(Location, PlanRecord), SchedulerError> {
    let out = output.join(run_id)?;
    let Some(plan_bytes) = out.get_opt(PLAN)? else {
        return Err(SchedulerError::RunNotFound {
            run_id: run_id.to_string(),
            url: out.url().to_string(),
        });
    };
    let plan: PlanRecord = from_json(&out, PLAN, &plan_bytes)?;
    Ok((out, plan))
}

/// Reads the state of run `run_id` under `output` (one listing and a few small reads).
pub fn status(output: &Location, run_id: &str) -> Result<RunStatus, SchedulerError> {
    let (out, plan) = plan_of(output, run_id)?;
    let listed: Vec<String> = out.list("")?.into_iter().map(|e| e.path).collect();
    let manifests: BTreeSet<&str> = listed
        .iter()
        .filter_map(|p| p.strip_prefix("_manifests/")?.strip_suffix(".json"))
        .collect();
    let count = plan.shard_count.or_else(|| shard_count_of(&manifests)).unwrap_or(1);
    let errors: BTreeSet<&str> = listed
        .iter()
        .filter_map(|p| p.strip_prefix("_shard_errors/")?.strip_suffix(".json"))
        .collect();
    let mut shards = Vec::new();
    for i in 0..count {
        let name = Shard::name_of(i, count);
        let committed = manifests.contains(name.as_str());
        let error = match !committed && errors.contains(name.as_str()) {
            // A damaged or vanished record says less than nothing: skip it.
            true => out
                .get_opt(&ShardError::path(&name))?
                .and_then(|bytes| serde_json::from_slice::<ShardError>(&bytes).ok()),
            false => None,
        };
        shards.push(ShardState { name, committed, error });
    }
    let receipts: BTreeSet<&str> =
        listed.iter().map(String::as_str).filter(|p| p.starts_with("_receipts/")).collect();
    let units_committed =
        (0..plan.units).filter(|&u| receipts.contains(Receipt::path(u).as_str())).count();
    let max_failed =
        plan.settings.get("max_failed").and_then(|v| serde_json::from_value(v.clone()).ok());
    let mut drift = None;
    let (totals, devices, complete) = if listed.iter().any(|p| p == SUCCESS) {
        let manifest = validate_success(&out, &out.get(SUCCESS)?, &plan, count)?;
        drift = manifest.drift;
        (manifest.totals, manifest.devices, true)
    } else {
        let mut devices = Vec::new();
        let mut parts = Vec::new();
        for shard in shards.iter().filter(|s| s.committed) {
            let path = format!("_manifests/{}.json", shard.name);
            let m = read_manifest(&out, &path, &plan.run_id, count)?;
            parts.extend(m.parts);
            devices.extend(m.devices);
        }
        let devices = crate::commit::merge_outcomes(devices);
        (Totals::of(&parts, &devices, plan.units as u64), devices, false)
    };
    let failed: Vec<DeviceOutcome> =
        devices.into_iter().filter(|d| d.status == DeviceStatus::Failed).collect();
    let state = match complete {
        false => RunState::Incomplete,
        true => {
            let series = totals.devices_scored + totals.devices_failed + totals.devices_no_input;
            let over =
                max_failed.unwrap_or(MaxFailed::Count(0)).exceeded(totals.devices_failed, series);
            if over { RunState::Failed } else { RunState::Complete }
        }
    };
    Ok(RunStatus {
        run_id: plan.run_id,
        url: out.url().to_string(),
        state,
        shards,
        units: plan.units,
        units_committed,
        totals,
        failed,
        max_failed,
        drift,
    })
}

/// A complete run: its directory and its validated `_SUCCESS` (what readers of a run follow).
pub fn completed_run(
    output: &Location,
    run_id: &str,
) -> Result<(Location, Manifest), SchedulerError> {
    let (out, plan) = plan_of(output, run_id)?;
    let Some(success) = out.get_opt(SUCCESS)? else {
        return Err(SchedulerError::RunIncomplete {
            run_id: run_id.to_string(),
            url: out.url().to_string(),
        });
    };
    let count = match plan.shard_count {
        Some(count) => count,
        None => from_json::<Manifest>(&out, SUCCESS, &success)?.shard_count,
    };
    let manifest = validate_success(&out, &success, &plan, count)?;
    Ok((out, manifest))
}

/// The shard count that manifests named `shard-I-of-N` show (runs of builds that did not record
/// it in their plan).
fn shard_count_of(manifests: &BTreeSet<&str>) -> Option<u32> {
    manifests.iter().find_map(|m| m.rsplit_once("-of-")?.1.parse().ok())
}
