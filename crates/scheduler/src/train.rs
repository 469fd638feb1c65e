//! The training job: one model per device, in parallel, deterministic for a seed.

use std::time::{Duration, Instant};

use batchscore_detectors::ValidIsolationForestParams;
use batchscore_io::Location;
use batchscore_registry::{FeatureSummary, IndexEntry, Model, ModelKey, Registry, TrainingInfo};
use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::score::error_chain;
use crate::{DeviceSelection, InputColumns, Plan, Progress, SchedulerError, TimeWindow};

/// Rows read per training unit.
const TRAIN_UNIT_ROWS: u64 = 500_000;

/// Everything a training run needs, already validated.
#[derive(Debug, Clone)]
pub struct TrainSpec {
    pub input: Location,
    pub registry: Location,
    pub selection: DeviceSelection,
    pub window: TimeWindow,
    pub columns: InputColumns,
    /// Feature columns in model order; `None`: every sensor column of the input.
    pub features: Option<Vec<String>>,
    pub params: ValidIsolationForestParams,
    pub threads: usize,
    /// Stamped into each model's metadata (not part of its version).
    pub created_at: String,
}

/// What a training run did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub registry_url: String,
    pub trained: u64,
    pub rows: u64,
    /// Devices that could not be trained, with the reason.
    pub failed: Vec<(i64, String)>,
    pub elapsed: Duration,
}

/// A seed per device, so a device's model does not depend on which others are trained.
fn device_seed(seed: u64, device: i64) -> u64 {
    // splitmix64 of the pair: nearby devices get unrelated streams.
    let mut z = seed ^ (device as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Trains one model per selected device and publishes them in the registry's index.
pub fn train(spec: &TrainSpec, progress: &dyn Progress) -> Result<TrainReport, SchedulerError> {
    let started = Instant::now();
    let mut registry = Registry::open(spec.registry.clone())?;
    let dataset = Dataset::scan(&spec.input, &spec.columns, &spec.selection, &spec.window)?;
    let features: Vec<String> = match &spec.features {
        Some(f) => f.clone(),
        None => dataset.sensors.clone(),
    };
    let indices: Vec<usize> = features
        .iter()
        .map(|f| {
            dataset.sensors.iter().position(|s| s == f).ok_or_else(|| {
                SchedulerError::InvalidSetting {
                    setting: "features",
                    reason: format!("column `{f}` is not a sensor column of the input"),
                }
            })
        })
        .collect::<Result<_, _>>()?;
    let plan = Plan::build(&dataset.slices, TRAIN_UNIT_ROWS, true);
    progress.start(plan.units.len(), plan.rows());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(spec.threads)
        .thread_name(|i| format!("batchscore-trainer-{i}"))
        .build()
        .map_err(|e| SchedulerError::ThreadPool {
            threads: spec.threads,
            reason: e.to_string(),
        })?;
    type DeviceResult = (i64, u64, Result<IndexEntry, String>);
    let results: Vec<Result<Vec<DeviceResult>, SchedulerError>> = pool.install(|| {
        plan.units
            .par_iter()
            .map(|unit| {
                let table = dataset.read_unit(&unit.slices, &spec.selection, &spec.window)?;
                let out: Vec<Result<DeviceResult, SchedulerError>> = table
                    .runs
                    .par_iter()
                    .map(|(device, range)| {
                        let columns: Vec<&[f64]> = indices
                            .iter()
                            .map(|&i| &table.sensors[i][range.clone()])
                            .collect();
                        let rows = range.len() as u64;
                        let from_us = table.timestamp_us.get(range.start).copied();
                        let to_us = table.timestamp_us.get(range.end.wrapping_sub(1)).copied();
                        match fit_one(spec, *device, &features, &columns, from_us, to_us) {
                            Ok(model) => match registry.write_model(&model) {
                                Ok(entry) => Ok((*device, rows, Ok(entry))),
                                Err(e) if e.is_retryable() => Err(SchedulerError::Registry(e)),
                                Err(e) => Ok((*device, rows, Err(error_chain(&e)))),
                            },
                            Err(reason) => Ok((*device, rows, Err(reason))),
                        }
                    })
                    .collect();
                let rows = table.device.len() as u64;
                progress.unit_done(rows, table.runs.len(), false);
                out.into_iter().collect()
            })
            .collect()
    });
    progress.finish();
    let mut entries = Vec::new();
    let mut failed = Vec::new();
    let mut rows = 0;
    for unit in results {
        for (device, n, result) in unit? {
            rows += n;
            match result {
                Ok(entry) => entries.push(entry),
                Err(reason) => failed.push((device, reason)),
            }
        }
    }
    let trained = entries.len() as u64;
    // Models are written first, the index last: readers never see an entry without its file.
    registry.commit(entries)?;
    tracing::info!(trained, failed = failed.len(), rows, "training committed");
    Ok(TrainReport {
        registry_url: registry.url().to_string(),
        trained,
        rows,
        failed,
        elapsed: started.elapsed(),
    })
}

fn fit_one(
    spec: &TrainSpec,
    device: i64,
    features: &[String],
    columns: &[&[f64]],
    from_us: Option<i64>,
    to_us: Option<i64>,
) -> Result<Model, String> {
    let mut params = spec.params.params().clone();
    params.seed = device_seed(params.seed, device);
    let valid = params.clone().check().map_err(|e| e.to_string())?;
    let forest = valid.fit(columns).map_err(|e| e.to_string())?;
    let training = TrainingInfo {
        rows: columns.first().map_or(0, |c| c.len() as u64),
        from_us,
        to_us,
        summaries: columns.iter().map(|c| FeatureSummary::of(c)).collect(),
    };
    Model::isolation_forest(
        ModelKey::device(device),
        &params,
        features.to_vec(),
        training,
        forest,
        spec.created_at.clone(),
    )
    .map_err(|e| error_chain(&e))
}
