//! Issue 27, 2 and 3: no single value makes a job run for ever, abort or allocate without
//! bound, and each error lands in its class: what a hostile user found, one regression test
//! each.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use crate::common::*;

/// Long readings of device 1, sensor `a`, at the given microseconds.
fn long_readings(dir: &Path, times_us: &[i64]) -> String {
    let schema = Schema::new(vec![
        Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, None), false),
        Field::new("device", DataType::Int64, false),
        Field::new("sensor", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
    ]);
    let n = times_us.len();
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(TimestampMicrosecondArray::from(times_us.to_vec())),
            Arc::new(Int64Array::from(vec![1; n])),
            Arc::new(StringArray::from(vec!["a"; n])),
            Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64))),
        ],
    )
    .unwrap();
    let readings = dir.join("readings");
    std::fs::create_dir_all(&readings).unwrap();
    write_parquet(&readings.join("r.parquet"), &batch);
    readings.display().to_string()
}

fn aggregate(readings: &str, output: &str, flags: &[&str], code: i32) -> String {
    let mut args = vec!["aggregate", "--input", readings, "--output", output];
    args.extend_from_slice(flags);
    expect_code(&args, code)
}

/// Regression: two readings at the ends of the nanosecond range (1677 and 2262) at `--every
/// 1m` ran for ever at 100 % CPU; `--every 1us` over 500 readings a minute apart aborted asking
/// for 240 GB. Windows now exist only where readings are.
#[test]
fn aggregation_work_follows_the_readings_not_their_span() {
    let dir = tempdir();
    let ends =
        long_readings(&dir.path().join("ends"), &[-9_223_372_036_854_775, 9_223_372_036_854_775]);
    let out = dir.path().join("out").display().to_string();
    let text = aggregate(&ends, &out, &["--every", "1m", "--run-id", "ends"], 0);
    assert!(text.contains("2 windows"), "{text}");

    let minutes: Vec<i64> = (0..500).map(|i| i * 60_000_000).collect();
    let minutes = long_readings(&dir.path().join("minutes"), &minutes);
    let text = aggregate(&minutes, &out, &["--every", "1us", "--run-id", "micro"], 0);
    assert!(text.contains("500 windows"), "{text}");
    // An offset of a million days shifts nothing a window could not: refused up front.
    let text = aggregate(&minutes, &out, &["--every", "1m", "--offset", "1000000d"], 2);
    assert!(text.contains("offset") && text.contains("longer than a window"), "{text}");
    let text = aggregate(&minutes, &out, &["--every", "99999999999y"], 2);
    assert!(text.contains("10,000 years"), "{text}");
    // Regression: `--every -1s` was a clap message about an unexpected argument.
    let text = aggregate(&minutes, &out, &["--every", "-1s"], 2);
    assert!(text.contains("invalid setting `every`"), "{text}");
}

/// Regression: a microsecond timestamp at i64::MAX made polars panic inside `aggregate`
/// (exit 1). A timestamp outside the years 0001-9999 is bad input naming file, column, value.
#[test]
fn a_timestamp_outside_the_readable_years_is_bad_input() {
    let dir = tempdir();
    let out = dir.path().join("out").display().to_string();
    for (name, t) in
        [("max", i64::MAX), ("min", i64::MIN + 1), ("year-10000", 253_402_300_800_000_000)]
    {
        let readings = long_readings(&dir.path().join(name), &[0, t]);
        let text = aggregate(&readings, &out, &["--every", "1m"], 4);
        assert!(
            text.contains("r.parquet")
                && text.contains("timestamp")
                && text.contains(&t.to_string()),
            "{name}: {text}"
        );
        assert!(text.contains("0001 to 9999"), "{text}");
        // Scoring reads them the same way.
        let f = fixture();
        let text = run_job(&readings, &f.registry(), &out, &[], 4);
        assert!(text.contains("0001 to 9999"), "{text}");
    }
}

/// Regression: `batch plan --target azure-batch --shards 1000000000` grew past 8 GB in 30 s,
/// slurm wrote a script for a billion array tasks, and nothing bounded `run --shard-count`.
#[test]
fn shard_counts_are_bounded_before_anything_is_built() {
    let dir = tempdir();
    let out = dir.path().join("out").display().to_string();
    let run_flags = ["--", "--input", "in", "--registry", "m", "--output", "o"];
    for (target, extra) in [
        ("azure-batch", vec!["--pool", "p", "--from", "2026-01-01", "--to", "2026-01-02"]),
        ("slurm", vec!["--from", "2026-01-01", "--to", "2026-01-02"]),
        ("kubernetes", vec!["--image", "i", "--from", "2026-01-01", "--to", "2026-01-02"]),
    ] {
        let mut args = vec!["batch", "plan", "--target", target, "--name", "n", "--shards"];
        args.push("1000000000");
        args.extend(extra.iter().copied());
        args.extend(["--out", &out]);
        args.extend(run_flags);
        let text = expect_code(&args, 2);
        assert!(text.contains("at most 10000") || text.contains("10,000"), "{target}: {text}");
    }
    let slurm = ["batch", "plan", "--target", "slurm", "--name", "n", "--shards", "2000"];
    let mut args = slurm.to_vec();
    args.extend(["--from", "2026-01-01", "--to", "2026-01-02", "--out", &out]);
    args.extend(run_flags);
    assert!(expect_code(&args, 2).contains("MaxArraySize"));
    let f = fixture();
    let text = run_job(&f.readings(), &f.registry(), &out, &["--shard-count", "1000000000"], 2);
    assert!(text.contains("at most 10000"), "{text}");
}

/// Regression: `report --to /proc/version` hung (object_store's local writer retried its
/// staging file for ever); `--to` an existing directory said "Unable to rename file".
#[test]
fn report_targets_that_name_no_writable_file_are_refused() {
    let f = fixture();
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    run_job(&f.readings(), &f.registry(), &output, &["--run-id", "r"], 0);
    let report = |to: &str, code: i32| {
        expect_code(&["report", "--output", &output, "--run-id", "r", "--to", to], code)
    };
    let text = report("/proc/version", 2);
    assert!(text.contains("cannot make files in /proc"), "{text}");
    let text = report(&dir.path().display().to_string(), 2);
    assert!(text.contains("is a directory") && text.contains("report.html"), "{text}");
    assert!(report("", 2).contains("--to is empty"));
    // Running into the same wall, a run's output is refused too, not a hang.
    let text = run_job(&f.readings(), &f.registry(), "/proc/batchscore-out", &[], 2);
    assert!(text.contains("cannot make files in /proc"), "{text}");
}

/// Regression: a damaged drift table made `report` exit 1 (internal) and a deleted one 2;
/// a part whose bytes changed after the run was reported on without a word. All three are a
/// damaged run (4), naming the object.
#[test]
fn a_damaged_run_is_bad_input_for_report() {
    let f = fixture();
    let dir = tempdir();
    let output = dir.path().join("out");
    let output_s = output.display().to_string();
    run_job(&f.readings(), &f.registry(), &output_s, &["--run-id", "r"], 0);
    let report = |code: i32| {
        expect_code(&["report", "--output", &output_s, "--run-id", "r", "--to", "-"], code)
    };
    report(0);
    let drift = output.join("_runs/r/drift.parquet");
    let kept = std::fs::read(&drift).unwrap();
    std::fs::write(&drift, b"PAR1 not a table PAR1").unwrap();
    let text = report(4);
    assert!(text.contains("drift.parquet") && text.contains("damaged drift table"), "{text}");
    std::fs::remove_file(&drift).unwrap();
    let text = report(4);
    assert!(text.contains("drift.parquet") && text.contains("missing"), "{text}");
    std::fs::write(&drift, kept).unwrap();

    let part = output.join("r/part-00000.parquet");
    let mut bytes = std::fs::read(&part).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&part, &bytes).unwrap();
    let text = report(4);
    assert!(text.contains("part-00000.parquet") && text.contains("SHA-256"), "{text}");
    bytes.truncate(middle);
    std::fs::write(&part, &bytes).unwrap();
    let text = report(4);
    assert!(text.contains("changed after its run"), "{text}");
    std::fs::remove_file(&part).unwrap();
    let text = report(4);
    assert!(text.contains("is missing"), "{text}");
}

/// Regression: `--min-part-rows 0` and `--max-part-rows 0` were accepted.
#[test]
fn part_row_bounds_of_zero_or_crossed_are_usage_errors() {
    let f = fixture();
    let dir = tempdir();
    let out = dir.path().join("out").display().to_string();
    let readings = f.readings();
    for flags in [
        &["--min-part-rows", "0"][..],
        &["--max-part-rows", "0"],
        &["--min-part-rows", "500", "--max-part-rows", "100"],
    ] {
        let text = run_job(&f.readings(), &f.registry(), &out, flags, 2);
        assert!(text.contains("part_rows"), "{flags:?}: {text}");
        let mut args = vec!["aggregate", "--input", &readings, "--output", &out, "--every", "1m"];
        args.extend_from_slice(flags);
        assert!(expect_code(&args, 2).contains("part_rows"), "{flags:?}");
    }
    // A maximum alone below the default minimum is taken: the default gives way.
    run_job(&f.readings(), &f.registry(), &out, &["--max-part-rows", "5000"], 0);
}
