//! Helpers shared by the scheduler's integration tests: training, running every shard of a
//! job, reading a completed run back.

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Float64Type;
use batchscore_detectors::IsolationForestParams;
use batchscore_io::{Location, decode_parquet};
use batchscore_scheduler::{
    DeviceSelection, InputColumns, MaxFailed, NoProgress, OutputSpec, RunSpec, SensorSelection,
    Shard, TimeWindow, TrainParams, TrainSpec, run, train,
};

/// A scored row's outcome: score bits, decision bits, is_anomaly.
pub type Outcome = (u64, u64, bool);

/// Every batch of a completed run's parts, following its `_SUCCESS` manifest (not a listing).
pub fn run_batches(out: &Location, run_id: &str) -> Vec<RecordBatch> {
    let run = out.join(run_id).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&run.get("_SUCCESS").unwrap()).unwrap();
    let mut batches = Vec::new();
    for part in manifest["parts"].as_array().unwrap() {
        let path = part["path"].as_str().unwrap();
        batches.extend(decode_parquet(path, run.get(path).unwrap()).unwrap());
    }
    batches
}

/// The outcome of each row of a scored batch, bit for bit.
pub fn outcomes(batch: &RecordBatch) -> Vec<Outcome> {
    let score = batch.column_by_name("score").unwrap().as_primitive::<Float64Type>();
    let decision = batch.column_by_name("decision").unwrap().as_primitive::<Float64Type>();
    let anomaly = batch.column_by_name("is_anomaly").unwrap().as_boolean();
    (0..batch.num_rows())
        .map(|i| (score.value(i).to_bits(), decision.value(i).to_bits(), anomaly.value(i)))
        .collect()
}

/// Trains 5-tree forests for every device (or series) of `input` into `registry`.
pub fn train_forests(input: &Location, registry: &Location, seed: u64, unit_rows: u64) {
    let params = IsolationForestParams { n_estimators: 5, seed, ..Default::default() };
    let spec = TrainSpec {
        input: input.clone(),
        registry: registry.clone(),
        selection: DeviceSelection::All,
        sensors: SensorSelection::All,
        window: TimeWindow::default(),
        columns: InputColumns::default(),
        features: None,
        params: TrainParams::IsolationForest(params.check().unwrap()),
        threads: 2,
        unit_rows,
        created_at: "2026-01-01T00:00:00Z".into(),
    };
    train(&spec, &NoProgress).unwrap();
}

/// Runs every shard of a job in turn (the spec's shard is replaced); returns the run id. Only
/// the last shard completes the run, and no series fails.
pub fn run_shards(spec: &RunSpec, shards: u32) -> String {
    let mut run_id = String::new();
    for index in 0..shards {
        let spec = RunSpec { shard: Shard::new(index, shards).unwrap(), ..spec.clone() };
        let report = run(&spec, &NoProgress).unwrap();
        assert_eq!(report.complete, index + 1 == shards);
        assert_eq!(report.manifest.totals.devices_failed, 0);
        run_id = report.run_id;
    }
    run_id
}

/// A run over `input` into `output` with default columns and scored Parquet output.
pub fn run_spec(input: &Location, registry: &Location, output: &Location) -> RunSpec {
    RunSpec {
        input: input.clone(),
        registry: registry.clone(),
        output: output.clone(),
        run_id: None,
        selection: DeviceSelection::All,
        sensors: SensorSelection::All,
        window: TimeWindow::default(),
        columns: InputColumns::default(),
        output_spec: OutputSpec::default(),
        threads: 1,
        shard: Shard::WHOLE,
        max_failed: MaxFailed::Count(0),
        min_part_rows: 1,
        chunk_rows: batchscore_scheduler::DEFAULT_CHUNK_ROWS,
        max_part_rows: 1_000_000,
        settings: serde_json::Value::Null,
        transform: None,
        drift: true,
    }
}
