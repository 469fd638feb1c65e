//! The transform job (`batchscore aggregate`): readings in, transformed rows out (interval
//! aggregates), planned, sharded and committed exactly like a scoring run, so reruns,
//! retries and shards behave the same and `status` reads it alike.
//!
//! Units hold whole devices ([`Plan::by_device`]): a window of a device never straddles two
//! units, so every part is final and parts never overlap.

use std::collections::BTreeMap;
use std::time::Instant;

use batchscore_io::Location;
use serde::Serialize;

use crate::commit::{
    Committed, DeviceOutcome, DeviceStatus, FORMAT, PartInfo, PlanRecord, Publish, Receipt,
    RunCommit, UnitOutput, merge_outcomes,
};
use crate::dataset::{Columns, Dataset, UnitTable};
use crate::execute::execute;
use crate::fingerprint::digest_of;
use crate::run::{
    check_output_beside, check_run_id, check_sensor_selection, ms, part_options, run_level,
    sensors_without_input, unit_rows,
};
use crate::transform::{TableLayout, Transform, finish_batch, unit_batch};
use crate::{
    DeviceSelection, InputColumns, Plan, Progress, RunReport, SchedulerError, SensorSelection,
    Shard, TimeWindow,
};

/// Everything a transform job needs, already validated.
#[derive(Debug, Clone)]
pub struct TransformSpec {
    pub input: Location,
    pub output: Location,
    /// `None`: derived from the input, selections, window and the transform's settings.
    pub run_id: Option<String>,
    pub selection: DeviceSelection,
    pub sensors: SensorSelection,
    pub window: TimeWindow,
    pub columns: InputColumns,
    pub transform: Transform,
    pub threads: usize,
    pub shard: Shard,
    /// Bounds on the input rows per work unit.
    pub min_part_rows: u64,
    pub max_part_rows: u64,
    /// The settings as given, recorded in manifests (must hold no secrets).
    pub settings: serde_json::Value,
}

/// Runs this shard's part of a transform job.
pub fn transform(
    spec: &TransformSpec,
    progress: &dyn Progress,
) -> Result<RunReport, SchedulerError> {
    let started = Instant::now();
    let mut timings = BTreeMap::new();
    check_output_beside(&spec.input, &spec.output)?;
    let dataset = Dataset::scan(&spec.input, &spec.columns, &spec.selection, &spec.window)?;
    check_sensor_selection(&spec.sensors, &dataset.columns)?;
    let layout = TableLayout::of(&dataset.columns);
    spec.transform
        .check(&layout)
        .map_err(|reason| SchedulerError::InvalidSetting { setting: "aggregate", reason })?;
    let total_rows: u64 = dataset.slices.iter().map(|s| s.rows).sum();
    let target = unit_rows(total_rows, spec.min_part_rows, spec.max_part_rows);
    let plan = Plan::by_device(&dataset.slices, target);
    let commit = claim(spec, &dataset, &plan, target)?;
    let run_id = commit.run_id().to_string();
    timings.insert("plan".to_string(), ms(started.elapsed()));
    tracing::info!(run_id = %run_id, units = plan.units.len(), rows = total_rows, "planned");

    let execute_started = Instant::now();
    let context = UnitContext { spec, dataset: &dataset, layout: &layout, commit: &commit };
    let executed =
        execute((spec.threads, spec.shard), &commit, &plan, progress, &|u| context.process(u))?;
    timings.insert("execute".to_string(), ms(execute_started.elapsed()));
    timings.insert("total".to_string(), ms(started.elapsed()));

    let parts: Vec<PartInfo> = executed.receipts.iter().filter_map(|r| r.part.clone()).collect();
    let devices = merge_outcomes(executed.receipts.into_iter().flat_map(|r| r.devices).collect());
    let manifest = commit.commit_shard(
        executed.units as u64,
        parts,
        devices,
        timings,
        spec.settings.clone(),
    )?;
    let complete = commit.publish_success(|_| {}, Publish::Manifest)?.is_some();
    let sensors_without_input = sensors_without_input(&spec.sensors, &manifest.devices);
    Ok(RunReport {
        run_id,
        output_url: commit.url().to_string(),
        manifest,
        plan_units: plan.units.len(),
        units_skipped: executed.skipped,
        rows_scored_now: executed.rows_scored_now,
        complete,
        failed_over_threshold: false,
        sensors_without_input,
        drift: None,
        elapsed: started.elapsed(),
    })
}

/// Claims the job's directory: the run id derives from everything that decides the output.
fn claim(
    spec: &TransformSpec,
    dataset: &Dataset,
    plan: &Plan,
    target: u64,
) -> Result<RunCommit, SchedulerError> {
    #[derive(Serialize)]
    struct Material<'a> {
        version: &'static str,
        input: &'a str,
        files: &'a [(String, u64, String)],
        selection: String,
        sensors: String,
        window: &'a TimeWindow,
        columns: &'a InputColumns,
        resolved: &'a Columns,
        transform: serde_json::Value,
        target_rows: u64,
        units: Vec<(i64, i64)>,
    }
    let material = Material {
        version: "batchscore-transform-v1",
        input: spec.input.url(),
        files: &dataset.identity,
        selection: spec.selection.canonical(),
        sensors: spec.sensors.canonical(),
        window: &spec.window,
        columns: &spec.columns,
        resolved: &dataset.columns,
        transform: spec.transform.describe(),
        target_rows: target,
        units: plan.units.iter().map(|u| (u.lo, u.hi)).collect(),
    };
    let digest = digest_of(&material)?;
    let mut components = BTreeMap::new();
    for (name, value) in [
        ("input location", digest_of(&material.input)?),
        ("input files", digest_of(&material.files)?),
        ("device selection", digest_of(&material.selection)?),
        ("sensor selection", digest_of(&material.sensors)?),
        ("time window", digest_of(material.window)?),
        ("column settings", digest_of(material.columns)?),
        ("input columns", digest_of(material.resolved)?),
        ("aggregation settings", digest_of(&material.transform)?),
        ("work units", digest_of(&material.units)?),
    ] {
        components.insert(name.to_string(), value);
    }
    let run_id = match &spec.run_id {
        Some(id) => id.clone(),
        None => format!("agg-{}", &digest[..16]),
    };
    check_run_id(&run_id)?;
    let record = PlanRecord {
        format: FORMAT,
        run_id: run_id.clone(),
        fingerprint: digest,
        components,
        files: dataset.identity.clone(),
        units: plan.units.len(),
        shard_count: Some(spec.shard.count()),
        settings: run_level(&spec.settings, spec.shard.count()),
        plan: None,
    };
    RunCommit::claim(&spec.output, record, spec.shard)
}

struct UnitContext<'a> {
    spec: &'a TransformSpec,
    dataset: &'a Dataset,
    layout: &'a TableLayout,
    commit: &'a RunCommit,
}

impl UnitContext<'_> {
    fn process(&self, unit: &crate::Unit) -> Result<(Receipt, Committed), SchedulerError> {
        self.commit.location().check_cancelled()?;
        if let Some(receipt) = self.commit.committed_earlier(unit.index)? {
            return Ok((receipt, Committed::Earlier));
        }
        self.commit.commit_unit(unit.index, &|| self.produce(unit))
    }

    /// Reads the unit whole (an aggregate needs all of a device's rows, and its part is
    /// smaller than its input), transforms it and writes its part.
    fn produce(&self, unit: &crate::Unit) -> Result<UnitOutput, SchedulerError> {
        let spec = self.spec;
        let table = self.dataset.read_unit(
            &unit.slices,
            unit.lo..=unit.hi,
            &spec.selection,
            &spec.sensors,
            &spec.window,
        )?;
        let devices = outcomes(&table);
        if table.device.is_empty() {
            return Ok(UnitOutput { part: None, devices, drift: None });
        }
        let batch = unit_batch(&table, self.layout)?;
        drop(table);
        let batch = crate::transform::apply_apart(spec.transform.as_ref(), batch, self.layout)
            .map_err(|source| SchedulerError::Transform { unit: unit.index, source })?;
        let integer_sensors = matches!(
            self.dataset.columns.shape,
            crate::dataset::Shape::Long { integer_sensors: true, .. }
        );
        let batch = finish_batch(batch, self.layout, integer_sensors)?;
        let run_id = self.commit.run_id();
        let options = part_options(run_id, unit.index);
        let path = format!("part-{:05}.parquet", unit.index);
        let out = self.commit.location();
        let written =
            out.write_parquet(&path, &batch.schema(), std::slice::from_ref(&batch), &options)?;
        let part = PartInfo {
            unit: unit.index,
            path,
            rows: batch.num_rows() as u64,
            bytes: written.bytes,
            sha256: written.sha256,
        };
        Ok(UnitOutput { part: Some(part), devices, drift: None })
    }
}

/// One outcome per series read: its readings, and how many repeat a timestamp.
fn outcomes(table: &UnitTable) -> Vec<DeviceOutcome> {
    table
        .runs
        .iter()
        .map(|series| {
            let ts = &table.timestamp_us[series.rows.clone()];
            DeviceOutcome {
                device: series.device,
                sensor: table.sensor_name(series).map(String::from),
                status: DeviceStatus::Scored,
                rows: series.rows.len() as u64,
                anomalies: 0,
                duplicate_rows: ts.windows(2).filter(|w| w[0] == w[1]).count() as u64,
                model_version: None,
                stage: None,
                reason: None,
            }
        })
        .collect()
}
