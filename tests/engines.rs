//! `batchscore batch plan`: each engine's template parses as its tools read it, and run the way
//! the engine runs it (one process per index, the index only in the engine's environment) its
//! shards make exactly one complete run.

use std::path::Path;

use crate::common::*;

/// `batch plan` for `target` over the fixture, pinned to the fixture's window.
fn plan(target: &str, out: &str, extra: &[&str]) -> String {
    let (readings, registry) = (fixture().readings(), fixture().registry());
    let mut args = vec!["batch", "plan", "--target", target, "--shards", "3", "--name", "nightly"];
    args.extend(extra);
    args.extend(["--", "--input", &readings, "--registry", &registry, "--output", out]);
    expect_code(&args, 0)
}

/// The YAML document as JSON, read by PyYAML (a YAML implementation of its own); `None` without
/// the test venv (scripts/test.sh always has it).
fn yaml_as_json(text: &str) -> Option<serde_json::Value> {
    let python = std::env::var("BATCHSCORE_PYTHON").ok()?;
    let mut child = std::process::Command::new(python)
        .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "PyYAML refused the template:\n{text}");
    Some(serde_json::from_slice(&output.stdout).unwrap())
}

/// Runs one shard's command line (`batchscore ...`) with `env`, as the engine would.
fn run_shard(command: &[String], env: &[(&str, String)]) {
    assert_eq!(command[0], "batchscore");
    let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
    let mut shard = crate::common::command();
    shard.args(&args);
    for (k, v) in env {
        shard.env(k, v);
    }
    let output = shard.output().unwrap();
    assert!(output.status.success(), "{env:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// The run the shards made is complete and holds every row once.
fn check_complete(out: &Path, run_id: &str) {
    let text = expect_code(
        &[
            "status",
            "--output",
            &out.display().to_string(),
            "--run-id",
            run_id,
            "--summary",
            "json",
        ],
        0,
    );
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["state"], "complete");
    assert_eq!(status["shards"].as_array().unwrap().len(), 3);
    assert_eq!(status["totals"]["rows"], DEVICES as u64 * ROWS as u64);
}

#[test]
fn kubernetes_indexed_job() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let text = plan(
        "kubernetes",
        &out.display().to_string(),
        &["--image", "registry.example/batchscore:1", "--parallelism", "2"],
    );
    if let Some(job) = yaml_as_json(&text) {
        assert_eq!(job["kind"], "Job");
        assert_eq!(job["spec"]["completionMode"], "Indexed");
        assert_eq!(job["spec"]["completions"], 3);
        assert_eq!(job["spec"]["parallelism"], 2);
        assert_eq!(job["spec"]["podFailurePolicy"]["rules"][0]["action"], "FailIndex");
        assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
    }
    // The command is a flow sequence of double-quoted scalars: JSON too.
    let line = text.lines().find_map(|l| l.trim().strip_prefix("command: ")).unwrap();
    let command: Vec<String> = serde_json::from_str(line).unwrap();
    for index in 0..3 {
        run_shard(&command, &[("JOB_COMPLETION_INDEX", index.to_string())]);
    }
    check_complete(&out, "nightly");
}

#[test]
fn slurm_array_script() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let text = plan("slurm", &out.display().to_string(), &[]);
    assert!(
        text.contains("#SBATCH --array=0-2%3") && text.contains("#SBATCH --job-name=nightly"),
        "{text}"
    );
    let script = dir.path().join("job.sh");
    std::fs::write(&script, &text).unwrap();
    // sbatch runs the script once per task with the array variables set; a 1-based array works
    // the same way.
    let bin = Path::new(env!("CARGO_BIN_EXE_batchscore")).parent().unwrap().display().to_string();
    let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
    for task in 1..=3 {
        let status = std::process::Command::new("sh")
            .arg(&script)
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("SLURM_ARRAY_TASK_ID", task.to_string())
            .env("SLURM_ARRAY_TASK_MIN", "1")
            .env("SLURM_ARRAY_TASK_MAX", "3")
            .env("SLURM_ARRAY_TASK_COUNT", "3")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "task {task}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    check_complete(&out, "nightly");
}

#[test]
fn aws_batch_array_job() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let text = plan(
        "aws-batch",
        &out.display().to_string(),
        &["--queue", "q", "--job-definition", "d", "--retries", "2"],
    );
    let job: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(job["arrayProperties"]["size"], 3);
    assert_eq!(job["retryStrategy"]["attempts"], 3);
    let exits = job["retryStrategy"]["evaluateOnExit"].as_array().unwrap();
    assert!(exits.iter().any(|e| e["onExitCode"] == "4" && e["action"] == "EXIT"));
    let command: Vec<String> =
        serde_json::from_value(job["containerOverrides"]["command"].clone()).unwrap();
    for index in 0..3 {
        run_shard(
            &command,
            &[
                ("AWS_BATCH_JOB_ARRAY_INDEX", index.to_string()),
                ("AWS_BATCH_JOB_ARRAY_SIZE", "3".into()),
            ],
        );
    }
    check_complete(&out, "nightly");
}

#[test]
fn a_planned_window_pins_the_run_id_and_bad_plans_are_refused() {
    let dir = tempdir();
    let out = dir.path().join("out").display().to_string();
    let text = plan(
        "aws-batch",
        &out,
        &[
            "--queue",
            "q",
            "--job-definition",
            "d",
            "--from",
            "2026-01-01 10:00:00",
            "--to",
            "2026-01-01 11:00:00",
        ],
    );
    let job: serde_json::Value = serde_json::from_str(&text).unwrap();
    let command: Vec<String> =
        serde_json::from_value(job["containerOverrides"]["command"].clone()).unwrap();
    let joined = command.join(" ");
    assert!(
        joined.contains("--run-id nightly-20260101T100000Z")
            && joined.contains("--from 2026-01-01T10:00:00Z"),
        "{joined}"
    );
    let readings = fixture().readings();
    let dir_s = dir.path().display().to_string();
    for bad in [
        vec!["--target", "slurm", "--shards", "2", "--name", "Bad_Name", "--", "--input", "x"],
        vec!["--target", "slurm", "--shards", "2", "--name", "ok", "--", "--run-id", "mine"],
        vec!["--target", "slurm", "--shards", "2", "--name", "ok", "--", "--inptu", "x"],
        vec![
            "--target",
            "aws-batch",
            "--shards",
            "1",
            "--name",
            "ok",
            "--queue",
            "q",
            "--job-definition",
            "d",
            "--",
            "--input",
            "x",
        ],
        vec!["--target", "kubernetes", "--shards", "2", "--name", "ok", "--", "--input", &readings],
        vec![
            "--target",
            "kubernetes",
            "--shards",
            "100001",
            "--name",
            "ok",
            "--image",
            "i",
            "--",
            "--input",
            &readings,
        ],
        vec![
            "--target", "slurm", "--shards", "2", "--name", "ok", "--out", &dir_s, "--", "--input",
            &readings,
        ],
    ] {
        let mut args = vec!["batch", "plan"];
        args.extend(bad.iter());
        expect_code(&args, 2);
    }
}

#[test]
fn azure_batch_one_off_job_and_its_tasks() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let file = dir.path().join("job.json");
    let file_s = file.display().to_string();
    let mut extra = vec!["--pool", "scoring", "--from", "2026-01-01", "--to", "2026-01-02"];
    extra.extend(["--retries", "2", "--out", &file_s]);
    let said = plan("azure-batch", &out.display().to_string(), &extra);
    assert!(said.contains("az batch job set --job-id nightly-20260101T000000Z"), "{said}");
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let job = &plan["job"];
    assert_eq!(job["id"], "nightly-20260101T000000Z");
    assert_eq!(job["poolInfo"]["poolId"], "scoring");
    assert_eq!(job["onAllTasksComplete"], "noaction", "a job without tasks counts as complete");
    // Regression: `{"value": [...]}` was taken by `az batch task create --json-file` as one
    // task without an id; a plain array is added as a collection.
    let tasks = plan["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3);
    // Each task as Batch runs it: its command line split into words (here by `sh`, which splits
    // it the same way), the index and count only in its environment settings.
    let bin = Path::new(env!("CARGO_BIN_EXE_batchscore")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    for (i, task) in tasks.iter().enumerate() {
        assert_eq!(task["id"], format!("shard-{i:05}-of-00003"));
        assert_eq!(task["constraints"]["maxTaskRetryCount"], 2);
        let mut sh = std::process::Command::new("/bin/sh");
        sh.args(["-c", task["commandLine"].as_str().unwrap()]).env("PATH", &path);
        sh.current_dir(dir.path()).env_remove("BATCHSCORE_CONFIG");
        for e in task["environmentSettings"].as_array().unwrap() {
            sh.env(e["name"].as_str().unwrap(), e["value"].as_str().unwrap());
        }
        let output = sh.output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    check_complete(&out, "nightly-20260101T000000Z");

    // What cannot work is refused before anything is submitted.
    let readings = fixture().readings();
    let base = ["--target", "azure-batch", "--shards", "2", "--name", "ok"];
    for bad in [
        vec!["--every", "1h", "--", "--input", &readings],
        vec!["--pool", "p", "--", "--input", &readings],
        vec!["--pool", "p", "--every", "30s", "--", "--input", &readings],
        vec!["--pool", "p", "--every", "1h", "--delay", "1h", "--", "--input", &readings],
        vec!["--pool", "p", "--every", "1h", "--start-window", "1h", "--", "--input", &readings],
        vec!["--pool", "p", "--every", "1h", "--job-wall-clock", "2h", "--", "--input", &readings],
        vec!["--pool", "p", "--every", "1h", "--parallelism", "2", "--", "--input", &readings],
        vec!["--pool", "p", "--last", "1h", "--", "--input", "a b"],
        vec!["--pool", "p", "--every", "1h", "--app-package", "a b", "--", "--input", &readings],
    ] {
        let mut args = vec!["batch", "plan"];
        args.extend(base);
        args.extend(bad.iter());
        expect_code(&args, 2);
    }
    let zero = ["batch", "plan", "--target", "azure-batch", "--shards", "0", "--name", "ok"];
    let mut args = zero.to_vec();
    args.extend(["--pool", "p", "--every", "1h", "--", "--input", &readings]);
    assert!(expect_code(&args, 2).contains("--shards must be at least 1"));
    // Outside a Batch task the job manager says what is missing.
    let text = expect_code(
        &[
            "batch", "fan-out", "--name", "ok", "--shards", "2", "--every", "1h", "--", "--input",
            &readings,
        ],
        2,
    );
    assert!(text.contains("AZ_BATCH_ACCOUNT_URL is not set"), "{text}");
}
