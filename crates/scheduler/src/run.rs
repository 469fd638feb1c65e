//! The scoring job: scan, plan, execute this shard's units, commit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use batchscore_io::{Location, WriteOptions};
use batchscore_registry::Registry;
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::commit::{
    DeviceOutcome, DeviceStatus, FORMAT, Manifest, PLAN, PartInfo, Receipt, SUCCESS, Totals,
    failures_table, from_json, merge_outcomes, to_json,
};
use crate::dataset::{Columns, Dataset};
use crate::output::{OutputFormat, OutputSpec};
use crate::score::score_unit;
use crate::{
    DeviceSelection, InputColumns, MaxFailed, Plan, Progress, SchedulerError, SensorSelection,
    Shard, TimeWindow,
};

/// Selected devices listed one by one as `no_input` only up to this many; a bigger selection is
/// a range over an id space, not a device list.
const MAX_LISTED_SELECTION: u64 = 1_000_000;
/// Rows per row group of scored parts.
const PART_ROW_GROUP_ROWS: usize = 128 * 1024;

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
    /// The settings as given, recorded in manifests (must hold no secrets).
    pub settings: serde_json::Value,
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
    pub elapsed: Duration,
}

#[derive(Serialize)]
struct PlanRecord<'a> {
    format: u32,
    run_id: &'a str,
    fingerprint: &'a str,
    units: usize,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// Checks a run id is usable as a path segment.
fn check_run_id(id: &str) -> Result<(), SchedulerError> {
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
    fingerprint: String,
    run_id: String,
    total_rows: u64,
}

fn prepare(spec: &RunSpec) -> Result<Prepared, SchedulerError> {
    let registry = Registry::open_existing(spec.registry.clone())?;
    let dataset = Dataset::scan(&spec.input, &spec.columns, &spec.selection, &spec.window)?;
    spec.output_spec.check(&dataset.columns)?;
    check_sensor_selection(&spec.sensors, &dataset.columns)?;
    let total_rows: u64 = dataset.slices.iter().map(|s| s.rows).sum();
    // Aim for ~16 units so a job spreads over cores and nodes, within the part-size bounds that
    // keep files analytics-sized. Depends only on the input, never on threads or shards.
    let target = total_rows
        .div_ceil(16)
        .clamp(spec.min_part_rows, spec.max_part_rows.max(spec.min_part_rows));
    let plan = Plan::build(&dataset.slices, target);
    let fingerprint = plan_fingerprint(spec, &dataset, &registry, &plan, target);
    let run_id = match &spec.run_id {
        Some(id) => id.clone(),
        None => format!("run-{}", &fingerprint[..16]),
    };
    check_run_id(&run_id)?;
    Ok(Prepared { registry, dataset, plan, fingerprint, run_id, total_rows })
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

/// Runs this shard's part of a scoring job. See the crate docs for the commit protocol.
pub fn run(spec: &RunSpec, progress: &dyn Progress) -> Result<RunReport, SchedulerError> {
    let started = Instant::now();
    let mut timings = BTreeMap::new();
    let Prepared { registry, dataset, plan, fingerprint, run_id, total_rows } = prepare(spec)?;
    let out = spec.output.join(&run_id)?;
    let plan_record = to_json(&PlanRecord {
        format: FORMAT,
        run_id: &run_id,
        fingerprint: &fingerprint,
        units: plan.units.len(),
    })?;
    if !out.put_if_absent(PLAN, plan_record)? {
        let existing: serde_json::Value = from_json(&out, PLAN, &out.get(PLAN)?)?;
        if existing.get("fingerprint").and_then(|f| f.as_str()) != Some(fingerprint.as_str()) {
            return Err(SchedulerError::RunConflict { run_id, url: out.url().to_string() });
        }
    }
    timings.insert("plan".to_string(), ms(started.elapsed()));
    tracing::info!(run_id = %run_id, units = plan.units.len(), rows = total_rows, files = dataset.files.len(), "planned");

    let existing: HashMap<String, u64> =
        out.list("")?.into_iter().map(|e| (e.path, e.size)).collect();
    let mine = plan.shard_units(spec.shard);
    let my_rows: u64 = mine.iter().map(|&u| plan.units[u].rows).sum();
    progress.start(mine.len(), my_rows);

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(spec.threads)
        .thread_name(|i| format!("batchscore-worker-{i}"))
        .build()
        .map_err(|e| SchedulerError::ThreadPool { threads: spec.threads, reason: e.to_string() })?;
    let execute_started = Instant::now();
    let context = UnitContext {
        spec,
        dataset: &dataset,
        registry: &registry,
        out: &out,
        run_id: &run_id,
        existing: &existing,
    };
    let results: Vec<Result<(Receipt, bool), SchedulerError>> = pool.install(|| {
        mine.par_iter()
            .map(|&u| {
                let result = context.process(&plan.units[u]);
                if let Ok((receipt, skipped)) = &result {
                    let rows = receipt.part.as_ref().map_or(0, |p| p.rows);
                    progress.unit_done(rows, receipt.devices.len(), *skipped);
                }
                result
            })
            .collect()
    });
    progress.finish();
    let mut receipts = Vec::with_capacity(results.len());
    let mut units_skipped = 0;
    let mut rows_scored_now = 0;
    for result in results {
        let (receipt, skipped) = result?;
        units_skipped += usize::from(skipped);
        if !skipped {
            rows_scored_now += receipt.part.as_ref().map_or(0, |p| p.rows);
        }
        receipts.push(receipt);
    }
    timings.insert("execute".to_string(), ms(execute_started.elapsed()));

    let commit_started = Instant::now();
    let parts: Vec<PartInfo> = receipts.iter().filter_map(|r| r.part.clone()).collect();
    let mut devices = merge_outcomes(receipts.into_iter().flat_map(|r| r.devices).collect());
    if spec.shard.count() == 1 {
        add_no_input(&spec.selection, &spec.sensors, &dataset.columns, &mut devices);
        devices.sort_by(DeviceOutcome::order);
    }
    let shard_name = spec.shard.name();
    let mut failures_tables = Vec::new();
    if devices.iter().any(|d| d.status == DeviceStatus::Failed) {
        let path = format!("_failures/{shard_name}.parquet");
        out.put_if_absent(&path, failures_table(&run_id, &devices)?)?;
        failures_tables.push(path);
    }
    timings.insert("commit".to_string(), ms(commit_started.elapsed()));
    timings.insert("total".to_string(), ms(started.elapsed()));
    let manifest = Manifest {
        format: FORMAT,
        run_id: run_id.clone(),
        scope: shard_name.clone(),
        shard_count: spec.shard.count(),
        totals: Totals::of(&parts, &devices, mine.len() as u64),
        parts,
        devices,
        failures_tables,
        timings_ms: timings,
        settings: spec.settings.clone(),
    };
    out.put_if_absent(&format!("_manifests/{shard_name}.json"), to_json(&manifest)?)?;
    let complete = publish_success(&out, spec, &dataset.columns, &run_id, plan.units.len())?;
    let scope_devices = manifest.totals.devices_scored
        + manifest.totals.devices_failed
        + manifest.totals.devices_no_input;
    let failed_over_threshold =
        spec.max_failed.exceeded(manifest.totals.devices_failed, scope_devices);
    tracing::info!(run_id = %run_id, complete, units_skipped, "committed");
    Ok(RunReport {
        run_id,
        output_url: out.url().to_string(),
        manifest,
        plan_units: plan.units.len(),
        units_skipped,
        rows_scored_now,
        complete,
        failed_over_threshold,
        elapsed: started.elapsed(),
    })
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
            model_version: None,
            stage: None,
            reason: None,
        });
    }
}

/// Writes `_SUCCESS` if every shard of this shard count has its manifest; true if it exists.
fn publish_success(
    out: &Location,
    spec: &RunSpec,
    columns: &Columns,
    run_id: &str,
    units: usize,
) -> Result<bool, SchedulerError> {
    if out.get_opt(SUCCESS)?.is_some() {
        return Ok(true);
    }
    let suffix = format!("-of-{:05}.json", spec.shard.count());
    let manifests: Vec<String> = out
        .list("_manifests")?
        .into_iter()
        .map(|e| e.path)
        .filter(|p| p.ends_with(&suffix))
        .collect();
    if manifests.len() < spec.shard.count() as usize {
        return Ok(false);
    }
    let mut parts = Vec::new();
    let mut devices = Vec::new();
    let mut failures_tables = Vec::new();
    let mut timings_ms = BTreeMap::new();
    for path in &manifests {
        let m: Manifest = from_json(out, path, &out.get(path)?)?;
        parts.extend(m.parts);
        devices.extend(m.devices);
        failures_tables.extend(m.failures_tables);
        for (phase, t) in m.timings_ms {
            timings_ms.insert(format!("{}.{phase}", m.scope), t);
        }
    }
    let mut devices = merge_outcomes(devices);
    add_no_input(&spec.selection, &spec.sensors, columns, &mut devices);
    parts.sort_by_key(|p| p.unit);
    devices.sort_by(DeviceOutcome::order);
    let manifest = Manifest {
        format: FORMAT,
        run_id: run_id.to_string(),
        scope: "all".into(),
        shard_count: spec.shard.count(),
        totals: Totals::of(&parts, &devices, units as u64),
        parts,
        devices,
        failures_tables,
        timings_ms,
        settings: spec.settings.clone(),
    };
    out.put_if_absent(SUCCESS, to_json(&manifest)?)?;
    Ok(true)
}

/// Identifies everything that determines the run's output.
fn plan_fingerprint(
    spec: &RunSpec,
    dataset: &Dataset,
    registry: &Registry,
    plan: &Plan,
    target: u64,
) -> String {
    #[derive(Serialize)]
    struct Material<'a> {
        version: &'static str,
        input: &'a str,
        files: &'a [(String, u64, String)],
        registry: &'a str,
        registry_index: &'a str,
        selection: String,
        sensors: String,
        window: &'a TimeWindow,
        columns: &'a InputColumns,
        resolved: &'a Columns,
        output: &'a OutputSpec,
        target_rows: u64,
        units: Vec<(i64, i64)>,
    }
    let material = Material {
        version: "batchscore-run-v1",
        input: spec.input.url(),
        files: &dataset.identity,
        registry: registry.url(),
        registry_index: registry.fingerprint(),
        selection: spec.selection.canonical(),
        sensors: spec.sensors.canonical(),
        window: &spec.window,
        columns: &spec.columns,
        resolved: &dataset.columns,
        output: &spec.output_spec,
        target_rows: target,
        units: plan.units.iter().map(|u| (u.lo, u.hi)).collect(),
    };
    let bytes = serde_json::to_vec(&material).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

struct UnitContext<'a> {
    spec: &'a RunSpec,
    dataset: &'a Dataset,
    registry: &'a Registry,
    out: &'a Location,
    run_id: &'a str,
    existing: &'a HashMap<String, u64>,
}

impl UnitContext<'_> {
    /// The receipt of `unit` if another attempt committed it, with its part in place.
    fn committed_by_other_attempt(
        &self,
        unit: &crate::Unit,
    ) -> Result<Option<Receipt>, SchedulerError> {
        let path = Receipt::path(unit.index);
        let Some(bytes) = self.out.get_opt(&path)? else {
            return Ok(None);
        };
        let receipt: Receipt = from_json(self.out, &path, &bytes)?;
        if receipt.unit != unit.index || receipt.run_id != self.run_id {
            return Ok(None);
        }
        let part_intact = match &receipt.part {
            None => true,
            Some(p) => self.out.size_of(&p.path)? == Some(p.bytes),
        };
        Ok(part_intact.then_some(receipt))
    }

    /// Commits one unit, or returns its receipt if an earlier attempt committed it.
    fn process(&self, unit: &crate::Unit) -> Result<(Receipt, bool), SchedulerError> {
        let receipt_path = Receipt::path(unit.index);
        if self.existing.contains_key(&receipt_path) {
            let receipt: Receipt =
                from_json(self.out, &receipt_path, &self.out.get(&receipt_path)?)?;
            let part_intact =
                receipt.part.as_ref().is_none_or(|p| self.existing.get(&p.path) == Some(&p.bytes));
            if part_intact && receipt.unit == unit.index && receipt.run_id == self.run_id {
                return Ok((receipt, true));
            }
            tracing::warn!(unit = unit.index, "part missing or damaged; rewriting it");
        }
        let spec = self.spec;
        let table =
            self.dataset.read_unit(&unit.slices, &spec.selection, &spec.sensors, &spec.window)?;
        let (batch, devices) = score_unit(
            &table,
            &self.dataset.columns,
            self.registry,
            self.run_id,
            &spec.output_spec,
        )?;
        drop(table);
        let part = match batch {
            None => None,
            Some(batch) => {
                let schema = batch.schema();
                let options = WriteOptions {
                    row_group_rows: PART_ROW_GROUP_ROWS,
                    metadata: vec![
                        ("batchscore.run_id".into(), self.run_id.to_string()),
                        ("batchscore.unit".into(), unit.index.to_string()),
                    ],
                };
                let path = spec.output_spec.part_path(unit.index);
                // One object at a path fixed by run id and unit, visible whole or not at all: a
                // retry rewrites the same bytes, never a second copy.
                let batches = std::slice::from_ref(&batch);
                let write = || match spec.output_spec.format {
                    OutputFormat::Parquet => {
                        self.out.write_parquet(&path, &schema, batches, &options)
                    }
                    OutputFormat::Csv => self.out.write_csv(&path, batches),
                };
                let written = match write() {
                    Ok(written) => written,
                    Err(first) => {
                        // A concurrent attempt of this unit (Azure Batch reruns a task whose
                        // node it lost) may have committed first: committing a block list
                        // discards the blocks of other uploads of the same blob. Adopt its
                        // commit if its receipt is there; else upload again from scratch, which
                        // writes the same bytes.
                        if let Some(receipt) = self.committed_by_other_attempt(unit)? {
                            tracing::info!(unit = unit.index, "committed by another attempt");
                            return Ok((receipt, true));
                        }
                        tracing::warn!(unit = unit.index, error = %first, "part upload failed; uploading it again");
                        write()?
                    }
                };
                Some(PartInfo {
                    unit: unit.index,
                    path,
                    rows: batch.num_rows() as u64,
                    bytes: written.bytes,
                    sha256: written.sha256,
                })
            }
        };
        let receipt = Receipt {
            format: FORMAT,
            run_id: self.run_id.to_string(),
            unit: unit.index,
            part,
            devices,
        };
        if !self.out.put_if_absent(&receipt_path, to_json(&receipt)?)? {
            // A receipt exists although its part was missing: it came from an earlier attempt
            // of this same unit and plan, so the part we just wrote restores it; keep the record.
            tracing::debug!(unit = unit.index, "receipt already present");
        }
        tracing::debug!(unit = unit.index, devices = receipt.devices.len(), "unit committed");
        Ok((receipt, false))
    }
}
