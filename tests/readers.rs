//! A run's folder read as users read it (issue 27, 1): pyarrow.dataset on the folder, DuckDB and
//! polars globs of it, Spark's listing rule. Each counts exactly the scored rows `_SUCCESS`
//! records, after the run, its drift table and its report are written; the drift table,
//! failures and report are found under `OUTPUT/_runs/RUN_ID/` (tests/readers/count_rows.py).

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// Regression: `pyarrow.dataset(OUTPUT/RUN_ID)` counted the drift table's rows as scored rows,
/// DuckDB's glob too, and after `report` pyarrow failed on `report.html`.
#[test]
fn every_reader_of_a_run_folder_counts_exactly_its_scored_rows() {
    let Some(python) = crate::aggregate::python() else { return };
    let f = fixture();
    let dir = tempdir();
    let registry = dir.path().join("registry");
    copy_dir(Path::new(&f.registry()), &registry);
    corrupt_model(&registry, "4");
    let output = dir.path().join("out").display().to_string();
    let args = ["--run-id", "r", "--max-failed", "1"];
    run_job(&f.readings(), &registry.display().to_string(), &output, &args, 0);
    for format in ["html", "json"] {
        expect_code(&["report", "--output", &output, "--run-id", "r", "--format", format], 0);
    }
    let m = manifest(&Path::new(&output).join("r"));
    let rows = m["totals"]["rows"].as_u64().unwrap();
    assert!(rows > 0 && m["totals"]["devices_failed"] == 1, "{m}");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/readers/count_rows.py");
    let out = Command::new(&python).arg(script).args([&output, "r"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let found: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    for reader in [
        "pyarrow_dataset",
        "duckdb_glob",
        "duckdb_recursive",
        "polars_glob",
        "polars_recursive",
        "spark_style",
    ] {
        assert_eq!(found[reader], rows, "{reader}: {found}");
    }
    let schema = found["pyarrow_dataset_schema"].to_string();
    assert!(schema.contains("score") && !schema.contains("psi_decile"), "{schema}");
    // The folder holds parts and `_` bookkeeping, no other Parquet file.
    for file in found["run_files"].as_array().unwrap() {
        let file = file.as_str().unwrap();
        let part = file.starts_with("part-") && file.ends_with(".parquet");
        assert!(part || file.starts_with('_'), "{file} in the run's folder");
        assert!(part || !file.ends_with(".parquet"), "{file}: Parquet that is not a part");
    }
    let tables: Vec<&str> =
        found["tables"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(
        tables,
        ["drift.parquet", "failures/shard-00000-of-00001.parquet", "report.html", "report.json"]
    );
    assert!(found["drift_rows"].as_u64().unwrap() > 0, "{found}");
    assert_eq!(m["drift"]["table"], "_runs/r/drift.parquet");
    assert_eq!(m["failures_tables"][0], "_runs/r/failures/shard-00000-of-00001.parquet");
}
