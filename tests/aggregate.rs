//! `batchscore aggregate` against an independent implementation: DuckDB's `time_bucket` over
//! the same files (tests/aggregate/duckdb_check.py), on readings with gaps, repeats, late rows
//! in a later file, nulls and readings on window bounds, split over several units.

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// The test suite's Python (scripts/python-env.sh), or None where the suite does not ask for
/// the Python tests.
pub(crate) fn python() -> Option<String> {
    let python = std::env::var("BATCHSCORE_PYTHON").ok();
    if python.is_none() {
        assert!(
            std::env::var("BATCHSCORE_TEST_SKLEARN").is_err(),
            "BATCHSCORE_PYTHON is not set but the suite requires the Python tests"
        );
        eprintln!("skipped: BATCHSCORE_PYTHON is not set (scripts/test.sh sets it)");
    }
    python
}

fn check(python: &str, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aggregate/duckdb_check.py");
    let out = Command::new(python).arg(script).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "duckdb_check.py {args:?}:\n{text}");
    text
}

/// Aggregates `input` with `flags` into a new run and compares it with DuckDB's result.
fn aggregate_and_compare(
    python: &str,
    input: &Path,
    out: &Path,
    flags: &[&str],
    check_flags: &[&str],
) {
    let (input, output) = (input.display().to_string(), out.display().to_string());
    let mut args = vec!["aggregate", "--input", &input, "--output", &output];
    args.extend_from_slice(&["--min-part-rows", "200", "--max-part-rows", "700", "--threads", "2"]);
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--summary", "json"]);
    let stdout = expect_code(&args, 0);
    let manifest: serde_json::Value =
        serde_json::from_str(&stdout[..stdout.rfind('}').unwrap() + 1]).unwrap();
    assert!(manifest["totals"]["units"].as_u64().unwrap() >= 2, "several units: {manifest}");
    let run = out.join(manifest["run_id"].as_str().unwrap());
    let run = run.display().to_string();
    let mut compare = vec!["compare", "--input", &input, "--run", &run];
    compare.extend_from_slice(check_flags);
    check(python, &compare);
}

#[test]
fn windows_equal_duckdbs_for_long_wide_and_pivoted_readings() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("long");
    let wide = dir.path().join("wide");
    check(&python, &["make-long", long.to_str().unwrap()]);
    check(&python, &["make-wide", wide.to_str().unwrap()]);
    let out = dir.path().join("aggregated");
    // Every statistic, windows closed on the left, then on the right with an offset.
    aggregate_and_compare(&python, &long, &out, &["--every", "5s"], &["--every", "5"]);
    aggregate_and_compare(
        &python,
        &long,
        &out,
        &["--every", "1m", "--closed", "right", "--offset", "20s", "--stats", "count,mean,last"],
        &["--every", "60", "--closed", "right", "--offset", "20", "--stats", "count,mean,last"],
    );
    // Long to wide, with a selected sensor that never reports (its columns stay, null).
    aggregate_and_compare(
        &python,
        &long,
        &out,
        &["--every", "10s", "--pivot", "--sensors", "1,2,5,9", "--stats", "mean,count,std"],
        &["--every", "10", "--pivot", "--sensors", "1,2,5,9", "--stats", "mean,count,std"],
    );
    aggregate_and_compare(
        &python,
        &wide,
        &out,
        &["--every", "15s"],
        &["--layout", "wide", "--every", "15"],
    );
}

/// The parts of a run directory: names and sizes, and whether their bytes equal another's.
fn part_bytes(run: &Path) -> Vec<(String, Vec<u8>)> {
    let mut parts: Vec<(String, Vec<u8>)> = std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    parts.sort();
    parts
}

/// The reference workload's shape: long readings of five tags, pivoted per device and
/// minute, trained and scored as one multivariate model per device; the dataset is committed
/// exactly once whatever the shards and reruns, and an unfinished one is not read.
#[test]
fn pivoted_aggregates_train_and_score_one_model_per_device_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let path = |p: &str| root.join(p).display().to_string();
    expect_code(
        &[
            "generate",
            "--out",
            &path("gen"),
            "--devices",
            "12",
            "--sensors",
            "5",
            "--layout",
            "long",
            "--rows-per-device",
            "1200",
            "--interval-seconds",
            "5",
        ],
        0,
    );
    let sensors = "humidity,pressure,rpm,temperature,vibration";
    let readings = path("gen/readings");
    let aggregate = |output: &str, extra: &[&str]| {
        let output = path(output);
        let mut args = vec![
            "aggregate",
            "--input",
            &readings,
            "--output",
            &output,
            "--every",
            "1m",
            "--pivot",
            "--sensors",
            sensors,
            "--stats",
            "mean,std",
            "--run-id",
            "minutely",
            "--min-part-rows",
            "2000",
            "--max-part-rows",
            "6000",
        ];
        args.extend_from_slice(extra);
        expect_code(&args, 0)
    };
    let first = aggregate("agg", &[]);
    assert!(first.contains("_SUCCESS written"), "{first}");
    let whole = part_bytes(&root.join("agg/minutely"));
    assert!(whole.len() >= 2, "several parts");
    // A rerun commits nothing new; two shards write the same bytes as one process.
    let again = aggregate("agg", &[]);
    assert!(again.contains("already committed by an earlier attempt"), "{again}");
    assert!(again.contains("0 windows written now"), "{again}");
    for shard in ["0", "1"] {
        aggregate("sharded", &["--shard-index", shard, "--shard-count", "2"]);
    }
    let sharded = part_bytes(&root.join("sharded/minutely"));
    assert!(sharded == whole, "two shards wrote other parts than one process");

    // What else sits in a run directory (a drift table, a report) is not data: readers take
    // the parts `_SUCCESS` names.
    std::fs::write(root.join("agg/minutely/drift.parquet"), b"not parquet").unwrap();
    std::fs::write(root.join("agg/minutely/report.html"), b"<html></html>").unwrap();
    expect_code(&["train", "--input", &path("agg/minutely"), "--registry", &path("reg")], 0);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("reg/index.json")).unwrap()).unwrap();
    let text = index.to_string();
    assert!(text.contains("temperature_mean") && text.contains("vibration_std"), "{text}");
    let scored = run_job(&path("agg/minutely"), &path("reg"), &path("scored"), &[], 0);
    assert!(scored.contains("12 scored, 0 failed"), "{scored}");

    // The same aggregation inside `run` (`[aggregate]` of the config, `--aggregate`) scores
    // the same windows with the same scores, in one process or two shards.
    let config = root.join("agg.toml");
    std::fs::write(
        &config,
        "[aggregate]\nevery = \"1m\"\nstats = [\"mean\", \"std\"]\npivot = true\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let in_run = |output: &str, extra: &[&str]| {
        let mut args = vec!["--config", &config, "--aggregate", "--sensors", sensors];
        args.extend_from_slice(&["--min-part-rows", "2000", "--max-part-rows", "6000"]);
        args.extend_from_slice(extra);
        run_job(&readings, &path("reg"), &path(output), &args, 0)
    };
    let text = in_run("in-run", &[]);
    assert!(text.contains("12 scored, 0 failed"), "{text}");
    let expected = rows_but_run_id(&run_dir(&root.join("scored")));
    assert_eq!(expected.len(), 12 * 100, "100 minutes of 12 devices");
    assert_eq!(rows_but_run_id(&run_dir(&root.join("in-run"))), expected);
    for shard in ["1", "0"] {
        in_run("in-run-sharded", &["--shard-index", shard, "--shard-count", "2"]);
    }
    assert_eq!(rows_but_run_id(&run_dir(&root.join("in-run-sharded"))), expected);
    // Without an [aggregate] section there is nothing to apply.
    let no_section = expect_code(
        &[
            "run",
            "--no-config",
            "--aggregate",
            "--input",
            &readings,
            "--registry",
            &path("reg"),
            "--output",
            &path("x"),
        ],
        2,
    );
    assert!(no_section.contains("[aggregate]"), "{no_section}");

    // A dataset whose run has not completed is refused, not read in part.
    std::fs::remove_file(root.join("agg/minutely/_SUCCESS")).unwrap();
    let refused =
        expect_code(&["train", "--input", &path("agg/minutely"), "--registry", &path("reg2")], 2);
    assert!(refused.contains("has not completed"), "{refused}");
}

/// Every row of the parts a run's `_SUCCESS` names, as text without the run id, sorted.
fn rows_but_run_id(run: &Path) -> Vec<String> {
    let mut rows = Vec::new();
    for part in manifest(run)["parts"].as_array().unwrap() {
        for batch in read_parquet(&run.join(part["path"].as_str().unwrap())) {
            let schema = batch.schema();
            for i in 0..batch.num_rows() {
                let cells: Vec<String> = schema
                    .fields()
                    .iter()
                    .zip(batch.columns())
                    .filter(|(f, _)| f.name() != "run_id")
                    .map(|(f, c)| {
                        // Instants as microseconds (the display of zones needs chrono-tz).
                        let c = match f.data_type() {
                            arrow::datatypes::DataType::Timestamp(..) => {
                                arrow::compute::cast(c, &arrow::datatypes::DataType::Int64).unwrap()
                            }
                            _ => c.clone(),
                        };
                        let value = arrow::util::display::array_value_to_string(&c, i).unwrap();
                        format!("{}={value}", f.name())
                    })
                    .collect();
                rows.push(cells.join(","));
            }
        }
    }
    rows.sort();
    rows
}

#[test]
fn aggregation_settings_are_checked_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out").display().to_string();
    let input = dir.path().join("in").display().to_string();
    for (flags, says) in [
        (vec!["--every", "0s"], "every"),
        (vec!["--every", "5x"], "every"),
        (vec!["--every", "5s", "--stats", "mean,median"], "median"),
        (vec!["--every", "5s", "--pivot"], "--sensors"),
        (vec![], "every"),
    ] {
        let mut args = vec!["aggregate", "--input", &input, "--output", &out];
        args.extend_from_slice(&flags);
        let text = expect_code(&args, 2);
        assert!(text.contains(says), "{flags:?}: {text}");
    }
}
