//! Drift against training: scoring the training data itself is stable everywhere, a shift of
//! one sensor on a few devices is found on exactly those (device, feature) pairs, and the
//! drift table of a run split over shards and units is the same bytes as one process's.

use std::path::Path;

use arrow::array::{Array, AsArray, Float64Array, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, UInt64Type};

use crate::common::*;

pub const SHIFTED: [i64; 3] = [2, 11, 17];

/// A copy of the fixture's readings with `temperature` of the `SHIFTED` devices moved up by
/// 40 (about 8 training standard deviations), each file split in two by row parity so that
/// every device's rows lie in two files.
pub fn shifted_copy(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(fixture().readings()).unwrap() {
        let path = entry.unwrap().path();
        let batches = read_parquet(&path);
        let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
        let device = batch.column_by_name("device_id").unwrap().as_primitive::<Int64Type>();
        let temp = batch.column_by_name("temperature").unwrap().as_primitive::<Float64Type>();
        let moved: Float64Array = (0..batch.num_rows())
            .map(|i| {
                (!temp.is_null(i)).then(|| {
                    let up = SHIFTED.contains(&device.value(i));
                    temp.value(i) + if up { 40.0 } else { 0.0 }
                })
            })
            .collect();
        let index = batch.schema().index_of("temperature").unwrap();
        let mut columns = batch.columns().to_vec();
        columns[index] = std::sync::Arc::new(moved);
        let moved = RecordBatch::try_new(batch.schema(), columns).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        for parity in [0, 1] {
            let keep: arrow::array::BooleanArray =
                (0..moved.num_rows()).map(|i| Some(i % 2 == parity)).collect();
            let half = arrow::compute::filter_record_batch(&moved, &keep).unwrap();
            write_parquet(&to.join(format!("{parity}-{name}")), &half);
        }
    }
}

/// (device, feature, status, psi) of every row of a run's drift table.
fn drift_rows(run: &Path) -> Vec<(i64, String, String, f64, u64)> {
    let mut rows = Vec::new();
    for batch in read_parquet(&run_tables(run).join("drift.parquet")) {
        let device = batch.column_by_name("device_id").unwrap().as_primitive::<Int64Type>();
        let feature = batch.column_by_name("feature").unwrap().as_string::<i32>();
        let status = batch.column_by_name("status").unwrap().as_string::<i32>();
        let psi = batch.column_by_name("psi_decile").unwrap().as_primitive::<Float64Type>();
        let n = batch.column_by_name("rows").unwrap().as_primitive::<UInt64Type>();
        for i in 0..batch.num_rows() {
            rows.push((
                device.value(i),
                feature.value(i).to_string(),
                status.value(i).to_string(),
                psi.value(i),
                n.value(i),
            ));
        }
    }
    rows
}

#[test]
fn training_data_is_stable_and_a_shifted_sensor_is_found_exactly() {
    let f = fixture();
    let dir = tempdir();
    let same = dir.path().join("same");
    let stdout = run_job(&f.readings(), &f.registry(), &same.display().to_string(), &[], 0);
    assert!(stdout.contains("drift     0 devices drifted, PSI > 0.25"), "{stdout}");
    let rows = drift_rows(&run_dir(&same));
    assert_eq!(rows.len(), DEVICES as usize * 8, "one row per device and sensor");
    for (device, feature, status, psi, n) in &rows {
        assert_eq!(status, "stable", "{device} {feature}");
        assert!(psi.abs() < 1e-9, "{device} {feature}: the training data itself, PSI {psi}");
        assert_eq!(*n, ROWS as u64);
    }

    let moved = dir.path().join("moved");
    shifted_copy(&moved);
    let out = dir.path().join("out");
    let stdout = run_job(
        &moved.display().to_string(),
        &f.registry(),
        &out.display().to_string(),
        &["--summary", "json"],
        0,
    );
    let summary: serde_json::Value =
        serde_json::from_str(&stdout[..stdout.rfind('}').unwrap() + 1]).unwrap();
    assert_eq!(summary["drift"]["devices_drifted"], 3, "{summary}");
    assert_eq!(summary["drift"]["features_significant"], 3, "{summary}");
    let run = run_dir(&out);
    assert_eq!(manifest(&run)["drift"], summary["drift"]);
    for (device, feature, status, psi, _) in drift_rows(&run) {
        let drifted = SHIFTED.contains(&device) && feature == "temperature";
        assert_eq!(status == "significant", drifted, "{device} {feature}: {status} {psi}");
    }
    // `status` reports the same counts.
    let run_id = summary["run_id"].as_str().unwrap();
    let status =
        expect_code(&["status", "--output", &out.display().to_string(), "--run-id", run_id], 0);
    assert!(status.contains("3 devices drifted, PSI > 0.25"), "{status}");
}

#[test]
fn shards_and_units_give_the_same_drift_table_as_one_process() {
    let f = fixture();
    let dir = tempdir();
    let moved = dir.path().join("moved");
    shifted_copy(&moved);
    let input = moved.display().to_string();
    let one = dir.path().join("one");
    run_job(&input, &f.registry(), &one.display().to_string(), &[], 0);
    let split = dir.path().join("split");
    let split_url = split.display().to_string();
    for index in ["1", "0"] {
        let mut extra = vec!["--shard-index", index, "--shard-count", "2", "--threads", "2"];
        extra.extend_from_slice(&SMALL_PARTS);
        run_job(&input, &f.registry(), &split_url, &extra, 0);
    }
    let split_run = run_dir(&split);
    // Devices span several units (more outcomes in receipts than devices), and the merged
    // figures equal those of the single-process run.
    let outcomes: usize = files(&split_run.join("_receipts"))
        .iter()
        .map(|(_, bytes)| {
            let receipt: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            receipt["devices"].as_array().unwrap().len()
        })
        .sum();
    assert!(outcomes > DEVICES as usize, "devices split over units: {outcomes} outcomes");
    let (a, b) = (drift_rows(&run_dir(&one)), drift_rows(&split_run));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.0, &x.1, &x.2, x.4), (y.0, &y.1, &y.2, y.4));
        assert!((x.3 - y.3).abs() < 1e-12, "{x:?} {y:?}");
    }
}

#[test]
fn no_drift_writes_no_partials_no_table_and_is_another_run() {
    let f = fixture();
    let dir = tempdir();
    let out = dir.path().join("out");
    let output = out.display().to_string();
    let stdout = run_job(&f.readings(), &f.registry(), &output, &["--no-drift"], 0);
    assert!(!stdout.contains("drift"), "{stdout}");
    let run = run_dir(&out);
    assert!(!run_tables(&run).exists() && !run.join("_drift").exists());
    assert!(manifest(&run).get("drift").is_none());
    // Measuring drift is another run: it writes what this one did not.
    run_job(&f.readings(), &f.registry(), &output, &[], 0);
    let runs = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('_'));
    assert_eq!(runs.count(), 2);
}

#[test]
fn damaged_partials_stop_the_publish_and_say_how_to_recompute_the_unit() {
    let f = fixture();
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let shard = |i: &str, code: i32| {
        let args = ["--run-id", "r", "--shard-index", i, "--shard-count", "2"];
        run_job(&f.readings(), &f.registry(), &output, &args, code)
    };
    shard("0", 0);
    let run = dir.path().join("out/r");
    let units: Vec<_> =
        std::fs::read_dir(run.join("_drift")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!units.is_empty());
    let unit = units[0].file_name().unwrap().to_str().unwrap().to_string();
    std::fs::write(&units[0], b"\xff\xff damaged").unwrap();
    let text = shard("1", 4);
    let n = unit.trim_start_matches("unit-").trim_end_matches(".bin");
    assert!(text.contains(&unit) && text.contains(&format!("_receipts/part-{n}.json")), "{text}");
    assert!(!run.join("_SUCCESS").exists() && !run_tables(&run).join("drift.parquet").exists());
    // Following the message completes the run with the figures of an undamaged one.
    std::fs::remove_file(&units[0]).unwrap();
    std::fs::remove_file(run.join(format!("_receipts/part-{n}.json"))).unwrap();
    shard("0", 0);
    shard("1", 0);
    let clean = dir.path().join("clean");
    run_job(&f.readings(), &f.registry(), &clean.display().to_string(), &["--run-id", "r"], 0);
    assert_eq!(drift_rows(&run), drift_rows(&clean.join("r")));
}
