//! The scoring job: scan, plan, execute this shard's units, commit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use batchscore_io::{ErrorClass, Location, WriteOptions};
use batchscore_registry::Registry;
use serde::Serialize;

use crate::commit::{
    DeviceOutcome, DeviceStatus, Manifest, PLAN, PartInfo, PlanRecord, Publish, RunCommit,
    from_json, merge_outcomes,
};
use crate::dataset::{Columns, Dataset};
use crate::execute::execute;
use crate::fingerprint::{Fingerprint, plan_fingerprint, setting_components};
use crate::output::OutputSpec;
use crate::run_unit::UnitContext;
use crate::stored::StoredPlan;
use crate::{
    DeviceSelection, InputColumns, MaxFailed, Plan, Progress, SchedulerError, SensorSelection,
    Shard, TimeWindow, Transform,
};

/// Selected devices listed one by one as `no_input` only up to this many; a bigger selection is
/// a range over an id space, not a device list.
const MAX_LISTED_SELECTION: u64 = 1_000_000;
/// Rows per row group of scored parts.
const PART_ROW_GROUP_ROWS: usize = 128 * 1024;
/// Rows a worker gathers before scoring and encoding the complete devices among them: a
/// quarter of a part's row group (docs/benchmarks.md, "Flat memory").
pub const DEFAULT_CHUNK_ROWS: usize = PART_ROW_GROUP_ROWS / 4;

/// How a unit's Parquet part is written: row groups for analytics, the run and unit recorded in
/// the file's metadata.
pub(crate) fn part_options(run_id: &str, unit: usize) -> WriteOptions {
    WriteOptions {
        row_group_rows: PART_ROW_GROUP_ROWS,
        metadata: vec![
            ("batchscore.run_id".into(), run_id.to_string()),
            ("batchscore.unit".into(), unit.to_string()),
        ],
        ..WriteOptions::default()
    }
}

/// Everything a scoring run needs, already validated.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub input: Location,
    pub registry: Location,
    pub output: Location,
    /// `None`: derived from the inputs, registry, selection and window.
    pub run_id: Option<String>,
    pub selection: DeviceSelection,
    /// Long layout: which sensors' series to score.
    pub sensors: SensorSelection,
    pub window: TimeWindow,
    pub columns: InputColumns,
    /// The parts' columns (scored or reference) and encoding (Parquet or CSV).
    pub output_spec: OutputSpec,
    pub threads: usize,
    pub shard: Shard,
    pub max_failed: MaxFailed,
    /// Bounds on rows per work unit (and so per part file).
    pub min_part_rows: u64,
    pub max_part_rows: u64,
    /// Rows a worker gathers before scoring the complete devices among them (memory per
    /// worker: input sorted or partitioned by device streams through a unit in chunks of about
    /// this size); the part still holds the whole unit.
    pub chunk_rows: usize,
    /// The settings as given, recorded in manifests (must hold no secrets).
    pub settings: serde_json::Value,
    /// A transform of each unit's readings before scoring (interval aggregation); units then
    /// hold whole devices.
    pub transform: Option<Transform>,
    /// Measure drift against each model's training reference (`drift.parquet`).
    pub drift: bool,
}

impl RunSpec {
    /// The columns scored: the input's, or the transform's output.
    pub(crate) fn scored_columns(&self, input: &Columns) -> Result<Columns, SchedulerError> {
        match &self.transform {
            None => Ok(input.clone()),
            Some(t) => crate::transform::scored_columns(input, t.as_ref()),
        }
    }

    /// The work units over `slices`: by device when a transform needs whole devices.
    fn plan(&self, slices: &[crate::dataset::Slice], target: u64) -> Plan {
        match self.transform {
            None => Plan::build(slices, target),
            Some(_) => Plan::by_device(slices, target),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: String,
    /// Where the run's files are.
    pub output_url: String,
    /// This shard's manifest.
    pub manifest: Manifest,
    /// Units in the whole plan, and this shard's units already committed by earlier attempts.
    pub plan_units: usize,
    pub units_skipped: usize,
    /// Rows scored by this attempt (excluding units committed earlier).
    pub rows_scored_now: u64,
    /// True when `_SUCCESS` exists: every shard has committed.
    pub complete: bool,
    /// True when more devices failed than `max_failed` allows.
    pub failed_over_threshold: bool,
    /// Long layout: selected sensors of which this shard met no reading (a typo in
    /// `--sensors`, or a sensor that sent nothing in the window).
    pub sensors_without_input: Vec<String>,
    /// Counts of the drift table, once the run is complete.
    pub drift: Option<crate::DriftSummary>,
    pub elapsed: Duration,
}

pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// Checks a run id is usable as a path segment (and so as a URL path segment).
pub fn check_run_id(id: &str) -> Result<(), SchedulerError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with(['.', '_'])
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.=".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SchedulerError::InvalidSetting {
            setting: "run-id",
            reason: format!(
                "`{id}`: use 1-128 ASCII letters, digits, '-', '_', '.', '=', not starting with '.' or '_'"
            ),
        })
    }
}

/// What a run would read and write, computed without writing anything (`--dry-run`).
#[derive(Debug, Clone, Serialize)]
pub struct PlanSummary {
    pub run_id: String,
    pub output_url: String,
    /// Parquet files listed, and those left after partition pruning (whose footers were read).
    pub files_listed: usize,
    pub files_read: usize,
    /// Row groups in those files, and those left after statistics pruning.
    pub row_groups_total: usize,
    pub row_groups_read: usize,
    /// Rows in the row groups to read (an upper bound on the rows scored; for CSV an estimate).
    pub rows: u64,
    pub models_in_registry: usize,
    /// Every unit of the plan, and the indices this shard would run.
    pub units: Vec<crate::Unit>,
    pub shard_units: Vec<usize>,
}

/// Everything decided before any write: the registry, the pruned input, the plan and run id.
struct Prepared {
    registry: Registry,
    dataset: Dataset,
    plan: Plan,
    run_id: String,
    total_rows: u64,
    origin: Origin,
}

/// Where a prepared plan came from, which decides how the run is claimed.
enum Origin {
    /// A scan: the fingerprint and the whole plan, to store unless a shard stored them first.
    Scanned(Fingerprint, StoredPlan),
    /// The plan record the run already holds (the dataset has only this shard's files).
    Stored(PlanRecord),
}

/// Rows per unit: ~16 units so a job spreads over cores and nodes, within the part-size bounds
/// that keep files analytics-sized. Depends only on the input, never on threads or shards.
fn target_rows(spec: &RunSpec, total_rows: u64) -> u64 {
    unit_rows(total_rows, spec.min_part_rows, spec.max_part_rows)
}

/// Rows per unit of a job over `total_rows` rows, within the part-size bounds.
pub(crate) fn unit_rows(total_rows: u64, min_part_rows: u64, max_part_rows: u64) -> u64 {
    total_rows.div_ceil(16).clamp(min_part_rows, max_part_rows.max(min_part_rows))
}

/// The plan record run `spec.run_id` already holds, checked against this call's settings (the
/// registry it opened comes along). `None` when there is nothing to read: no `--run-id` (the id
/// derives from a scan), no `_plan.json` yet, or one from a build that stored no plan.
fn stored_record(spec: &RunSpec) -> Result<Option<(PlanRecord, Registry)>, SchedulerError> {
    Ok(match stored(spec)? {
        Stored::Plan(found) => Some(*found),
        Stored::NoRun | Stored::NoPlan => None,
    })
}

/// What run `spec.run_id` holds, checked against `spec` when it holds a stored plan.
enum Stored {
    NoRun,
    /// A plan record without a stored plan.
    NoPlan,
    Plan(Box<(PlanRecord, Registry)>),
}

fn stored(spec: &RunSpec) -> Result<Stored, SchedulerError> {
    let Some(run_id) = &spec.run_id else {
        return Ok(Stored::NoRun);
    };
    check_run_id(run_id)?;
    let out = spec.output.join(run_id)?;
    let Some(bytes) = out.get_opt(PLAN)? else {
        return Ok(Stored::NoRun);
    };
    let record: PlanRecord = from_json(&out, PLAN, &bytes)?;
    if record.run_id != *run_id {
        return Err(SchedulerError::CorruptRecord {
            url: out.url_of(PLAN),
            reason: format!("the plan record of run `{}` sits under run `{run_id}`", record.run_id),
        });
    }
    let Some(stored) = &record.plan else {
        return Ok(Stored::NoPlan);
    };
    let registry = Registry::open_existing(spec.registry.clone())?;
    let ours = setting_components(spec, &registry, target_rows(spec, stored.total_rows))?;
    let changed: Vec<String> = ours
        .iter()
        .filter(|(name, digest)| record.components.get(*name) != Some(digest))
        .map(|(name, _)| format!("the {name} changed"))
        .collect();
    if !changed.is_empty() {
        return Err(SchedulerError::RunConflict {
            run_id: run_id.clone(),
            url: out.url().to_string(),
            changes: changed.join("; "),
        });
    }
    spec.output_spec.check(&spec.scored_columns(&stored.columns)?)?;
    check_sensor_selection(&spec.sensors, &stored.columns)?;
    Ok(Stored::Plan(Box::new((record, registry))))
}

/// What a run id already holds, against the settings of `spec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredPlanCheck {
    /// No `--run-id`, or no run under it yet.
    NoRun,
    /// The run's stored plan was made with these settings.
    Agrees,
    /// The run has a plan record but no stored plan (an aggregation, a build before stored
    /// plans): its settings cannot be compared without scanning the input.
    NotComparable,
}

/// Checks `spec` against the run its run id names, reading only the run's plan record and the
/// registry's index: another run's settings are [`SchedulerError::RunConflict`] naming what
/// differs. What a caller that answers for a run without running it (the service) asks first.
pub fn check_stored_plan(spec: &RunSpec) -> Result<StoredPlanCheck, SchedulerError> {
    Ok(match stored(spec)? {
        Stored::NoRun => StoredPlanCheck::NoRun,
        Stored::NoPlan => StoredPlanCheck::NotComparable,
        Stored::Plan(_) => StoredPlanCheck::Agrees,
    })
}

/// A shard of a run whose plan is stored: the plan is read, not computed (no listing, no
/// footers but those of this shard's files), after checking that this shard's settings are the
/// run's.
fn prepare_from_stored(spec: &RunSpec) -> Result<Option<Prepared>, SchedulerError> {
    let Some((record, registry)) = stored_record(spec)? else {
        return Ok(None);
    };
    let Some(stored) = &record.plan else {
        return Ok(None);
    };
    let out = spec.output.join(&record.run_id)?;
    let mine = stored.plan().shard_units(spec.shard);
    let (dataset, plan) = stored.for_units(&spec.input, &mine, &out.url_of(PLAN))?;
    tracing::info!(run_id = %record.run_id, files = dataset.files.len(), "plan read from the run; only this shard's files opened");
    let total_rows = stored.total_rows;
    Ok(Some(Prepared {
        registry,
        dataset,
        plan,
        run_id: record.run_id.clone(),
        total_rows,
        origin: Origin::Stored(record),
    }))
}

/// What [`store_plan`] found or wrote.
#[derive(Debug, Clone, Serialize)]
pub struct StoredRun {
    pub run_id: String,
    pub output_url: String,
    pub units: usize,
    pub shard_count: u32,
    /// Rows of the whole plan.
    pub rows: u64,
    /// True when the run already held this plan (an earlier attempt stored it).
    pub existed: bool,
}

/// Plans run `spec` and stores the plan with it (create-only), scoring nothing: what a job
/// manager does once so that its shards read the plan instead of each listing the input and
/// reading every footer. Storing again with the same settings finds the plan and changes
/// nothing; other settings are refused as for a shard.
pub fn store_plan(spec: &RunSpec) -> Result<StoredRun, SchedulerError> {
    if let Some((record, _)) = stored_record(spec)? {
        RunCommit::join(&spec.output, record.clone(), spec.shard)?;
        let rows = record.plan.as_ref().map_or(0, |p| p.total_rows);
        return Ok(StoredRun {
            output_url: spec.output.url_of(&record.run_id),
            units: record.units,
            shard_count: spec.shard.count(),
            rows,
            existed: true,
            run_id: record.run_id,
        });
    }
    let Prepared { plan, run_id, origin, total_rows, .. } = prepare(spec)?;
    let Origin::Scanned(fingerprint, stored) = origin else {
        return Err(SchedulerError::InvalidSetting {
            setting: "run-id",
            reason: "a scanned plan was expected".into(),
        });
    };
    let commit = claim(spec, &plan, fingerprint, run_id, stored)?;
    Ok(StoredRun {
        run_id: commit.run_id().to_string(),
        output_url: commit.url().to_string(),
        units: plan.units.len(),
        shard_count: spec.shard.count(),
        rows: total_rows,
        existed: false,
    })
}

/// Refuses an output inside the input: the next run would list the parts as readings.
pub(crate) fn check_output_beside(
    input: &Location,
    output: &Location,
) -> Result<(), SchedulerError> {
    if input.contains(output) {
        return Err(SchedulerError::InvalidSetting {
            setting: "output",
            reason: format!(
                "{} lies inside the input {}: the next run would read its parts back as \
                 readings; put the output beside the input",
                output.url(),
                input.url()
            ),
        });
    }
    Ok(())
}

fn prepare(spec: &RunSpec) -> Result<Prepared, SchedulerError> {
    check_output_beside(&spec.input, &spec.output)?;
    let registry = Registry::open_existing(spec.registry.clone())?;
    let dataset = Dataset::scan(&spec.input, &spec.columns, &spec.selection, &spec.window)?;
    spec.output_spec.check(&spec.scored_columns(&dataset.columns)?)?;
    check_sensor_selection(&spec.sensors, &dataset.columns)?;
    let total_rows: u64 = dataset.slices.iter().map(|s| s.rows).sum();
    let target = target_rows(spec, total_rows);
    let plan = spec.plan(&dataset.slices, target);
    let fingerprint = plan_fingerprint(spec, &dataset, &registry, &plan, target)?;
    let run_id = match &spec.run_id {
        Some(id) => id.clone(),
        None => format!("run-{}", &fingerprint.digest[..16]),
    };
    check_run_id(&run_id)?;
    let origin = Origin::Scanned(fingerprint, StoredPlan::of(&dataset, &plan, total_rows));
    Ok(Prepared { registry, dataset, plan, run_id, total_rows, origin })
}

/// A sensor selection needs series to select from.
pub(crate) fn check_sensor_selection(
    sensors: &SensorSelection,
    columns: &Columns,
) -> Result<(), SchedulerError> {
    if sensors.names().is_some() && !columns.is_long() {
        return Err(SchedulerError::InvalidSetting {
            setting: "sensors",
            reason: "selects (device, sensor) series of long-layout input; this input is wide \
                     (one model per device scores the columns it was trained on)"
                .into(),
        });
    }
    Ok(())
}

/// Plans a run without writing anything: what it would read, its units and its run id.
pub fn dry_run(spec: &RunSpec) -> Result<PlanSummary, SchedulerError> {
    let p = prepare(spec)?;
    Ok(PlanSummary {
        output_url: spec.output.url_of(&p.run_id),
        files_listed: p.dataset.files_listed,
        files_read: p.dataset.files.len(),
        row_groups_total: p.dataset.row_groups_total,
        row_groups_read: p.dataset.slices.len(),
        rows: p.total_rows,
        models_in_registry: p.registry.len(),
        shard_units: p.plan.shard_units(spec.shard),
        units: p.plan.units,
        run_id: p.run_id,
    })
}

/// Runs this shard's part of a scoring job. See [`crate::commit`] for the commit protocol.
///
/// A shard of a named run that fails leaves a record of why in the run
/// (`_shard_errors/SHARD.json`), which `status` shows until an attempt commits the shard: an
/// engine that retries the task shows only exit codes, an operator wants the reason.
pub fn run(spec: &RunSpec, progress: &dyn Progress) -> Result<RunReport, SchedulerError> {
    let result = run_shard(spec, progress);
    if let Err(error) = &result {
        record_shard_error(spec, error);
    }
    result
}

/// Writes the failure record of this shard, best effort: the failure being reported matters
/// more than a record that could not be written (storage may be what failed).
fn record_shard_error(spec: &RunSpec, error: &SchedulerError) {
    let class = error.class();
    let (Some(run_id), false) = (&spec.run_id, class == ErrorClass::Interrupted) else {
        return;
    };
    let Ok(out) = spec.output.join(run_id) else { return };
    let record = crate::commit::ShardError {
        shard: spec.shard.name(),
        class: class.name().to_string(),
        error: batchscore_io::error_chain(error),
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    if let Ok(bytes) = serde_json::to_vec_pretty(&record) {
        let path = crate::commit::ShardError::path(&record.shard);
        if let Err(e) = out.put(&path, bytes.into()) {
            tracing::warn!(error = %e, "cannot record why the shard failed");
        }
    }
}

fn run_shard(spec: &RunSpec, progress: &dyn Progress) -> Result<RunReport, SchedulerError> {
    let started = Instant::now();
    let mut timings = BTreeMap::new();
    let prepared = match prepare_from_stored(spec)? {
        Some(prepared) => prepared,
        None => prepare(spec)?,
    };
    let Prepared { registry, dataset, plan, run_id, total_rows, origin } = prepared;
    let scored = spec.scored_columns(&dataset.columns)?;
    let commit = match origin {
        Origin::Scanned(fingerprint, stored) => claim(spec, &plan, fingerprint, run_id, stored)?,
        // The record is in hand: nothing to write, nothing to read again.
        Origin::Stored(record) => RunCommit::join(&spec.output, record, spec.shard)?,
    };
    let run_id = commit.run_id().to_string();
    timings.insert("plan".to_string(), ms(started.elapsed()));
    tracing::info!(run_id = %run_id, units = plan.units.len(), rows = total_rows, files = dataset.files.len(), "planned");

    let execute_started = Instant::now();
    let context = UnitContext {
        spec,
        dataset: &dataset,
        scored: &scored,
        registry: &registry,
        commit: &commit,
        shared: plan.shared_devices(),
    };
    let executed =
        execute((spec.threads, spec.shard), &commit, &plan, progress, &|u| context.process(u))?;
    timings.insert("execute".to_string(), ms(execute_started.elapsed()));

    let commit_started = Instant::now();
    let parts: Vec<PartInfo> = executed.receipts.iter().filter_map(|r| r.part.clone()).collect();
    let mut devices =
        merge_outcomes(executed.receipts.into_iter().flat_map(|r| r.devices).collect());
    if spec.shard.count() == 1 {
        add_no_input(&spec.selection, &spec.sensors, &scored, &mut devices);
        devices.sort_by(DeviceOutcome::order);
    }
    timings.insert("commit".to_string(), ms(commit_started.elapsed()));
    timings.insert("total".to_string(), ms(started.elapsed()));
    let manifest = commit.commit_shard(
        executed.units as u64,
        parts,
        devices,
        timings,
        spec.settings.clone(),
    )?;
    let success = commit.publish_success(
        |devices| add_no_input(&spec.selection, &spec.sensors, &scored, devices),
        if spec.drift { Publish::Drift } else { Publish::Manifest },
    )?;
    let complete = success.is_some();
    let drift = success.and_then(|m| m.drift);
    let scope_devices = manifest.totals.devices_scored
        + manifest.totals.devices_failed
        + manifest.totals.devices_no_input;
    let failed_over_threshold =
        spec.max_failed.exceeded(manifest.totals.devices_failed, scope_devices);
    let sensors_without_input = sensors_without_input(&spec.sensors, &manifest.devices);
    tracing::info!(run_id = %run_id, complete, units_skipped = executed.skipped, "committed");
    Ok(RunReport {
        run_id,
        output_url: commit.url().to_string(),
        manifest,
        plan_units: plan.units.len(),
        units_skipped: executed.skipped,
        rows_scored_now: executed.rows_scored_now,
        complete,
        failed_over_threshold,
        sensors_without_input,
        drift,
        elapsed: started.elapsed(),
    })
}

/// The named sensors no outcome has a reading of (logged as a warning when there are any).
pub(crate) fn sensors_without_input(
    sensors: &SensorSelection,
    devices: &[DeviceOutcome],
) -> Vec<String> {
    let Some(names) = sensors.names() else {
        return Vec::new();
    };
    let seen: BTreeSet<&str> =
        devices.iter().filter(|d| d.rows > 0).filter_map(|d| d.sensor.as_deref()).collect();
    let missing: Vec<String> =
        names.iter().filter(|n| !seen.contains(n.as_str())).cloned().collect();
    if !missing.is_empty() {
        tracing::warn!(sensors = ?missing, "no readings of selected sensors");
    }
    missing
}

/// Claims the run's directory for this plan and shard count.
fn claim(
    spec: &RunSpec,
    plan: &Plan,
    fingerprint: Fingerprint,
    run_id: String,
    stored: StoredPlan,
) -> Result<RunCommit, SchedulerError> {
    let record = PlanRecord {
        format: crate::commit::FORMAT,
        run_id,
        fingerprint: fingerprint.digest,
        components: fingerprint.components,
        files: Vec::new(),
        units: plan.units.len(),
        shard_count: Some(spec.shard.count()),
        settings: run_level(&spec.settings, spec.shard.count()),
        plan: Some(stored),
    };
    RunCommit::claim(&spec.output, record, spec.shard)
}

/// The settings that hold for the whole run: those of one shard without what may differ
/// between its shards (which shard it is, how many threads it ran).
pub(crate) fn run_level(settings: &serde_json::Value, shard_count: u32) -> serde_json::Value {
    let mut settings = settings.clone();
    if let Some(map) = settings.as_object_mut() {
        map.remove("threads");
        if map.remove("shard").is_some() {
            map.insert("shard_count".into(), shard_count.into());
        }
    }
    settings
}

/// Records selected devices that no unit saw as `no_input`; with named sensors in the long
/// layout, each selected (device, sensor) series that no unit saw.
fn add_no_input(
    selection: &DeviceSelection,
    sensors: &SensorSelection,
    columns: &Columns,
    devices: &mut Vec<DeviceOutcome>,
) {
    let per_sensor: Vec<Option<String>> = match sensors.names() {
        Some(names) if columns.is_long() => names.iter().cloned().map(Some).collect(),
        _ => vec![None],
    };
    let listed = selection.count().and_then(|n| n.checked_mul(per_sensor.len() as u64));
    if listed.is_none_or(|n| n > MAX_LISTED_SELECTION) {
        return;
    }
    let seen_devices: BTreeSet<i64> = devices.iter().map(|d| d.device).collect();
    let seen_series: BTreeSet<(i64, Option<String>)> =
        devices.iter().map(|d| (d.device, d.sensor.clone())).collect();
    let Some(selected) = selection.devices() else {
        return;
    };
    let mut missing = Vec::new();
    for device in selected {
        for sensor in &per_sensor {
            let seen = match sensor {
                None => seen_devices.contains(&device),
                Some(_) => seen_series.contains(&(device, sensor.clone())),
            };
            if !seen {
                missing.push((device, sensor.clone()));
            }
        }
    }
    for (device, sensor) in missing {
        devices.push(DeviceOutcome {
            device,
            sensor,
            status: DeviceStatus::NoInput,
            rows: 0,
            anomalies: 0,
            duplicate_rows: 0,
            model_version: None,
            stage: None,
            reason: None,
        });
    }
}
