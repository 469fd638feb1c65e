//! Regression tests for what a hostile user found (issue 12): exit codes a scheduler can trust,
//! no silent loss, and a commit protocol that validates what it finds.

use std::path::Path;

use crate::common::*;

fn out_dir(dir: &tempfile::TempDir) -> String {
    dir.path().join("out").display().to_string()
}

/// A copy of the fixture's readings in `dir/readings`.
fn readings_copy(dir: &Path) -> String {
    let readings = dir.join("readings");
    copy_dir(Path::new(&fixture().readings()), &readings);
    readings.display().to_string()
}

#[test]
fn an_empty_parquet_file_is_bad_input_not_a_storage_outage() {
    let dir = tempdir();
    let readings = readings_copy(dir.path());
    std::fs::write(Path::new(&readings).join("empty.parquet"), b"").unwrap();
    let text = run_job(&readings, &fixture().registry(), &out_dir(&dir), &[], 4);
    assert!(text.contains("empty.parquet") && text.contains("too small"), "{text}");
    assert!(!text.contains("retrying later"), "{text}");
}

#[test]
fn permanent_local_storage_errors_are_usage_errors_not_outages() {
    let f = fixture();
    let dir = tempdir();
    // A symlink loop inside the input.
    let readings = readings_copy(dir.path());
    let r = Path::new(&readings);
    std::os::unix::fs::symlink(r.join("loop-b"), r.join("loop-a")).unwrap();
    std::os::unix::fs::symlink(r.join("loop-a"), r.join("loop-b")).unwrap();
    let text = run_job(&readings, &f.registry(), &out_dir(&dir), &[], 2);
    assert!(!text.contains("retrying later"), "{text}");
    // A registry or an output path that is a regular file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let file = file.display().to_string();
    let text = run_job(&f.readings(), &file, &out_dir(&dir), &[], 2);
    assert!(!text.contains("retrying later"), "{text}");
    let text = run_job(&f.readings(), &f.registry(), &file, &[], 2);
    assert!(!text.contains("retrying later"), "{text}");
}

#[test]
fn a_missing_input_directory_is_a_usage_error() {
    let dir = tempdir();
    let missing = dir.path().join("no-such-dir").display().to_string();
    let text = run_job(&missing, &fixture().registry(), &out_dir(&dir), &[], 2);
    assert!(text.contains("no-such-dir") && text.contains("--input"), "{text}");
}

#[test]
fn absurd_periods_are_refused_not_a_panic_or_a_wrapped_window() {
    let dir = tempdir();
    for last in ["2251799813685248d", "99999999999d", "9223372036854775807s", "3651d"] {
        let text = run_job(
            &fixture().readings(),
            &fixture().registry(),
            &out_dir(&dir),
            &["--last", last],
            2,
        );
        assert!(text.contains(last), "{text}");
    }
    run_job(&fixture().readings(), &fixture().registry(), &out_dir(&dir), &["--last", "3650d"], 0);
}

#[test]
fn pca_training_fails_only_the_device_with_values_near_the_f64_limit() {
    let dir = tempdir();
    let input = dir.path().join("readings");
    std::fs::create_dir_all(&input).unwrap();
    let mut csv = String::from("device_id,timestamp,a,b\n");
    for device in 1..=3 {
        for i in 0..40 {
            let (a, b) = if device == 2 && i % 7 == 0 {
                (1e308, -1e308)
            } else {
                (f64::from(i % 5) + f64::from(device), f64::from(i % 3) * 2.0)
            };
            csv.push_str(&format!("{device},2026-01-01T00:{:02}:00Z,{a:e},{b:e}\n", i));
        }
    }
    std::fs::write(input.join("readings.csv"), csv).unwrap();
    let registry = dir.path().join("registry");
    let text = expect_code(
        &[
            "train",
            "--input",
            &input.display().to_string(),
            "--registry",
            &registry.display().to_string(),
            "--detector",
            "pca",
        ],
        3,
    );
    assert!(text.contains("too large"), "{text}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(registry.join("index.json")).unwrap()).unwrap();
    let keys: Vec<String> = index["models"]
        .as_array()
        .map(|m| m.iter().filter_map(|e| e["key"].as_str().map(String::from)).collect())
        .or_else(|| index["models"].as_object().map(|m| m.keys().cloned().collect()))
        .unwrap();
    assert_eq!(keys, ["1", "3"], "{index}");
}

#[test]
fn shards_of_one_run_must_agree_on_the_shard_count() {
    let dir = tempdir();
    let out = out_dir(&dir);
    let f = fixture();
    let shard = |i: &str, n: &str, code| {
        run_job(
            &f.readings(),
            &f.registry(),
            &out,
            &["--run-id", "r", "--shard-index", i, "--shard-count", n],
            code,
        )
    };
    shard("0", "2", 0);
    let text = shard("1", "3", 2);
    assert!(text.contains("planned for 2 shards") && text.contains("--shard-count 2"), "{text}");
    shard("1", "2", 0);
    let success = manifest(&dir.path().join("out/r"));
    assert_eq!(success["shard_count"], 2);
    // Run-level settings: no shard index or thread count of whichever shard finished last.
    assert!(success["settings"].get("threads").is_none(), "{success}");
    assert!(success["settings"].get("shard").is_none(), "{success}");
    assert_eq!(success["settings"]["shard_count"], 2, "{success}");
}

#[test]
fn a_damaged_success_record_is_an_error_not_a_complete_run() {
    let dir = tempdir();
    let out = out_dir(&dir);
    let f = fixture();
    run_job(&f.readings(), &f.registry(), &out, &["--run-id", "r"], 0);
    let success = dir.path().join("out/r/_SUCCESS");
    std::fs::write(&success, b"garbage").unwrap();
    let text = run_job(&f.readings(), &f.registry(), &out, &["--run-id", "r"], 4);
    assert!(text.contains("_SUCCESS"), "{text}");
    // A well-formed manifest whose totals were edited is caught too.
    run_job(
        &f.readings(),
        &f.registry(),
        &dir.path().join("out2").display().to_string(),
        &["--run-id", "r"],
        0,
    );
    let success2 = dir.path().join("out2/r/_SUCCESS");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&success2).unwrap()).unwrap();
    m["totals"]["rows"] = serde_json::json!(1);
    std::fs::write(&success2, serde_json::to_vec(&m).unwrap()).unwrap();
    let text = run_job(
        &f.readings(),
        &f.registry(),
        &dir.path().join("out2").display().to_string(),
        &["--run-id", "r"],
        4,
    );
    assert!(text.contains("totals"), "{text}");
}

#[test]
fn staging_files_of_a_killed_attempt_are_gone_once_the_run_completes() {
    let dir = tempdir();
    let out = out_dir(&dir);
    let f = fixture();
    let mut args = vec!["--run-id", "r"];
    args.extend(SMALL_PARTS);
    run_job(&f.readings(), &f.registry(), &out, &args, 0);
    let run = dir.path().join("out/r");
    // What a kill during the upload of part 1 leaves: the staging file, no part, no receipt,
    // no manifest and no _SUCCESS yet.
    std::fs::rename(run.join("part-00001.parquet"), run.join("part-00001.parquet#1")).unwrap();
    for gone in ["_receipts/part-00001.json", "_SUCCESS", "_manifests/shard-00000-of-00001.json"] {
        std::fs::remove_file(run.join(gone)).unwrap();
    }
    run_job(&f.readings(), &f.registry(), &out, &args, 0);
    let stray: Vec<String> =
        files(&run).into_iter().map(|(p, _)| p).filter(|p| p.contains('#')).collect();
    assert!(stray.is_empty(), "{stray:?}");
    assert!(run.join("part-00001.parquet").exists());
}

/// Writes `text` as `dir/NAME`, creating `dir`.
fn write_file(dir: &Path, name: &str, text: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
    dir.display().to_string()
}

/// Wide CSV rows `device,timestamp,a` for `devices`, `rows` each, one minute apart.
fn wide_csv(devices: &[i64], rows: usize) -> String {
    let mut csv = String::from("device_id,timestamp,a\n");
    for d in devices {
        for i in 0..rows {
            csv.push_str(&format!(
                "{d},2026-01-01T{:02}:{:02}:00Z,{}\n",
                i / 60,
                i % 60,
                (i % 7) as f64 + *d as f64
            ));
        }
    }
    csv
}

#[test]
fn device_ids_beyond_i64_are_an_error_naming_the_value_not_dropped_rows() {
    use std::sync::Arc;

    use arrow::array::{Float64Array, RecordBatch, TimestampMicrosecondArray, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let dir = tempdir();
    let input = dir.path().join("readings");
    std::fs::create_dir_all(&input).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::UInt64, false),
        Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, None), false),
        Field::new("a", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(UInt64Array::from(vec![1, u64::MAX])),
            Arc::new(TimestampMicrosecondArray::from(vec![0, 60_000_000])),
            Arc::new(Float64Array::from(vec![1.0, 2.0])),
        ],
    )
    .unwrap();
    write_parquet(&input.join("ids.parquet"), &batch);
    let text = run_job(&input.display().to_string(), &fixture().registry(), &out_dir(&dir), &[], 4);
    assert!(text.contains("18446744073709551615") && text.contains("device_id"), "{text}");
}

#[test]
fn a_row_of_another_device_under_a_hive_partition_is_an_error() {
    let dir = tempdir();
    let data = dir.path().join("data").display().to_string();
    // A file of devices 0..5 (with its device column) filed under device_id=3/.
    expect_code(
        &[
            "generate",
            "--devices",
            "5",
            "--rows-per-device",
            "50",
            "--partition",
            "none",
            "--out",
            &data,
        ],
        0,
    );
    let readings = dir.path().join("data/readings");
    let hive = dir.path().join("hive/device_id=3");
    std::fs::create_dir_all(&hive).unwrap();
    std::fs::copy(readings.join("part-00000.parquet"), hive.join("part-00000.parquet")).unwrap();
    let input = dir.path().join("hive").display().to_string();
    let text = run_job(&input, &fixture().registry(), &out_dir(&dir), &[], 4);
    assert!(text.contains("device_id=3") && text.contains("holds 0"), "{text}");
}

#[test]
fn duplicated_and_extra_columns_are_errors_whichever_file_has_them() {
    let dir = tempdir();
    let twice = write_file(
        &dir.path().join("twice"),
        "r.csv",
        "device_id,timestamp,a,a\n1,2026-01-01T00:00:00Z,1,2\n",
    );
    let text = run_job(&twice, &fixture().registry(), &out_dir(&dir), &[], 4);
    assert!(text.contains("`a` appears more than once") && text.contains("r.csv"), "{text}");
    // The same extra column is an error in the first file and in a later one.
    for (first, second) in [("a,b", "a"), ("a", "a,b")] {
        let input = dir.path().join(format!("extra-{first}-{second}"));
        write_file(&input, "1.csv", &format!("device_id,timestamp,{first}\n"));
        write_file(&input, "2.csv", &format!("device_id,timestamp,{second}\n"));
        let text =
            run_job(&input.display().to_string(), &fixture().registry(), &out_dir(&dir), &[], 4);
        assert!(text.contains("`b`"), "{first} / {second}: {text}");
    }
}

#[test]
fn duplicate_readings_are_scored_and_counted() {
    let dir = tempdir();
    let mut csv = wide_csv(&[1, 2], 100);
    // Three rows repeat an existing (device, timestamp).
    let repeated: Vec<String> = csv.lines().skip(1).take(3).map(String::from).collect();
    for line in repeated {
        csv.push_str(&line);
        csv.push('\n');
    }
    let input = write_file(&dir.path().join("readings"), "r.csv", &csv);
    let registry = dir.path().join("models").display().to_string();
    expect_code(&["train", "--input", &input, "--registry", &registry, "--n-estimators", "10"], 0);
    let text = run_job(&input, &registry, &out_dir(&dir), &["--run-id", "r"], 0);
    assert!(text.contains("3 rows repeat"), "{text}");
    let m = manifest(&dir.path().join("out/r"));
    assert_eq!(m["totals"]["duplicate_rows"], 3, "{m}");
    assert_eq!(m["totals"]["rows"], 203, "every input row is scored once");
}

#[test]
fn a_sensor_selection_without_readings_is_reported() {
    let dir = tempdir();
    let data = dir.path().join("data").display().to_string();
    expect_code(
        &[
            "generate",
            "--devices",
            "2",
            "--rows-per-device",
            "40",
            "--sensors",
            "2",
            "--layout",
            "long",
            "--out",
            &data,
        ],
        0,
    );
    let readings = format!("{data}/readings");
    let registry = dir.path().join("models").display().to_string();
    expect_code(
        &["train", "--input", &readings, "--registry", &registry, "--n-estimators", "5"],
        0,
    );
    let text = run_job(&readings, &registry, &out_dir(&dir), &["--sensors", "nope"], 0);
    assert!(text.contains("no readings of the selected sensor(s) nope"), "{text}");
}

#[test]
fn an_output_inside_the_input_is_refused() {
    let dir = tempdir();
    let readings = readings_copy(dir.path());
    let inside = format!("{readings}/scored");
    let text = run_job(&readings, &fixture().registry(), &inside, &[], 2);
    assert!(text.contains("inside the input"), "{text}");
    assert!(!Path::new(&inside).exists(), "nothing was written");
}

#[test]
fn an_endless_device_list_is_refused() {
    let dir = tempdir();
    let text = run_job(
        &fixture().readings(),
        &fixture().registry(),
        &out_dir(&dir),
        &["--devices", "@/dev/zero"],
        2,
    );
    assert!(text.contains("larger than 64 MiB"), "{text}");
}

#[test]
fn planted_secrets_appear_in_no_output_manifest_or_message() {
    const PROXY_PASSWORD: &str = "PlantedProxyPassw0rd";
    const SAS_SIGNATURE: &str = "PlantedSasSignature";
    const ACCOUNT_KEY: &str = "PlantedAccountKey==";
    let (readings, registry) = (fixture().readings(), fixture().registry());
    let dir = tempdir();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[paths]\ninput = \"https://acct.blob.core.windows.net/c/readings?sv=2021&sig={SAS_SIGNATURE}\"\n\n\
             [storage.options]\nazure_storage_account_key = \"{ACCOUNT_KEY}\"\n"
        ),
    )
    .unwrap();
    let proxy = format!("proxy_url=http://user:{PROXY_PASSWORD}@127.0.0.1:9");
    let sas = format!("azure_storage_sas_key=sv=2021&sig={SAS_SIGNATURE}");
    let config_s = config.display().to_string();
    let common =
        ["--config", config_s.as_str(), "--storage-option", &proxy, "--storage-option", &sas];
    let mut printed = Vec::new();
    let mut args = common.to_vec();
    args.push("config");
    printed.push(expect_code(&args, 0));
    // A local run with the same options: its records must not carry them either.
    let out = out_dir(&dir);
    let mut args = common.to_vec();
    args.extend([
        "run",
        "--input",
        &readings,
        "--registry",
        &registry,
        "--output",
        &out,
        "--run-id",
        "r",
        "-v",
    ]);
    printed.push(expect_code(&args, 0));
    // And an error that names the URL with its token.
    let mut args = common.to_vec();
    args.extend(["run", "--registry", &registry, "--output", &out]);
    let failed = batchscore(&args);
    printed.push(
        String::from_utf8_lossy(&failed.stdout).into_owned()
            + &String::from_utf8_lossy(&failed.stderr),
    );
    assert_ne!(failed.status.code(), Some(0));
    let mut outputs: Vec<(std::path::PathBuf, String)> =
        printed.into_iter().enumerate().map(|(i, t)| (format!("<output {i}>").into(), t)).collect();
    outputs.extend(
        files(&dir.path().join("out"))
            .into_iter()
            .map(|(path, bytes)| (path.into(), String::from_utf8_lossy(&bytes).into_owned())),
    );
    assert!(outputs.iter().any(|(p, _)| p.ends_with("_SUCCESS")), "the run wrote its records");
    for (path, text) in &outputs {
        for secret in [PROXY_PASSWORD, SAS_SIGNATURE, ACCOUNT_KEY] {
            assert!(!text.contains(secret), "{secret} in {}:\n{text}", path.display());
        }
    }
}

/// Regression: two trainings into one registry rewrote `index.json` unconditionally, and the
/// one that finished last dropped the other's models.
#[test]
fn concurrent_trainings_into_one_registry_keep_every_model() {
    let f = fixture();
    let dir = tempdir();
    let registry = dir.path().join("models").display().to_string();
    let train = |devices: &str| {
        crate::common::command()
            .args([
                "-q",
                "train",
                "--input",
                &f.readings(),
                "--registry",
                &registry,
                "--devices",
                devices,
            ])
            .args(["--n-estimators", "10"])
            .spawn()
            .unwrap()
    };
    let children: Vec<_> = ["0..10", "10..20", "20..30"].into_iter().map(train).collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("models/index.json")).unwrap())
            .unwrap();
    assert_eq!(index["models"].as_array().unwrap().len(), DEVICES as usize, "{index}");
    expect_code(&["models", "--registry", &registry, "verify"], 0);
}

/// Regression: `models import -q` said nothing of why files failed.
#[test]
fn quiet_imports_still_say_why_files_failed() {
    let dir = tempdir();
    let exported =
        write_file(&dir.path().join("exported"), "model_7.json", "{\"format\": \"nope\"}");
    let registry = dir.path().join("models").display().to_string();
    let text = expect_code(
        &[
            "-q",
            "models",
            "import",
            &exported,
            "--registry",
            &registry,
            "--key-pattern",
            "model_{device}",
        ],
        3,
    );
    assert!(text.contains("model_7.json") && text.contains("nothing was written"), "{text}");
    assert!(!Path::new(&registry).join("index.json").exists());
}

/// Regression: a bad device value in CSV named neither line nor value, and a bad reading named
/// its column by a 0-based index.
#[test]
fn csv_errors_name_the_line_the_column_and_the_value() {
    let dir = tempdir();
    let mut csv = wide_csv(&[1], 5);
    csv = csv.replacen("\n1,", "\nx7,", 2).replacen("\nx7,", "\n1,", 1);
    let input = write_file(&dir.path().join("device"), "r.csv", &csv);
    let text = run_job(&input, &fixture().registry(), &out_dir(&dir), &[], 4);
    assert!(
        text.contains("r.csv, line 3: value 'x7' of column `device_id` is not a Int64"),
        "{text}"
    );
    // The third reading (line 4) is 3.
    let csv = wide_csv(&[1], 5).replace(",3\n", ",three\n");
    let input = write_file(&dir.path().join("value"), "r.csv", &csv);
    let text = run_job(&input, &fixture().registry(), &out_dir(&dir), &[], 4);
    assert!(text.contains("r.csv, line 4: value 'three' of column `a` is not a Float64"), "{text}");
}

/// Regression: a Parquet file whose embedded Arrow schema (the `ARROW:schema` footer entry) is
/// damaged made arrow-ipc panic (exit 101). The engine reads the Parquet schema instead; the
/// data here is intact, so it is scored. (Decoder panics on damaged pages are caught per file:
/// io's `damaged_parquet_is_an_error_never_a_panic` property test.)
#[test]
fn a_damaged_embedded_arrow_schema_does_not_crash_the_job() {
    let dir = tempdir();
    let data = dir.path().join("data").display().to_string();
    expect_code(
        &["-q", "generate", "--devices", "2", "--rows-per-device", "300", "--out", &data],
        0,
    );
    let file = dir.path().join("data/readings/part-00000.parquet");
    let mut bytes = std::fs::read(&file).unwrap();
    assert_eq!(
        bytes.len(),
        39957,
        "the generated file changed: find new damage that trips arrow-ipc"
    );
    for (at, value) in [(39187, 80), (21900, 101), (18608, 121)] {
        bytes[at] = value;
    }
    std::fs::write(&file, bytes).unwrap();
    let readings = format!("{data}/readings");
    let registry = dir.path().join("models").display().to_string();
    expect_code(
        &["-q", "train", "--input", &readings, "--registry", &registry, "--n-estimators", "3"],
        0,
    );
    let text = run_job(&readings, &registry, &out_dir(&dir), &[], 0);
    assert!(text.contains("600 scored"), "{text}");
}
