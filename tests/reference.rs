//! The reference system's workload end to end: its long-format CSV (`TS,Device,Tag,Value`), its
//! per-(device, sensor) scikit-learn pipelines (StandardScaler + OneClassSVM), and its output
//! (`TS, Device, Tag, Val, Prediction`), produced by the reference's own pandas code in
//! tests/reference/reference_flow.py and by batchscore, compared row for row. Also: the same
//! readings as Parquet, sensor selection, and univariate training from long data.
//!
//! Needs the Python of `scripts/python-env.sh` (scikit-learn, pandas); without it the test
//! prints "skipped".

use std::collections::HashSet;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType};

use crate::common::*;
use crate::sklearn::{python, run_python};

/// The paths of a run's parts, from its `_SUCCESS` manifest.
fn parts(run: &Path) -> Vec<std::path::PathBuf> {
    let m = manifest(run);
    m["parts"].as_array().unwrap().iter().map(|p| run.join(p["path"].as_str().unwrap())).collect()
}

/// Concatenates CSV parts, keeping the first header only.
fn csv_text(run: &Path) -> String {
    let mut text = String::new();
    for (i, part) in parts(run).iter().enumerate() {
        let part = std::fs::read_to_string(part).unwrap();
        let body = if i == 0 { part.as_str() } else { part.split_once('\n').unwrap().1 };
        text.push_str(body);
    }
    text
}

/// `(TS, Device, Tag, Val, Prediction)` lines of the reference's output, header dropped.
fn lines(text: &str) -> Vec<&str> {
    text.lines().skip(1).collect()
}

fn batches_of(run: &Path) -> Vec<RecordBatch> {
    parts(run).iter().flat_map(|p| read_parquet(p)).collect()
}

#[test]
fn reference_workload_gives_the_reference_output() {
    let Some(python) = python() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempdir();
    let path = |p: &str| dir.path().join(p).display().to_string();
    let flow = root.join("tests/reference/reference_flow.py");
    let made = run_python(&python, &[flow.to_str().unwrap(), &path("")]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let expected = std::fs::read_to_string(dir.path().join("expected.csv")).unwrap();
    let expected_lines = lines(&expected);
    assert_eq!(expected_lines.len(), 3 * 5 * 2160, "3 devices x 5 tags x 3 h at 5 s");
    let flagged = expected_lines.iter().filter(|l| l.ends_with(",1")).count();
    assert!(flagged >= 60, "the injected outliers are anomalies for sklearn too: {flagged}");

    // Export the pickles as they are; the importer maps file names to (device, sensor) keys.
    let exporter = root.join("scripts/export_sklearn.py").display().to_string();
    let export = run_python(&python, &[&exporter, &path("models"), "--out", &path("exported")]);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let registry = path("registry");
    let pattern = "model_{device}_{sensor}";
    let imported = expect_code(
        &["models", "import", &path("exported"), "--registry", &registry, "--key-pattern", pattern],
        0,
    );
    assert!(imported.contains("imported 15 models"), "{imported}");
    let shown = expect_code(&["models", "show", "3.5", "--registry", &registry], 0);
    assert!(shown.contains("one_class_svm"), "{shown}");

    // CSV in, reference profile as CSV out: byte for byte what the reference writes.
    let out = path("out-csv");
    let summary = run_job(
        &path("data"),
        &registry,
        &out,
        &["--profile", "reference", "--output-format", "csv"],
        0,
    );
    assert!(summary.contains("15 scored, 0 failed"), "{summary}");
    // Imported models bring no training data: their drift is unknown, and the run says so.
    assert!(summary.contains("drift unknown for 15 series"), "{summary}");
    let run = run_dir(Path::new(&out));
    assert!(parts(&run).iter().all(|p| p.extension().unwrap() == "csv"));
    assert_eq!(csv_text(&run), expected, "batchscore's CSV equals the reference's");

    // The same readings as Parquet, reference profile as Parquet: the same predictions, with
    // TS a UTC timestamp and Tag an integer.
    let out = path("out-parquet");
    run_job(&path("data_parquet"), &registry, &out, &["--profile", "reference"], 0);
    let batches = batches_of(&run_dir(Path::new(&out)));
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["TS", "Device", "Tag", "Val", "Prediction"]);
    // A report of reference-profile parts: predictions per series and hour, no scores.
    let run_id = run_dir(Path::new(&out)).file_name().unwrap().to_str().unwrap().to_string();
    let report = expect_code(
        &["report", "--output", &out, "--run-id", &run_id, "--format", "json", "--to", "-"],
        0,
    );
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["has_scores"], false);
    assert_eq!(report["top_series"].as_array().unwrap().len(), 15);
    assert!(report["top_series"][0]["key"].as_str().unwrap().contains('.'), "{report}");
    let per_hour: u64 =
        report["per_hour"].as_array().unwrap().iter().map(|h| h["rows"].as_u64().unwrap()).sum();
    assert_eq!(per_hour, report["totals"]["rows"].as_u64().unwrap());
    assert_eq!(report["drift"]["summary"]["series_unknown"], 15);
    assert_eq!(
        schema.field(0).data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(schema.field(2).data_type(), &DataType::Int64);
    let mut got = Vec::new();
    for b in &batches {
        let tag = b.column(2).as_primitive::<Int64Type>();
        let val = b.column(3).as_primitive::<Float64Type>();
        let prediction = b.column(4).as_primitive::<Int64Type>();
        let device = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            got.push((device.value(i), tag.value(i), val.value(i), prediction.value(i)));
        }
    }
    let want: Vec<(i64, i64, f64, i64)> = expected_lines
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want, "Parquet input and output: the same rows and predictions");

    // --devices and --sensors select series; the rows are the reference's for those series.
    let out = path("out-selected");
    let args = [
        "--devices",
        "1,3",
        "--sensors",
        "2,5",
        "--profile",
        "reference",
        "--output-format",
        "csv",
    ];
    let summary = run_job(&path("data"), &registry, &out, &args, 0);
    assert!(summary.contains("4 scored, 0 failed"), "{summary}");
    let run = run_dir(Path::new(&out));
    let selected: Vec<&str> = expected_lines
        .iter()
        .copied()
        .filter(|l| {
            let f: Vec<&str> = l.split(',').collect();
            ["1", "3"].contains(&f[1]) && ["2", "5"].contains(&f[2])
        })
        .collect();
    assert_eq!(lines(&csv_text(&run)), selected);
    let m = manifest(&run);
    let keys: Vec<String> = m["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| format!("{}.{}", d["device"], d["sensor"].as_str().unwrap()))
        .collect();
    assert_eq!(keys, ["1.2", "1.5", "3.2", "3.5"]);
    // A selected sensor with no readings is reported per series, not silently dropped.
    let out = path("out-missing");
    let summary =
        run_job(&path("data"), &registry, &out, &["--devices", "2", "--sensors", "5,9"], 0);
    assert!(summary.contains("1 scored, 0 failed, 1 without input"), "{summary}");

    train_from_long_readings(dir.path());
}

/// `batchscore train` on long readings: one univariate model per (device, sensor), named after
/// its sensor, which flags the injected outliers in the default scored output.
fn train_from_long_readings(dir: &Path) {
    let path = |p: &str| dir.join(p).display().to_string();
    let registry = path("trained");
    let text = expect_code(&["train", "--input", &path("data"), "--registry", &registry], 0);
    assert!(text.contains("trained 15 models"), "{text}");
    let listed = expect_code(&["models", "list", "--registry", &registry], 0);
    for key in ["1.1", "2.3", "3.5"] {
        assert!(listed.contains(key), "{listed}");
    }
    let shown = expect_code(&["models", "show", "2.3", "--registry", &registry], 0);
    assert!(shown.contains("\"3\""), "the model's one feature is its sensor: {shown}");
    // --features names wide columns; a long-layout model has one feature.
    let refused = expect_code(
        &["train", "--input", &path("data"), "--registry", &path("x"), "--features", "Value"],
        2,
    );
    assert!(refused.contains("long layout"), "{refused}");

    let out = path("out-trained");
    run_job(&path("data"), &registry, &out, &[], 0);
    let batches = batches_of(&run_dir(Path::new(&out)));
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "Device",
            "Tag",
            "TS",
            "Value",
            "score",
            "decision",
            "is_anomaly",
            "model_version",
            "run_id"
        ]
    );
    let injected: HashSet<(String, i64, i64)> = std::fs::read_to_string(dir.join("injected.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect();
    let mut flagged = 0;
    let mut rows = 0;
    for b in &batches {
        let device = b.column(0).as_primitive::<Int64Type>();
        let tag = b.column(1).as_primitive::<Int64Type>();
        let ts = b.column(2).as_primitive::<TimestampMicrosecondType>();
        let anomaly = b.column(6).as_boolean();
        for i in 0..b.num_rows() {
            rows += 1;
            let time = chrono::DateTime::from_timestamp_micros(ts.value(i)).unwrap();
            let stamp = time.format("%Y-%m-%d %H:%M:%S%.3f").to_string();
            if injected.contains(&(stamp, device.value(i), tag.value(i))) {
                assert!(anomaly.value(i), "injected outlier {device:?} {i} not flagged");
                flagged += 1;
            }
            assert!(anomaly.is_valid(i));
        }
    }
    assert_eq!(rows, 3 * 5 * 2160);
    assert_eq!(flagged, injected.len());
}

#[test]
fn long_layout_settings_are_checked_against_the_input() {
    let f = fixture();
    let dir = tempdir();
    let out = dir.path().display().to_string();
    // The reference profile and a sensor selection need long-layout input.
    let text = run_job(&f.readings(), &f.registry(), &out, &["--profile", "reference"], 2);
    assert!(text.contains("long layout"), "{text}");
    let text = run_job(&f.readings(), &f.registry(), &out, &["--sensors", "1"], 2);
    assert!(text.contains("long-layout"), "{text}");
    // Forcing the long layout on wide input names the missing column.
    let text = run_job(&f.readings(), &f.registry(), &out, &["--layout", "long"], 4);
    assert!(text.contains("missing column `sensor`"), "{text}");

    // A malformed CSV value is bad input (exit 4) naming the file and the value.
    let input = dir.path().join("csv");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(
        input.join("readings.csv"),
        "TS,Device,Tag,Value\n2018-08-28 23:00:05.000,1,1,10.16\n2018-08-28 23:00:10.000,1,1,ten\n",
    )
    .unwrap();
    let input = input.display().to_string();
    let out = dir.path().join("out-csv").display().to_string();
    let text = run_job(&input, &f.registry(), &out, &[], 4);
    assert!(text.contains("readings.csv") && text.contains("ten"), "{text}");
}
