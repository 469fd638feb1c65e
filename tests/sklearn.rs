//! Parity with real scikit-learn: models fitted and scored by scikit-learn (tests/sklearn/
//! parity.py), exported by scripts/export_sklearn.py, imported by `batchscore models import`,
//! and scored by batchscore must give the same `score_samples`, `decision_function` and
//! `predict`, row for row.
//!
//! Needs a Python with scikit-learn (`scripts/python-env.sh`, which `scripts/test.sh` runs and
//! exports as `BATCHSCORE_PYTHON`); without it the test prints "skipped".

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use batchscore_detectors::Detector;
use batchscore_registry::{ModelKey, Registry};

use crate::common::*;

/// One test row: features, and scikit-learn's score, decision and outlier flag.
type Case = (Vec<f64>, f64, f64, bool);
/// Test rows by model name.
type Cases = BTreeMap<String, Vec<Case>>;

/// The Python with scikit-learn, or `None` (and a note) without one.
pub(crate) fn python() -> Option<String> {
    let python = std::env::var("BATCHSCORE_PYTHON").ok();
    if python.is_none() {
        assert!(
            std::env::var("BATCHSCORE_TEST_SKLEARN").as_deref() != Ok("1"),
            "BATCHSCORE_TEST_SKLEARN=1 but BATCHSCORE_PYTHON is unset"
        );
        eprintln!("skipped: no BATCHSCORE_PYTHON with scikit-learn (run scripts/test.sh)");
    }
    python
}

pub(crate) fn run_python(python: &str, args: &[&str]) -> std::process::Output {
    Command::new(python).args(args).output().expect("python runs")
}

/// Relative difference, 0 for identical values (infinities included) and for NaN against NaN.
fn rel_diff(a: f64, b: f64) -> f64 {
    if a == b || (a.is_nan() && b.is_nan()) {
        return 0.0;
    }
    (a - b).abs() / a.abs().max(b.abs())
}

#[test]
fn imported_models_score_like_scikit_learn() {
    let Some(python) = python() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempdir();
    let out = dir.path().display().to_string();
    let fit = run_python(&python, &[root.join("tests/sklearn/parity.py").to_str().unwrap(), &out]);
    assert!(fit.status.success(), "{}", String::from_utf8_lossy(&fit.stderr));
    let exporter = root.join("scripts/export_sklearn.py").display().to_string();
    let exported = dir.path().join("exported").display().to_string();
    let models = dir.path().join("models").display().to_string();
    let export = run_python(
        &python,
        &[&exporter, &models, "--out", &exported, "--key-pattern", "model_{key}"],
    );
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));

    // A model the format cannot hold is an error naming its class.
    let unsupported = dir.path().join("unsupported").display().to_string();
    let refused = run_python(&python, &[&exporter, &unsupported, "--out", &exported]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("LocalOutlierFactor is not supported"), "{stderr}");

    let registry = dir.path().join("registry").display().to_string();
    let imported = expect_code(
        &["models", "import", &exported, "--registry", &registry, "--features", "x0,x1,x2"],
        0,
    );
    assert!(imported.contains("imported 19 models"), "{imported}");
    expect_code(&["models", "verify", "--registry", &registry], 0);

    // The same mapping applied by the importer instead: files keep their names, and a file
    // that does not match the pattern is skipped and reported.
    let raw = dir.path().join("raw").display().to_string();
    let export = run_python(&python, &[&exporter, &models, "--out", &raw]);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    std::fs::copy(
        dir.path().join("raw/model_svm_linear.json"),
        dir.path().join("raw/other_svm_linear.json"),
    )
    .unwrap();
    let second = dir.path().join("registry2").display().to_string();
    let args = ["models", "import", &raw, "--registry", &second, "--features", "x0,x1,x2"];
    let text = expect_code(&[&args[..], &["--key-pattern", "model_{key}"]].concat(), 0);
    assert!(
        text.contains("imported 19 models") && text.contains("other_svm_linear.json"),
        "{text}"
    );
    let listed = expect_code(&["models", "list", "--registry", &second], 0);
    assert!(listed.contains("pipe_reference"), "{listed}");
    // A pattern mixing {key} with {sensor} is a usage error.
    let bad = expect_code(&[&args[..], &["--key-pattern", "{key}_{sensor}"]].concat(), 2);
    assert!(bad.contains("key pattern"), "{bad}");

    let storage = batchscore_io::Storage::new().unwrap();
    let registry = Registry::open_existing(storage.open(&registry).unwrap()).unwrap();
    let cases = read_parquet(&dir.path().join("cases.parquet"));
    let mut by_model = Cases::new();
    for batch in &cases {
        collect_cases(batch, &mut by_model);
    }
    let mut worst: BTreeMap<&'static str, (f64, f64)> = BTreeMap::new();
    for (name, rows) in &by_model {
        let model = registry.load(&ModelKey::try_from(name.clone()).unwrap()).unwrap();
        let columns: Vec<Vec<f64>> =
            (0..3).map(|f| rows.iter().map(|r| r.0[f]).collect()).collect();
        let views: Vec<&[f64]> = columns.iter().map(Vec::as_slice).collect();
        let scored = model.detector.score(&views).unwrap();
        let entry = worst.entry(model.detector.kind()).or_default();
        for (i, (x, score, decision, anomaly)) in rows.iter().enumerate() {
            let (ds, dd) =
                (rel_diff(scored.score[i], *score), rel_diff(scored.decision[i], *decision));
            entry.0 = entry.0.max(ds);
            entry.1 = entry.1.max(dd);
            assert!(
                ds <= 1e-9 && dd <= 1e-9,
                "{name} row {i} {x:?}: score {} vs {score}, decision {} vs {decision}",
                scored.score[i],
                scored.decision[i]
            );
            assert_eq!(scored.is_anomaly[i], *anomaly, "{name} row {i} {x:?}: predict differs");
        }
    }
    assert_eq!(by_model.len(), 19);
    for (kind, (score, decision)) in &worst {
        eprintln!("{kind}: max relative difference score {score:e}, decision {decision:e}");
    }
}

fn collect_cases(batch: &RecordBatch, out: &mut Cases) {
    let col = |n: &str| batch.column_by_name(n).unwrap().as_primitive::<Float64Type>().clone();
    let model =
        arrow::compute::cast(batch.column_by_name("model").unwrap(), &DataType::Utf8).unwrap();
    let model = model.as_string::<i32>();
    let (x0, x1, x2) = (col("x0"), col("x1"), col("x2"));
    let (score, decision) = (col("score"), col("decision"));
    let predict = batch.column_by_name("predict").unwrap().as_primitive::<Int64Type>().clone();
    for i in 0..batch.num_rows() {
        out.entry(model.value(i).to_string()).or_default().push((
            vec![x0.value(i), x1.value(i), x2.value(i)],
            score.value(i),
            decision.value(i),
            predict.value(i) == -1,
        ));
    }
}
