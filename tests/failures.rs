//! Failure isolation and bad input: per-device failures, thresholds, clear errors, exit codes.

use std::path::Path;

use crate::common::*;

fn registry_copy(dir: &Path) -> String {
    let registry = dir.join("registry");
    copy_dir(Path::new(&fixture().registry()), &registry);
    registry.display().to_string()
}

#[test]
fn a_device_without_a_model_fails_alone() {
    let f = fixture();
    let dir = tempdir();
    let registry = dir.path().join("partial").display().to_string();
    expect_code(
        &["train", "--input", &f.readings(), "--registry", &registry, "--devices", "0..8"],
        0,
    );
    let output = dir.path().join("out").display().to_string();
    let args = [
        "run",
        "--input",
        &f.readings(),
        "--registry",
        &registry,
        "--output",
        &output,
        "--devices",
        "0..10",
    ];
    // Two of ten devices have no model: over the default threshold of 0 -> exit code 3 ...
    let stdout = expect_code(&args, 3);
    assert!(stdout.contains("8 scored, 2 failed"), "{stdout}");
    assert!(stdout.contains("model_missing"), "{stdout}");
    let run = run_dir(Path::new(&dir.path().join("out")));
    let m = manifest(&run);
    let failed: Vec<i64> = m["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["status"] == "failed")
        .map(|d| d["device"].as_i64().unwrap())
        .collect();
    assert_eq!(failed, vec![8, 9]);
    assert_eq!(m["totals"]["rows"], 8 * ROWS as u64);
    // Recorded relative to the output, beside the run's folder.
    let recorded = m["failures_tables"][0].as_str().unwrap();
    assert!(recorded.starts_with("_runs/"), "{recorded}");
    let table = read_parquet(&run.parent().unwrap().join(recorded));
    assert_eq!(table[0].num_rows(), 2);
    // ... and within a tolerance the same committed run exits 0.
    let mut tolerant = args.to_vec();
    tolerant.extend(["--max-failed", "20%"]);
    expect_code(&tolerant, 0);
}

#[test]
fn a_corrupt_model_fails_its_device_and_verify_reports_it() {
    let f = fixture();
    let dir = tempdir();
    let registry = registry_copy(dir.path());
    let object = corrupt_model(Path::new(&registry), "3");
    assert!(object.starts_with("packs/"), "trained models are packed: {object}");

    let output = dir.path().join("out").display().to_string();
    let stdout = run_job(&f.readings(), &registry, &output, &["--max-failed", "1"], 0);
    assert!(stdout.contains(&format!("{} scored, 1 failed", DEVICES - 1)), "{stdout}");
    assert!(stdout.contains("model 3: model_invalid"), "{stdout}");
    assert!(stdout.contains(&format!("{object} (at byte ")), "{stdout}");
    let verify = expect_code(&["models", "--registry", &registry, "verify"], 3);
    assert!(verify.contains("BAD  3:") && verify.contains("1 bad"), "{verify}");
}

#[test]
fn a_model_trained_on_other_columns_fails_with_feature_mismatch() {
    let dir = tempdir();
    let data = dir.path().join("seven").display().to_string();
    let readings = format!("{data}/readings");
    expect_code(
        &[
            "generate",
            "--devices",
            "3",
            "--sensors",
            "7",
            "--rows-per-device",
            "100",
            "--out",
            &data,
        ],
        0,
    );
    let output = dir.path().join("out").display().to_string();
    // The fixture's models expect 8 sensors, including flow_rate.
    let stdout = run_job(&readings, &fixture().registry(), &output, &["--max-failed", "100%"], 0);
    assert!(stdout.contains("0 scored, 3 failed"), "{stdout}");
    assert!(stdout.contains("feature_mismatch") && stdout.contains("flow_rate"), "{stdout}");
}

#[test]
fn a_truncated_input_file_is_a_clear_error() {
    let dir = tempdir();
    let readings = dir.path().join("readings");
    copy_dir(Path::new(&fixture().readings()), &readings);
    let victim = readings.join("part-00001.parquet");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 3]).unwrap();
    let output = dir.path().join("out").display().to_string();
    let stderr = run_job(&readings.display().to_string(), &fixture().registry(), &output, &[], 4);
    assert!(stderr.contains("part-00001.parquet"), "{stderr}");
}

#[test]
fn a_missing_column_is_a_clear_error_naming_file_and_column() {
    let dir = tempdir();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (a_s, b_s) = (a.display().to_string(), b.display().to_string());
    expect_code(
        &[
            "generate",
            "--devices",
            "3",
            "--rows-per-device",
            "50",
            "--partition",
            "device",
            "--out",
            &a_s,
        ],
        0,
    );
    expect_code(
        &[
            "generate",
            "--devices",
            "5",
            "--sensors",
            "7",
            "--rows-per-device",
            "50",
            "--partition",
            "device",
            "--out",
            &b_s,
        ],
        0,
    );
    copy_dir(&b.join("readings/device_id=4"), &a.join("readings/device_id=4"));
    let output = dir.path().join("out").display().to_string();
    let stderr = run_job(&format!("{a_s}/readings"), &fixture().registry(), &output, &[], 4);
    assert!(
        stderr.contains("device_id=4/part-00000.parquet") && stderr.contains("`flow_rate`"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_with_code_2() {
    let f = fixture();
    let out = tempdir();
    let output = out.path().display().to_string();
    let base = ["run", "--input", &f.readings(), "--registry", &f.registry(), "--output", &output];
    for extra in [
        vec!["--shard-index", "3", "--shard-count", "3"],
        vec!["--devices", "5..2"],
        vec!["--from", "yesterday"],
        vec!["--max-failed", "lots"],
        vec!["--run-id", "../x"],
    ] {
        let mut args = base.to_vec();
        args.extend(extra.iter());
        expect_code(&args, 2);
    }
    expect_code(&["run", "--registry", &f.registry(), "--output", &output], 2);
    run_job("ftp://nowhere/x", &f.registry(), &output, &[], 2);
}

#[test]
fn a_wrong_column_type_is_a_clear_error_naming_file_and_column() {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    let dir = tempdir();
    let readings = dir.path().join("readings");
    std::fs::create_dir_all(&readings).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("temperature", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1, 1])),
            Arc::new(TimestampMicrosecondArray::from(vec![0, 60_000_000]).with_timezone("UTC")),
            Arc::new(StringArray::from(vec!["20.5", "hot"])),
        ],
    )
    .unwrap();
    write_parquet(&readings.join("bad-types.parquet"), &batch);
    let output = dir.path().join("out").display().to_string();
    let stderr = run_job(&readings.display().to_string(), &fixture().registry(), &output, &[], 4);
    assert!(stderr.contains("bad-types.parquet") && stderr.contains("`temperature`"), "{stderr}");
}

#[test]
fn devices_can_be_listed_in_a_file() {
    let f = fixture();
    let dir = tempdir();
    let list = dir.path().join("devices.txt");
    std::fs::write(&list, "# not a comment: ids and ranges only\n").unwrap();
    let output = dir.path().join("out").display().to_string();
    let from_file = format!("@{}", list.display());
    let args = [
        "run",
        "--input",
        &f.readings(),
        "--registry",
        &f.registry(),
        "--output",
        &output,
        "--devices",
        &from_file,
    ];
    expect_code(&args, 2);
    std::fs::write(&list, "2\n4..6\n11\n").unwrap();
    let stdout = expect_code(&args, 0);
    assert!(stdout.contains("4 scored, 0 failed"), "{stdout}");
}
