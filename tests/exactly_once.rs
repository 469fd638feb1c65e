//! The commit protocol: shards, reruns, and repair of a lost part.

use std::path::Path;
use std::time::SystemTime;

use crate::common::*;

fn run_args<'a>(f: &'a Paths, output: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--input",
        f.readings.as_str(),
        "--registry",
        f.registry_url.as_str(),
        "--output",
        output,
    ];
    args.extend(SMALL_PARTS);
    args
}

#[test]
fn three_shards_write_exactly_the_rows_of_one_run() {
    let f = Paths::new(fixture());
    let (single, sharded) = (tempdir(), tempdir());
    let single_out = single.path().display().to_string();
    expect_code(&run_args(&f, &single_out), 0);
    let expected = scored_rows(&run_dir(single.path()));

    let sharded_out = sharded.path().display().to_string();
    for i in 0..3 {
        let index = i.to_string();
        let mut args = run_args(&f, &sharded_out);
        args.extend(["--shard-index", &index, "--shard-count", "3"]);
        let stdout = expect_code(&args, 0);
        let run = run_dir(sharded.path());
        // Only the last shard completes the run.
        assert_eq!(run.join("_SUCCESS").exists(), i == 2, "after shard {i}: {stdout}");
    }
    let run = run_dir(sharded.path());
    assert_eq!(run.file_name(), run_dir(single.path()).file_name(), "shards share the run id");
    // scored_rows fails on any row written twice.
    assert_eq!(scored_rows(&run), expected);
    let m = manifest(&run);
    assert_eq!(m["shard_count"], 3);
    assert_eq!(m["totals"]["devices_scored"], DEVICES);
    for shard in 0..3 {
        assert!(run.join(format!("_manifests/shard-{shard:05}-of-00003.json")).exists());
    }
}

#[test]
fn shard_index_can_come_from_a_scheduler_variable() {
    let f = Paths::new(fixture());
    let dir = tempdir();
    let out = dir.path().display().to_string();
    let mut args = run_args(&f, &out);
    args.extend(["--shard-count", "2", "--shard-index-env", "JOB_COMPLETION_INDEX"]);
    let status =
        crate::common::command().args(&args).env("JOB_COMPLETION_INDEX", "1").output().unwrap();
    assert_eq!(status.status.code(), Some(0));
    let run = run_dir(dir.path());
    assert!(run.join("_manifests/shard-00001-of-00002.json").exists());
    assert!(!run.join("_SUCCESS").exists());
}

/// Array jobs of other engines need no flag: AWS Batch's index and size, Slurm's task id and
/// count (1-based array), are read from the environment; the shards complete one run.
#[test]
fn array_jobs_give_index_and_count_through_their_environment() {
    let f = Paths::new(fixture());
    for engine in ["aws", "slurm"] {
        let dir = tempdir();
        let out = dir.path().display().to_string();
        let mut args = run_args(&f, &out);
        args.extend(["--run-id", "array"]);
        for task in 0..3u32 {
            let mut command = crate::common::command();
            command.args(&args);
            match engine {
                "aws" => command
                    .env("AWS_BATCH_JOB_ARRAY_INDEX", task.to_string())
                    .env("AWS_BATCH_JOB_ARRAY_SIZE", "3"),
                _ => command
                    .env("SLURM_ARRAY_TASK_ID", (task + 1).to_string())
                    .env("SLURM_ARRAY_TASK_MIN", "1")
                    .env("SLURM_ARRAY_TASK_MAX", "3")
                    .env("SLURM_ARRAY_TASK_COUNT", "3"),
            };
            let output = command.output().unwrap();
            assert!(
                output.status.success(),
                "{engine} {task}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let m = manifest(&dir.path().join("array"));
        assert_eq!(m["shard_count"], 3, "{engine}");
        assert_eq!(m["totals"]["rows"], (DEVICES as usize * ROWS) as u64, "{engine}");
    }
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn rerun_restores_exactly_a_deleted_part_and_touches_nothing_else() {
    let f = Paths::new(fixture());
    let dir = tempdir();
    let out = dir.path().display().to_string();
    expect_code(&run_args(&f, &out), 0);
    let run = run_dir(dir.path());
    let before = files(&run);
    let parts: Vec<String> =
        before.iter().map(|(p, _)| p.clone()).filter(|p| p.starts_with("part-")).collect();
    assert!(parts.len() >= 3);
    let victim = &parts[1];
    let others: Vec<(String, SystemTime)> = parts
        .iter()
        .filter(|p| *p != victim)
        .map(|p| (p.clone(), modified(&run.join(p))))
        .collect();
    std::fs::remove_file(run.join(victim)).unwrap();

    let stdout = expect_code(&run_args(&f, &out), 0);
    assert!(stdout.contains(&format!("({} already committed", parts.len() - 1)), "{stdout}");
    assert_eq!(files(&run), before, "the same bytes as before, every file");
    for (p, t) in others {
        assert_eq!(modified(&run.join(&p)), t, "{p} was rewritten");
    }
    // A third run finds everything committed.
    let stdout = expect_code(&run_args(&f, &out), 0);
    assert!(stdout.contains(&format!("({} already committed", parts.len())), "{stdout}");
}

#[test]
fn a_run_id_cannot_be_reused_for_other_inputs() {
    let f = Paths::new(fixture());
    let dir = tempdir();
    let out = dir.path().display().to_string();
    let mut args = run_args(&f, &out);
    args.extend(["--run-id", "nightly", "--devices", "0..10"]);
    expect_code(&args, 0);
    let mut args = run_args(&f, &out);
    args.extend(["--run-id", "nightly", "--devices", "0..20"]);
    let stderr = expect_code(&args, 2);
    assert!(
        stderr.contains("nightly") && stderr.contains("the device selection changed"),
        "{stderr}"
    );
}

/// Input rewritten after a run was planned (issue 12: the refusal must say what changed). A
/// shard reading the stored plan meets the changed file when it opens it and names it; with a
/// plan record of an older build (no stored plan), the listing is compared and the rewritten and
/// removed files are named.
#[test]
fn input_rewritten_after_planning_is_named() {
    let dir = tempdir();
    let readings = dir.path().join("readings");
    copy_dir(Path::new(&fixture().readings()), &readings);
    let readings_s = readings.display().to_string();
    let out = dir.path().join("out").display().to_string();
    let registry = fixture().registry();
    let shard = |i: &str| {
        let mut args = vec!["--run-id", "r", "--shard-count", "2", "--shard-index", i];
        args.extend(SMALL_PARTS);
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    let run = |i: &str, code| {
        let args = shard(i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_job(&readings_s, &registry, &out, &args, code)
    };
    run("0", 0);
    // Every file rewritten with the same bytes: a new version tag.
    for e in std::fs::read_dir(&readings).unwrap() {
        let path = e.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, bytes).unwrap();
    }
    let text = run("1", 2);
    assert!(
        text.contains("changed after the run was planned") && text.contains("part-0000"),
        "{text}"
    );
    // The same with a plan record of an older build: the listing is compared.
    let plan_path = dir.path().join("out/r/_plan.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&plan_path).unwrap()).unwrap();
    // (Those builds listed `[path, size, version tag]` per file where the stored plan is now.)
    let plan = record.as_object_mut().unwrap().remove("plan").unwrap();
    let identities: Vec<serde_json::Value> = plan["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| serde_json::json!([f["path"], f["size"], f["e_tag"].as_str().unwrap_or_default()]))
        .collect();
    record["files"] = serde_json::json!(identities);
    std::fs::write(&plan_path, serde_json::to_vec(&record).unwrap()).unwrap();
    std::fs::remove_file(readings.join("part-00002.parquet")).unwrap();
    let text = run("1", 2);
    assert!(
        text.contains("input files rewritten: part-00000.parquet (same size, new version tag)"),
        "{text}"
    );
    assert!(text.contains("input files removed: part-00002.parquet"), "{text}");
}

/// The fixture's paths as owned strings.
struct Paths {
    readings: String,
    registry_url: String,
}

impl Paths {
    fn new(f: &Fixture) -> Self {
        Self { readings: f.readings(), registry_url: f.registry() }
    }
}

/// Three attempts of one run at once on local disk (a scheduler retrying a task it thinks
/// lost, a user starting a job twice): all succeed, the output is one run's, and no staging
/// file of any attempt is left (the first to complete sweeps; the others write again or
/// adopt when a file they were linking into place was swept).
#[test]
fn concurrent_attempts_on_local_disk_all_succeed_with_one_runs_output() {
    let (readings, registry) = (fixture().readings(), fixture().registry());
    let dir = tempdir();
    let out = dir.path().join("out").display().to_string();
    let clean = dir.path().join("clean").display().to_string();
    let mut args = vec!["-q", "run", "--input", &readings, "--registry", &registry];
    args.extend(["--run-id", "r"]);
    args.extend(SMALL_PARTS);
    let attempts: Vec<_> = (0..3)
        .map(|_| {
            crate::common::command()
                .args(&args)
                .args(["--output", &out])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for attempt in attempts {
        let output = attempt.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let mut clean_args = args.clone();
    clean_args.extend(["--output", &clean]);
    expect_code(&clean_args, 0);
    // Manifests hold timings and the plan record the output path: parts and receipts are
    // what must be byte-identical, and no staging file (`NAME#N`) may be left.
    let committed = |run: &str| -> Vec<(String, Vec<u8>)> {
        files(&dir.path().join(run))
            .into_iter()
            .filter(|(p, _)| p.starts_with("_receipts") || p.starts_with("part-"))
            .collect()
    };
    assert!(
        committed("out/r") == committed("clean/r"),
        "parts or receipts differ from a single attempt's"
    );
    let stray: Vec<String> = files(&dir.path().join("out/r"))
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.contains('#'))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

/// `batchscore status` tells a waiting pipeline where a run stands, by exit code and summary.
#[test]
fn status_says_incomplete_complete_or_failed() {
    let f = Paths::new(fixture());
    let dir = tempdir();
    let out = dir.path().display().to_string();
    let status = |run: &str, json: bool| {
        let mut args = vec!["status", "--output", &out, "--run-id", run];
        if json {
            args.extend(["--summary", "json"]);
        }
        let output = crate::common::batchscore(&args);
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.code(), text)
    };
    assert_eq!(status("nope", false).0, Some(2), "no such run");
    let mut args = run_args(&f, &out);
    args.extend(["--run-id", "s", "--shard-count", "2", "--shard-index", "0"]);
    expect_code(&args, 0);
    let (code, text) = status("s", false);
    assert_eq!(code, Some(75), "{text}");
    assert!(
        text.contains("incomplete: 1 of 2 shards committed")
            && text.contains("shard-00001-of-00002"),
        "{text}"
    );
    let (_, json) = status("s", true);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["state"], "incomplete");
    // A failed attempt of shard 1 (other settings than the run's) leaves its reason for
    // `status`, which shows it until an attempt commits the shard.
    args.pop();
    args.push("1");
    let mut other = args.clone();
    other.extend(["--devices", "0..5"]);
    expect_code(&other, 2);
    let (code, text) = status("s", false);
    assert_eq!(code, Some(75), "{text}");
    assert!(
        text.contains("shard     shard-00001-of-00002 last failed at")
            && text.contains("(usage): run `s`"),
        "{text}"
    );
    let (_, json) = status("s", true);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["shards"][1]["error"]["class"], "usage", "{json}");
    expect_code(&args, 0);
    let (code, text) = status("s", false);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("(complete)") && !text.contains("last failed"), "{text}");
    let (_, json) = status("s", true);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["totals"]["rows"], DEVICES as u64 * ROWS as u64);
    // A run with a failed device: "failed" under the default tolerance of 0, complete within 1.
    let registry = dir.path().join("partial").display().to_string();
    expect_code(
        &[
            "train",
            "--input",
            &f.readings,
            "--registry",
            &registry,
            "--devices",
            "0..2",
            "--n-estimators",
            "5",
        ],
        0,
    );
    for (run, tolerance, code) in [("f0", "0", 3), ("f1", "1", 0)] {
        let args = [
            "run",
            "--input",
            &f.readings,
            "--registry",
            &registry,
            "--output",
            &out,
            "--devices",
            "0..3",
            "--run-id",
            run,
            "--max-failed",
            tolerance,
        ];
        expect_code(&args, code);
        let (got, text) = status(run, false);
        assert_eq!(got, Some(code), "{text}");
        assert!(text.contains("failed    2: model_missing"), "{text}");
    }
    std::fs::write(dir.path().join("s/_SUCCESS"), b"{}").unwrap();
    assert_eq!(status("s", false).0, Some(4), "a damaged _SUCCESS");
}

/// The first shard stores the plan with the run; later shards read it instead of listing and
/// opening every file (they open only their own units' files), and a shard whose settings
/// differ from the run's is refused, naming the setting.
#[test]
fn shards_read_the_stored_plan_and_open_only_their_files() {
    let f = Paths::new(fixture());
    let dir = tempdir();
    let out = dir.path().display().to_string();
    let shard = |i: &str, extra: &[&str], code| {
        let mut args = run_args(&f, &out);
        args.extend(["-v", "--run-id", "p", "--shard-count", "6", "--shard-index", i]);
        args.extend(extra);
        expect_code(&args, code)
    };
    let first = shard("0", &[], 0);
    assert!(!first.contains("plan read from the run"), "the first shard scans: {first}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("p/_plan.json")).unwrap()).unwrap();
    let files = record["plan"]["files"].as_array().unwrap().len();
    for i in ["1", "2", "3", "4", "5"] {
        let text = shard(i, &[], 0);
        let opened: usize = text
            .lines()
            .find(|l| l.contains("plan read from the run"))
            .and_then(|l| l.split("files=").nth(1))
            .and_then(|n| n.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("shard {i} did not read the stored plan: {text}"));
        assert!(opened < files, "shard {i} opened {opened} of {files} files");
    }
    let m = manifest(&dir.path().join("p"));
    assert_eq!(m["totals"]["rows"], DEVICES as u64 * ROWS as u64);
    let text = shard("1", &["--devices", "0..10"], 2);
    assert!(text.contains("the device selection changed"), "{text}");
    // A damaged stored plan is an error naming the record.
    let plan_path = dir.path().join("p/_plan.json");
    let mut damaged = record.clone();
    damaged["plan"]["units"][1]["slices"] = serde_json::json!([999]);
    std::fs::write(&plan_path, serde_json::to_vec(&damaged).unwrap()).unwrap();
    std::fs::remove_file(dir.path().join("p/_SUCCESS")).unwrap();
    for receipt in std::fs::read_dir(dir.path().join("p/_receipts")).unwrap() {
        std::fs::remove_file(receipt.unwrap().path()).unwrap();
    }
    let mut again = run_args(&f, &out);
    again.extend(["--run-id", "p", "--shard-count", "6"]);
    let text = (0..6)
        .map(|i| {
            let mut args = again.clone();
            let i = i.to_string();
            args.extend(["--shard-index", &i]);
            String::from_utf8_lossy(&crate::common::batchscore(&args).stderr).into_owned()
        })
        .collect::<String>();
    assert!(
        text.contains("_plan.json") && text.contains("the stored plan names a slice it lacks"),
        "{text}"
    );
    // (run_args already sets the part bounds; a shard with others is a separate invocation.)
    let mut other =
        vec!["run", "--input", &f.readings, "--registry", &f.registry_url, "--output", &out];
    other.extend([
        "--run-id",
        "p",
        "--shard-count",
        "3",
        "--shard-index",
        "1",
        "--max-part-rows",
        "9000",
    ]);
    let text = expect_code(&other, 2);
    assert!(text.contains("the part size bounds changed"), "{text}");
}
