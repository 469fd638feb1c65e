//! A pool, simulated: `batch plan --target azure-batch` writes a job schedule; the loopback
//! Batch service and pool of `tests/batch_pool/pool.py` create its job, run the job manager
//! (`batch fan-out`) as Batch would, and run the shard tasks it adds as local processes with
//! Batch's environment, against Azurite, through injected faults: the job manager killed after
//! half an Add Task Collection call and retried, one `servererror` answer, a shard killed
//! mid-run and retried, and two attempts of one shard at once. The union of the outputs must be
//! exactly the single-process run, `_SUCCESS` written once, and `status` complete.

use std::path::Path;
use std::process::Command;

use crate::azure::{committed_bytes, storage_config, upload_fixture};
use crate::common::azurite::{az, azurite, expect_at, list_blobs, unique};
use crate::common::*;

const SHARDS: u32 = 6;

/// Runs the simulated pool; returns its report and whether it succeeded.
fn simulate(
    schedule: &Path,
    work: &Path,
    endpoint: &str,
    extra: &[&str],
) -> (serde_json::Value, bool) {
    let python = std::env::var("BATCHSCORE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/batch_pool/pool.py");
    let binary = Path::new(env!("CARGO_BIN_EXE_batchscore"));
    let out = Command::new(python)
        .arg(script)
        .arg("--schedule")
        .arg(schedule)
        .arg("--binary-dir")
        .arg(binary.parent().unwrap())
        .arg("--work")
        .arg(work)
        .args(["--nodes", "3", "--client-id", "pool-identity-client-id", "--timeout", "600"])
        .args(["--env", "AZURE_STORAGE_USE_EMULATOR=true"])
        .args(["--env", &format!("AZURITE_BLOB_STORAGE_URL={endpoint}")])
        .args(["--env", "RUST_LOG=info"])
        .args(extra)
        .current_dir(work)
        .output()
        .expect("python runs the simulated pool");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "pool.py printed no report ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report, out.status.success())
}

#[test]
fn a_scheduled_job_on_a_simulated_pool_scores_its_window_exactly_once_through_faults() {
    let Some(endpoint) = azurite() else { return };
    let p = unique("batchpool");
    let (readings, models) = upload_fixture(&endpoint, &p);
    let dir = tempdir();
    let config = storage_config(dir.path());
    let out = az(&format!("{p}/out"));
    let schedule = dir.path().join("schedule.json");
    let shards = SHARDS.to_string();
    let mut plan = vec!["batch", "plan", "--target", "azure-batch", "--name", "daily"];
    plan.extend(["--pool", "scoring", "--shards", &shards, "--every", "1d", "--delay", "5m"]);
    plan.extend(["--app-package", "batchscore:1.0", "--client-id", "pool-identity-client-id"]);
    plan.extend(["--retries", "2", "--out", schedule.to_str().unwrap(), "--"]);
    let run_flags =
        ["--input", &readings, "--registry", &models, "--output", &out, "--config", &config];
    plan.extend(run_flags);
    plan.extend(["--threads", "1"]);
    plan.extend(SMALL_PARTS);
    expect_at(&endpoint, &plan, 0);

    // The job of 2026-01-02's slot (00:05), created 40 s late: it scores 2026-01-01.
    let work = dir.path().join("pool");
    std::fs::create_dir_all(&work).unwrap();
    let (report, ok) = simulate(
        &schedule,
        &work,
        &endpoint,
        &[
            "--created",
            "2026-01-02T00:05:40Z",
            "--kill-manager-mid-add",
            "--servererror-task",
            "shard-00004-of-00006",
            "--kill-task",
            "shard-00001-of-00006",
            "--duplicate-task",
            "shard-00002-of-00006",
        ],
    );
    let shown = serde_json::to_string_pretty(&report).unwrap();
    eprintln!(
        "simulated pool: {} tasks, manager attempts {}, wall {} s, requests {}, calls {}\n{}",
        report["tasks_added"],
        report["manager"]["exit_codes"],
        report["wall_seconds"],
        report["requests"],
        report["calls"],
        report["manager"]["stdout"].as_str().unwrap_or("")
    );
    assert!(ok, "the simulated pool failed: {shown}");
    assert_eq!(report["violations"], serde_json::json!([]), "{shown}");

    // The job manager: killed mid-add, retried once; the retry found the plan and the tasks the
    // first attempt added, resent the servererror task, and added nothing twice.
    let manager = &report["manager"];
    assert_eq!(manager["killed_mid_add"], true, "{shown}");
    assert_eq!(manager["exit_codes"], serde_json::json!([-9, 0]), "{shown}");
    let summary = manager["stdout"].as_str().unwrap();
    assert!(summary.contains("run daily-20260101T000000Z"), "{summary}");
    assert!(summary.contains("stored by an earlier attempt"), "{summary}");
    assert!(summary.contains("3 added, 3 already in the job, 1 resent"), "{summary}");
    assert_eq!(report["tasks_added"], SHARDS, "{shown}");
    let ids: Vec<String> = (0..SHARDS).map(|i| format!("shard-{i:05}-of-{SHARDS:05}")).collect();
    let mut added: Vec<String> =
        report["task_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
    added.sort();
    assert_eq!(added, ids);
    assert_eq!(report["servererrors_sent"], 1);
    assert_eq!(report["requests"]["token"], 2, "one token per job manager attempt: {shown}");

    // Shards: the killed one was running and succeeded on its retry; both copies of the
    // duplicated one succeeded.
    let tasks = &report["tasks"];
    assert_eq!(tasks["shard-00001-of-00006"]["killed_mid_run"], true, "{shown}");
    assert_eq!(tasks["shard-00001-of-00006"]["exit_codes"], serde_json::json!([-9, 0]));
    assert_eq!(tasks["shard-00002-of-00006"]["duplicate_exit_codes"], serde_json::json!([0, 0]));
    for id in &ids {
        assert_eq!(tasks[id]["exit_codes"].as_array().unwrap().last().unwrap(), 0, "{id}: {shown}");
    }

    // The union of the outputs is the single-process run of the same window, byte for byte.
    let run_id = "daily-20260101T000000Z";
    let single = az(&format!("{p}/single"));
    let mut args = vec!["run", "--input", &readings, "--registry", &models, "--output", &single];
    args.extend(["--config", &config, "--threads", "1", "--run-id", run_id]);
    args.extend(["--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z"]);
    args.extend(SMALL_PARTS);
    expect_at(&endpoint, &args, 0);
    let sharded = format!("{p}/out/{run_id}");
    let together = format!("{p}/single/{run_id}");
    let a = committed_bytes(&endpoint, &sharded);
    assert!(
        a.len() > 2 * SHARDS as usize,
        "too few parts to spread over {SHARDS} shards: {}",
        a.len()
    );
    assert_eq!(a, committed_bytes(&endpoint, &together), "parts and receipts differ");
    let successes: Vec<String> = list_blobs(&endpoint, &format!("{p}/out/"))
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| name.ends_with("/_SUCCESS"))
        .collect();
    assert_eq!(successes, vec![format!("{sharded}/_SUCCESS")]);
    let status = expect_at(&endpoint, &["status", "--output", &out, "--run-id", run_id], 0);
    assert!(status.contains("(complete)"), "{status}");
}

#[test]
fn a_job_manager_says_why_batch_refused_its_tasks() {
    let Some(endpoint) = azurite() else { return };
    let p = unique("batchrefused");
    let (readings, models) = upload_fixture(&endpoint, &p);
    let dir = tempdir();
    let out = az(&format!("{p}/out"));
    let schedule = dir.path().join("schedule.json");
    let mut plan = vec!["batch", "plan", "--target", "azure-batch", "--name", "daily"];
    plan.extend(["--pool", "scoring", "--shards", "3", "--every", "1d"]);
    plan.extend(["--client-id", "pool-identity-client-id", "--program", "batchscore-missing"]);
    plan.extend(["--out", schedule.to_str().unwrap(), "--"]);
    plan.extend(["--input", &readings, "--registry", &models, "--output", &out]);
    expect_at(&endpoint, &plan, 0);
    // The tasks run the test binary: point the schedule's program at it.
    let binary = env!("CARGO_BIN_EXE_batchscore");
    let text = std::fs::read_to_string(&schedule).unwrap().replace("batchscore-missing", binary);
    std::fs::write(&schedule, text).unwrap();
    let work = dir.path().join("pool");
    std::fs::create_dir_all(&work).unwrap();

    // A task Batch refuses: every attempt of the manager adds the others and exits 2 naming it.
    let created = ["--created", "2026-01-02T00:00:10Z"];
    let mut refused = created.to_vec();
    refused.extend(["--clienterror-task", "shard-00001-of-00003"]);
    let (report, ok) = simulate(&schedule, &work, &endpoint, &refused);
    assert!(!ok);
    let manager = &report["manager"];
    assert_eq!(manager["exit_codes"], serde_json::json!([2, 2, 2, 2]), "{report}");
    let stderr = manager["stderr"].as_str().unwrap();
    assert!(
        stderr.contains("Azure Batch refused 1 task(s) of job daily:job-1: shard-00001-of-00003: InvalidPropertyValue"),
        "{stderr}"
    );
    assert_eq!(report["tasks_added"], 2, "the others were added: {report}");

    // An identity without the role: a usage error that says which role.
    let work = dir.path().join("pool2");
    std::fs::create_dir_all(&work).unwrap();
    let mut forbidden = created.to_vec();
    forbidden.push("--forbid");
    let (report, ok) = simulate(&schedule, &work, &endpoint, &forbidden);
    assert!(!ok);
    let stderr = report["manager"]["stderr"].as_str().unwrap();
    assert_eq!(report["manager"]["exit_codes"][0], 2, "{report}");
    assert!(stderr.contains("HTTP 403 AuthorizationFailure"), "{stderr}");
    assert!(stderr.contains("Azure Batch Job Submitter"), "{stderr}");
}
