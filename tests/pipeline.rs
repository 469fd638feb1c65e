//! generate -> train -> run -> read back: columns, row counts, detection quality, layouts.

use std::path::Path;

use arrow::datatypes::DataType;

use crate::common::*;

#[test]
fn scores_every_row_with_the_documented_columns_and_finds_the_anomalies() {
    let f = fixture();
    let out = tempdir();
    let output = out.path().display().to_string();
    let stdout = run_job(
        &f.readings(),
        &f.registry(),
        &output,
        &["--devices", "0..30", "--min-part-rows", "1000", "--max-part-rows", "3000"],
        0,
    );
    assert!(stdout.contains("30 scored, 0 failed"), "{stdout}");
    let run = run_dir(out.path());
    let m = manifest(&run);
    assert_eq!(m["totals"]["rows"], (DEVICES as usize * ROWS) as u64);
    assert_eq!(m["totals"]["devices_scored"], DEVICES);
    assert_eq!(m["devices"].as_array().unwrap().len(), DEVICES as usize);
    assert!(m["parts"].as_array().unwrap().len() >= 2, "several parts: {m}");

    let first = &m["parts"][0]["path"];
    let batch = &read_parquet(&run.join(first.as_str().unwrap()))[0];
    let schema = batch.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "device_id",
            "timestamp",
            "temperature",
            "pressure",
            "vibration",
            "humidity",
            "rpm",
            "voltage",
            "current",
            "flow_rate",
            "score",
            "decision",
            "is_anomaly",
            "model_version",
            "run_id"
        ]
    );
    assert!(
        matches!(batch.schema().field(1).data_type(), DataType::Timestamp(_, Some(tz)) if tz.as_ref() == "UTC")
    );

    // Injected anomalies rank above normal rows: ROC-AUC of -score against the labels.
    let auc = roc_auc(&run, Path::new(&f.data()));
    assert!(auc >= 0.9, "ROC-AUC {auc:.4}");
    eprintln!("ROC-AUC on generated data: {auc:.4}");
}

#[test]
fn thread_count_does_not_change_a_single_byte() {
    let f = fixture();
    let (a, b) = (tempdir(), tempdir());
    for (dir, threads) in [(&a, "1"), (&b, "2")] {
        let output = dir.path().display().to_string();
        run_job(
            &f.readings(),
            &f.registry(),
            &output,
            &["--threads", threads, "--min-part-rows", "1000", "--max-part-rows", "3000"],
            0,
        );
    }
    let (ra, rb) = (run_dir(a.path()), run_dir(b.path()));
    assert_eq!(ra.file_name(), rb.file_name(), "same run id");
    let data = |run: &Path| -> Vec<(String, Vec<u8>)> {
        files(run)
            .into_iter()
            .filter(|(p, _)| p.ends_with(".parquet") || p.starts_with("_receipts"))
            .collect()
    };
    let (fa, fb) = (data(&ra), data(&rb));
    assert!(fa.len() >= 4);
    assert_eq!(fa, fb);
}

#[test]
fn hive_partitions_and_packed_files_give_the_same_scores() {
    let f = fixture();
    let dir = tempdir();
    let hive = dir.path().join("hive").display().to_string();
    let registry = dir.path().join("registry").display().to_string();
    let output = dir.path().join("out");
    expect_code(
        &[
            "generate",
            "--devices",
            &DEVICES.to_string(),
            "--rows-per-device",
            &ROWS.to_string(),
            "--seed",
            "7",
            "--partition",
            "device",
            "--out",
            &hive,
        ],
        0,
    );
    let readings = format!("{hive}/readings");
    expect_code(&["train", "--input", &readings, "--registry", &registry, "--seed", "3"], 0);
    // Partition pruning: only devices 5..12 are read.
    let out = output.display().to_string();
    run_job(&readings, &registry, &out, &["--devices", "5..12"], 0);
    let hive_rows = scored_rows(&run_dir(&output));
    assert_eq!(hive_rows.len(), 7 * ROWS);

    let packed_out = dir.path().join("packed");
    let out = packed_out.display().to_string();
    run_job(&f.readings(), &f.registry(), &out, &["--devices", "5..12"], 0);
    assert_eq!(scored_rows(&run_dir(&packed_out)), hive_rows);
}

#[test]
fn time_window_selects_rows() {
    let f = fixture();
    let dir = tempdir();
    let output = dir.path().display().to_string();
    // Readings start 2026-01-01 00:00 UTC, one per minute: 01:00-03:00 is 120 rows per device.
    run_job(
        &f.readings(),
        &f.registry(),
        &output,
        &["--devices", "0,3,7", "--from", "2026-01-01T01:00:00Z", "--to", "2026-01-01 03:00:00"],
        0,
    );
    let rows = scored_rows(&run_dir(dir.path()));
    assert_eq!(rows.len(), 3 * 120);
    let (lo, hi) = (1_767_229_200_000_000i64, 1_767_236_400_000_000i64);
    assert!(rows.keys().all(|(d, t)| [0, 3, 7].contains(d) && *t >= lo && *t < hi));
}

#[test]
fn models_list_show_and_verify() {
    let f = fixture();
    let listing = expect_code(&["models", "--registry", &f.registry(), "list"], 0);
    assert_eq!(
        listing.lines().filter(|l| l.contains("isolation_forest")).count(),
        DEVICES as usize
    );
    let show = expect_code(&["models", "--registry", &f.registry(), "show", "4"], 0);
    let view: serde_json::Value =
        serde_json::from_str(show.split("\n{").last().map(|s| format!("{{{s}")).unwrap().as_str())
            .unwrap_or_else(|_| serde_json::from_str(&show).unwrap());
    assert_eq!(view["meta"]["key"], "4");
    assert_eq!(view["detector"]["trees"], 100);
    assert_eq!(view["meta"]["features"].as_array().unwrap().len(), 8);
    let verify = expect_code(&["models", "--registry", &f.registry(), "verify"], 0);
    assert!(verify.contains(&format!("{DEVICES} ok, 0 bad")), "{verify}");
}

#[test]
fn training_is_deterministic_whatever_the_thread_count() {
    let f = fixture();
    let dir = tempdir();
    let versions = |threads: &str| {
        let registry = dir.path().join(format!("r{threads}")).display().to_string();
        expect_code(
            &[
                "train",
                "--input",
                &f.readings(),
                "--registry",
                &registry,
                "--seed",
                "3",
                "--threads",
                threads,
                "--devices",
                "0..6",
            ],
            0,
        );
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{registry}/index.json")).unwrap())
                .unwrap();
        index["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["version"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let one = versions("1");
    assert_eq!(one.len(), 6);
    assert_eq!(one, versions("2"));
    // Regression: training the same data into the same registry again (the same versions, a
    // later creation time) indexed checksums of bytes it did not write, and `models verify`
    // then called every model corrupt.
    let registry = dir.path().join("r1").display().to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(one, versions("1"));
    let verify = expect_code(&["models", "--registry", &registry, "verify"], 0);
    assert!(verify.contains("6 ok, 0 bad"), "{verify}");
    // And equal to the fixture's models, trained on all devices at once.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}/index.json", f.registry())).unwrap())
            .unwrap();
    let fixture_versions: Vec<String> = index["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["version"].as_str().unwrap().to_string())
        .collect();
    for v in &one {
        assert!(fixture_versions.contains(v));
    }
}

#[test]
fn dry_run_shows_the_pruned_plan_and_writes_nothing() {
    let f = fixture();
    let dir = tempdir();
    let output = dir.path().join("out");
    let out = output.display().to_string();
    // Devices 3 and 7, first hour: of the fixture's 12 row groups (1,500 rows each, sorted by
    // device), statistics keep only those whose device and time ranges can hold such rows.
    let stdout = run_job(
        &f.readings(),
        &f.registry(),
        &out,
        &["--dry-run", "--summary", "json", "--devices", "3,7", "--to", "2026-01-01T01:00:00Z"],
        0,
    );
    assert!(!output.exists(), "a dry run writes nothing");
    let plan: serde_json::Value =
        serde_json::from_str(&stdout[stdout.find('{').unwrap()..]).unwrap();
    let (total, read) =
        (plan["row_groups_total"].as_u64().unwrap(), plan["row_groups_read"].as_u64().unwrap());
    assert_eq!(total, (DEVICES as u64 * ROWS as u64).div_ceil(1500));
    assert!((2..=3).contains(&read), "{plan}");
    assert_eq!(plan["models_in_registry"], DEVICES);
    // The real run then uses the same run id.
    run_job(
        &f.readings(),
        &f.registry(),
        &out,
        &["--devices", "3,7", "--to", "2026-01-01T01:00:00Z"],
        0,
    );
    assert_eq!(run_dir(&output).file_name().unwrap().to_str(), plan["run_id"].as_str());
}

#[test]
fn pca_models_train_score_and_find_the_anomalies() {
    let f = fixture();
    let dir = tempdir();
    let registry = dir.path().join("pca").display().to_string();
    let text = expect_code(
        &["train", "--input", &f.readings(), "--registry", &registry, "--detector", "pca"],
        0,
    );
    assert!(text.contains(&format!("trained {DEVICES} models")), "{text}");
    let shown = expect_code(&["models", "show", "3", "--registry", &registry], 0);
    assert!(shown.contains("\"kind\": \"pca\"") && shown.contains("components"), "{shown}");
    let out = dir.path().join("out");
    run_job(&f.readings(), &registry, out.to_str().unwrap(), &[], 0);
    let auc = roc_auc(&run_dir(&out), Path::new(&f.data()));
    assert!(auc >= 0.85, "ROC-AUC {auc:.4}");
    eprintln!("PCA ROC-AUC on generated data: {auc:.4}");
    // A count of components, and parameters that cannot work.
    let two = dir.path().join("two").display().to_string();
    let args = ["train", "--input", &f.readings(), "--registry", &two, "--detector", "pca"];
    expect_code(&[&args[..], &["--components", "2", "--contamination", "0.05"]].concat(), 0);
    expect_code(&[&args[..], &["--components", "1.5"]].concat(), 2);

    // Standardised features: a scaler before each PCA, stored as one pipeline model.
    let scaled = dir.path().join("scaled").display().to_string();
    let args = ["train", "--input", &f.readings(), "--registry", &scaled, "--detector", "pca"];
    expect_code(&[&args[..], &["--standardize"]].concat(), 0);
    let shown = expect_code(&["models", "show", "3", "--registry", &scaled], 0);
    assert!(shown.contains("\"kind\": \"standard_scaler+pca\""), "{shown}");
    assert!(shown.contains("\"standardize\": true"), "{shown}");
    let out = dir.path().join("out-scaled");
    run_job(&f.readings(), &scaled, out.to_str().unwrap(), &[], 0);
    let auc = roc_auc(&run_dir(&out), Path::new(&f.data()));
    assert!(auc >= 0.65, "ROC-AUC {auc:.4}");
    eprintln!("standardised PCA ROC-AUC on generated data: {auc:.4}");
    // An IsolationForest is scale-invariant: standardising is refused, not ignored.
    let text =
        expect_code(&["train", "--input", &f.readings(), "--registry", &two, "--standardize"], 2);
    assert!(text.contains("standardize"), "{text}");
}
