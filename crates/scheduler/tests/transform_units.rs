//! A unit transform that waits on a rayon pool of its own (as polars does) must not let the
//! job's workers start further units while they wait: each worker holds one unit at a time, so
//! memory stays one unit per worker whatever the input's size.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::RecordBatch;
use batchscore_io::Storage;
use batchscore_scheduler::{
    DeviceSelection, InputColumns, NoProgress, SensorSelection, Shard, TableLayout, TimeWindow,
    TransformError, TransformSpec, UnitTransform, transform,
};
use batchscore_synth::{GenerateSpec, Partitioning, generate};

/// Passes rows through, after a short wait inside a pool of its own; counts the applies in
/// flight at once.
#[derive(Debug)]
struct PoolBound {
    pool: rayon::ThreadPool,
    in_flight: AtomicUsize,
    most: AtomicUsize,
}

impl UnitTransform for PoolBound {
    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "pool_bound": true })
    }

    fn check(&self, _: &TableLayout) -> Result<(), String> {
        Ok(())
    }

    fn output_layout(&self, layout: &TableLayout) -> TableLayout {
        layout.clone()
    }

    fn apply(&self, batch: RecordBatch, _: &TableLayout) -> Result<RecordBatch, TransformError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.pool.install(|| std::thread::sleep(std::time::Duration::from_millis(20)));
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(batch)
    }
}

#[test]
fn a_worker_holds_one_unit_while_its_transform_waits_on_another_pool() {
    let storage = Storage::new().unwrap();
    let data = storage.open("memory://transform-units/data").unwrap();
    let spec = GenerateSpec {
        devices: 40,
        rows_per_device: 200,
        row_group_rows: 400,
        partitioning: Partitioning::None,
        ..GenerateSpec::default()
    };
    generate(&spec, &data).unwrap();
    let input = data.join("readings").unwrap();
    let counting = Arc::new(PoolBound {
        pool: rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap(),
        in_flight: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
    });
    let job = TransformSpec {
        input,
        output: storage.open("memory://transform-units/out").unwrap(),
        run_id: None,
        selection: DeviceSelection::All,
        sensors: SensorSelection::All,
        window: TimeWindow::default(),
        columns: InputColumns::default(),
        transform: counting.clone(),
        threads: 2,
        shard: Shard::new(0, 1).unwrap(),
        min_part_rows: 400,
        max_part_rows: 400,
        settings: serde_json::Value::Null,
    };
    let report = transform(&job, &NoProgress).unwrap();
    assert!(report.plan_units >= 10, "many units: {}", report.plan_units);
    let most = counting.most.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} units in flight on 2 workers");
}
