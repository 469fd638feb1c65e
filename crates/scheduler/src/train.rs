//! The training job: one model per device (wide layout) or per (device, sensor) series (long
//! layout), in parallel, deterministic for a seed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use batchscore_detectors::{ValidIsolationForestParams, ValidPcaParams};
use batchscore_io::Location;
use batchscore_registry::{
    DriftReference, EncodedModel, FeatureSummary, IndexEntry, Model, ModelKey, PACK_MODELS,
    Registry, TrainingInfo,
};
use rayon::prelude::*;

use crate::dataset::{Dataset, Shape, UnitTable};
use crate::run::check_sensor_selection;
use crate::{
    DeviceSelection, InputColumns, Plan, Progress, SchedulerError, SensorSelection, TimeWindow,
};
use batchscore_io::error_chain;

/// Everything a training run needs, already validated.
#[derive(Debug, Clone)]
pub struct TrainSpec {
    pub input: Location,
    pub registry: Location,
    pub selection: DeviceSelection,
    /// Long layout: which sensors get a model.
    pub sensors: SensorSelection,
    pub window: TimeWindow,
    pub columns: InputColumns,
    /// Wide layout: feature columns in model order; `None`: every sensor column of the input.
    /// (A long-layout model has one feature: its sensor's values.)
    pub features: Option<Vec<String>>,
    pub params: TrainParams,
    pub threads: usize,
    /// Rows read per unit (bounds memory: workers x unit rows, plus rows of devices that
    /// straddle units). Models do not depend on it.
    pub unit_rows: u64,
    /// Stamped into each model's metadata (not part of its version).
    pub created_at: String,
}

/// Which detector family to train, with its checked hyper-parameters.
#[derive(Debug, Clone)]
pub enum TrainParams {
    IsolationForest(ValidIsolationForestParams),
    /// PCA reconstruction error (smartcore).
    Pca(ValidPcaParams),
}

/// What a training run did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub registry_url: String,
    pub trained: u64,
    pub rows: u64,
    /// Model keys that could not be trained, with the reason.
    pub failed: Vec<(String, String)>,
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

/// A seed per series: the device's seed, mixed with the sensor name's FNV-1a hash.
fn series_seed(seed: u64, device: i64, sensor: Option<&str>) -> u64 {
    let seed = device_seed(seed, device);
    match sensor {
        None => seed,
        Some(name) => {
            let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
            device_seed(seed, hash as i64)
        }
    }
}

/// A series: its device and, in the long layout, its sensor.
type Key = (i64, Option<String>);

/// Trains one model per selected device and publishes them in the registry's index.
///
/// Stopped on request (a signal), it writes no index: the registry stays as it was (model
/// objects written so far are immutable and unlisted), and the same command trains again.
pub fn train(spec: &TrainSpec, progress: &dyn Progress) -> Result<TrainReport, SchedulerError> {
    train_steps(spec, progress).map_err(|e| match e.class() {
        batchscore_io::ErrorClass::Interrupted => SchedulerError::TrainingStopped,
        _ => e,
    })
}

fn train_steps(spec: &TrainSpec, progress: &dyn Progress) -> Result<TrainReport, SchedulerError> {
    let started = Instant::now();
    let mut registry = Registry::open(spec.registry.clone())?;
    let dataset = Dataset::scan(&spec.input, &spec.columns, &spec.selection, &spec.window)?;
    check_sensor_selection(&spec.sensors, &dataset.columns)?;
    let (features, indices) = feature_columns(spec, &dataset)?;
    // Units are cut at row groups so memory stays bounded by workers x unit size. A device whose
    // rows may lie in several units (its id is inside more than one unit's device interval: in
    // a file sorted by device, the one device at each cut) is trained after the units, from the
    // rows the units set aside; every other device is trained inside its unit.
    let plan = Plan::build(&dataset.slices, spec.unit_rows.max(1));
    progress.start(plan.units.len(), plan.rows());
    let pool = crate::worker_pool(spec.threads)?;
    let trainer = Trainer { spec, features: features.as_deref(), registry: &registry };
    let job = UnitJob { trainer: &trainer, dataset: &dataset, plan: &plan, indices: &indices };
    let (mut series_results, shared_rows) = pool.install(|| job.train_units(progress))?;
    series_results.extend(pool.install(|| job.train_shared(shared_rows))?);
    series_results.sort_by(|a, b| a.0.cmp(&b.0));
    progress.finish();
    let (entries, failed, rows) = outcomes(series_results);
    let trained = entries.len() as u64;
    // Models are written first, the index last: readers never see an entry without its file.
    spec.input.check_cancelled()?;
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

/// The feature columns models are trained on: wide input, the chosen sensor columns (all by
/// default) as names and value-column indices; long input, each series' one value column.
fn feature_columns(
    spec: &TrainSpec,
    dataset: &Dataset,
) -> Result<(Option<Vec<String>>, Vec<usize>), SchedulerError> {
    match &dataset.columns.shape {
        Shape::Wide { sensors } => {
            let features = spec.features.clone().unwrap_or_else(|| sensors.clone());
            let indices = features
                .iter()
                .map(|f| {
                    sensors.iter().position(|s| s == f).ok_or_else(|| {
                        SchedulerError::InvalidSetting {
                            setting: "features",
                            reason: format!("column `{f}` is not a sensor column of the input"),
                        }
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok((Some(features), indices))
        }
        Shape::Long { .. } if spec.features.is_some() => Err(SchedulerError::InvalidSetting {
            setting: "features",
            reason: "names columns of wide-layout input; in the long layout each (device, \
                     sensor) model has one feature, its sensor's values (select sensors \
                     with --sensors)"
                .into(),
        }),
        Shape::Long { .. } => Ok((None, vec![0])),
    }
}

/// Index entries of the trained series, the failed ones with their reasons, and the rows read.
fn outcomes(results: Vec<SeriesResult>) -> (Vec<IndexEntry>, Vec<(String, String)>, u64) {
    let mut entries = Vec::new();
    let mut failed = Vec::new();
    let mut rows = 0;
    for (key, n, result) in results {
        rows += n;
        match result {
            Ok(entry) => entries.push(entry),
            Err(reason) => failed.push((ModelKey::name(key.0, key.1.as_deref()), reason)),
        }
    }
    (entries, failed, rows)
}

/// The units of one training job.
struct UnitJob<'a> {
    trainer: &'a Trainer<'a>,
    dataset: &'a Dataset,
    plan: &'a Plan,
    /// Value columns that feed the models, in feature order.
    indices: &'a [usize],
}

impl UnitJob<'_> {
    /// Trains every series that lies in one unit only, in parallel over units and series; sets
    /// aside, by series, the rows of those that straddle units.
    #[allow(clippy::type_complexity)]
    fn train_units(
        &self,
        progress: &dyn Progress,
    ) -> Result<(Vec<SeriesResult>, BTreeMap<Key, Vec<SharedRows>>), SchedulerError> {
        let shared = self.plan.shared_devices();
        let results: Vec<Result<UnitResult, SchedulerError>> = self
            .plan
            .units
            .par_iter()
            .map(|unit| {
                let spec = self.trainer.spec;
                // Once stopped, no unit starts.
                spec.input.check_cancelled()?;
                let table = self.dataset.read_unit(
                    &unit.slices,
                    unit.lo..=unit.hi,
                    &spec.selection,
                    &spec.sensors,
                    &spec.window,
                )?;
                let (mine, set_aside): (Vec<usize>, Vec<usize>) =
                    (0..table.runs.len()).partition(|&i| !shared.contains(table.runs[i].device));
                // Models go to storage a pack at a time: memory holds one pack's encoded
                // models per unit, and neighbouring series share a pack.
                let mut trained = Vec::with_capacity(mine.len());
                for pack in mine.chunks(PACK_MODELS) {
                    let fitted = pack
                        .par_iter()
                        .map(|&i| self.fit_series(&table, i))
                        .collect::<Result<Vec<_>, _>>()?;
                    trained.extend(self.trainer.store(fitted)?);
                }
                let set_aside = set_aside.into_iter().map(|i| self.set_aside(&table, i)).collect();
                progress.unit_done(table.device.len() as u64, table.runs.len(), false);
                Ok((trained, set_aside))
            })
            .collect();
        let mut series_results = Vec::new();
        let mut shared_rows: BTreeMap<Key, Vec<SharedRows>> = BTreeMap::new();
        for unit in results {
            let (trained, set_aside) = unit?;
            series_results.extend(trained);
            for rows in set_aside {
                shared_rows.entry(rows.key.clone()).or_default().push(rows);
            }
        }
        Ok((series_results, shared_rows))
    }

    /// Trains the series that straddled units, each from its rows joined in time order.
    fn train_shared(
        &self,
        shared_rows: BTreeMap<Key, Vec<SharedRows>>,
    ) -> Result<Vec<SeriesResult>, SchedulerError> {
        let mut shared: Vec<(Key, Vec<SharedRows>)> = shared_rows.into_iter().collect();
        let mut trained = Vec::with_capacity(shared.len());
        while !shared.is_empty() {
            let pack: Vec<(Key, Vec<SharedRows>)> =
                shared.drain(..PACK_MODELS.min(shared.len())).collect();
            let fitted = pack
                .into_par_iter()
                .map(|(key, pieces)| {
                    self.trainer.spec.input.check_cancelled()?;
                    let (timestamps, columns) = SharedRows::concat(pieces);
                    let refs: Vec<&[f64]> = columns.iter().map(Vec::as_slice).collect();
                    let (first, last) = (timestamps.first().copied(), timestamps.last().copied());
                    Ok(self.trainer.fit(key, &refs, first, last))
                })
                .collect::<Result<Vec<_>, SchedulerError>>()?;
            trained.extend(self.trainer.store(fitted)?);
        }
        Ok(trained)
    }

    fn key(table: &UnitTable, i: usize) -> Key {
        let series = &table.runs[i];
        (series.device, table.sensor_name(series).map(String::from))
    }

    fn fit_series(&self, table: &UnitTable, i: usize) -> Result<Fitted, SchedulerError> {
        // A long unit stops between its series, not only between units.
        self.trainer.spec.input.check_cancelled()?;
        let range = table.runs[i].rows.clone();
        let columns: Vec<&[f64]> =
            self.indices.iter().map(|&c| &table.values[c][range.clone()]).collect();
        let first = table.timestamp_us.get(range.start).copied();
        let last = table.timestamp_us.get(range.end.wrapping_sub(1)).copied();
        Ok(self.trainer.fit(Self::key(table, i), &columns, first, last))
    }

    fn set_aside(&self, table: &UnitTable, i: usize) -> SharedRows {
        let range = table.runs[i].rows.clone();
        SharedRows {
            key: Self::key(table, i),
            timestamp_us: table.timestamp_us[range.clone()].to_vec(),
            columns: self
                .indices
                .iter()
                .map(|&c| table.values[c][range.clone()].to_vec())
                .collect(),
        }
    }
}

/// A series' training outcome: its rows, and its index entry or why it has none.
type SeriesResult = (Key, u64, Result<IndexEntry, String>);

/// A series' trained model, encoded for its pack, or why it has none.
type Fitted = (Key, u64, Result<EncodedModel, String>);

/// What a unit produced: models of its own series, rows of series it shares with others.
type UnitResult = (Vec<SeriesResult>, Vec<SharedRows>);

/// Rows of a series whose device spans units, set aside by one unit.
struct SharedRows {
    key: Key,
    timestamp_us: Vec<i64>,
    /// One column per feature.
    columns: Vec<Vec<f64>>,
}

impl SharedRows {
    /// Joins the pieces of one device (in unit order) and sorts them by time; the sort is stable,
    /// so equal timestamps keep unit order and the result is deterministic.
    fn concat(pieces: Vec<SharedRows>) -> (Vec<i64>, Vec<Vec<f64>>) {
        let n_features = pieces.first().map_or(0, |p| p.columns.len());
        let mut timestamps = Vec::new();
        let mut columns = vec![Vec::new(); n_features];
        for piece in pieces {
            timestamps.extend(piece.timestamp_us);
            for (column, values) in columns.iter_mut().zip(piece.columns) {
                column.extend(values);
            }
        }
        let mut order: Vec<usize> = (0..timestamps.len()).collect();
        order.sort_by_key(|&i| timestamps[i]);
        let columns = columns.iter().map(|c| order.iter().map(|&i| c[i]).collect()).collect();
        (order.iter().map(|&i| timestamps[i]).collect(), columns)
    }
}

/// Fits and stores one series' model.
struct Trainer<'a> {
    spec: &'a TrainSpec,
    /// Wide layout: the feature names of every model; long: `None` (the sensor's name).
    features: Option<&'a [String]>,
    registry: &'a Registry,
}

impl Trainer<'_> {
    /// Trains a series' model and encodes it for its pack; a series-level problem is an `Err`
    /// inside the result.
    fn fit(
        &self,
        key: Key,
        columns: &[&[f64]],
        first_us: Option<i64>,
        last_us: Option<i64>,
    ) -> Fitted {
        let rows = columns.first().map_or(0, |c| c.len() as u64);
        let fitted = match &key.1 {
            None => Ok((ModelKey::device(key.0), self.features.unwrap_or_default().to_vec())),
            Some(sensor) => ModelKey::series(key.0, sensor)
                .map(|k| (k, vec![sensor.clone()]))
                .map_err(|e| error_chain(&e)),
        }
        .and_then(|(model_key, features)| {
            let series = (key.0, key.1.as_deref());
            fit_one(self.spec, model_key, series, features, columns, (first_us, last_us))
        });
        let encoded =
            fitted.and_then(|model| EncodedModel::new(&model).map_err(|e| error_chain(&e)));
        (key, rows, encoded)
    }

    /// Writes the models that fitted as one pack; a storage fault worth retrying stops the
    /// job, any other failure to write is each model's outcome.
    fn store(&self, fitted: Vec<Fitted>) -> Result<Vec<SeriesResult>, SchedulerError> {
        let mut results = Vec::with_capacity(fitted.len());
        let mut encoded = Vec::new();
        let mut written = Vec::new();
        for (key, rows, model) in fitted {
            match model {
                Ok(model) => {
                    encoded.push(model);
                    written.push((key, rows));
                }
                Err(reason) => results.push((key, rows, Err(reason))),
            }
        }
        if encoded.is_empty() {
            return Ok(results);
        }
        match self.registry.write_pack(encoded) {
            Ok(entries) => results.extend(
                written.into_iter().zip(entries).map(|((key, rows), e)| (key, rows, Ok(e))),
            ),
            Err(e) if e.is_retryable() => return Err(SchedulerError::Registry(e)),
            Err(e) => {
                let reason = error_chain(&e);
                results.extend(
                    written.into_iter().map(|(key, rows)| (key, rows, Err(reason.clone()))),
                );
            }
        }
        Ok(results)
    }
}

fn fit_one(
    spec: &TrainSpec,
    key: ModelKey,
    (device, sensor): (i64, Option<&str>),
    features: Vec<String>,
    columns: &[&[f64]],
    (from_us, to_us): (Option<i64>, Option<i64>),
) -> Result<Model, String> {
    let training = TrainingInfo {
        rows: columns.first().map_or(0, |c| c.len() as u64),
        from_us,
        to_us,
        summaries: columns.iter().map(|c| FeatureSummary::of(c)).collect(),
    };
    match &spec.params {
        TrainParams::IsolationForest(valid) => {
            let mut params = valid.params().clone();
            params.seed = series_seed(params.seed, device, sensor);
            let valid = params.clone().check().map_err(|e| e.to_string())?;
            let forest = valid.fit(columns).map_err(|e| e.to_string())?;
            let created_at = spec.created_at.clone();
            Model::isolation_forest(key, &params, features, training, forest, created_at)
        }
        TrainParams::Pca(valid) => {
            use batchscore_registry::DetectorModel;
            let detector = if valid.params().standardize {
                DetectorModel::ScaledPca(
                    valid.fit_standardized(columns).map_err(|e| e.to_string())?,
                )
            } else {
                DetectorModel::Pca(valid.fit(columns).map_err(|e| e.to_string())?)
            };
            let params = serde_json::to_string(valid.params()).map_err(|e| e.to_string())?;
            Model::new(key, params, features, training, detector, spec.created_at.clone())
        }
    }
    // The decile bins scoring measures drift against.
    .and_then(|model| model.with_drift(DriftReference::of(columns)))
    .map_err(|e| error_chain(&e))
}
