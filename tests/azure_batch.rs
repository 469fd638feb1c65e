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

/// The Azure CLI of the suite (scripts/az-env.sh), or None where the suite does not ask for it.
fn az_cli() -> Option<String> {
    let az = std::env::var("BATCHSCORE_AZ").ok();
    if az.is_none() {
        assert!(
            std::env::var("BATCHSCORE_TEST_SKLEARN").is_err(),
            "BATCHSCORE_AZ is not set but the suite requires the Azure CLI test"
        );
        eprintln!("skipped: BATCHSCORE_AZ is not set (scripts/test.sh sets it)");
    }
    az
}

/// The account the CLI signs its requests for (Shared Key), as `az batch` reads it from the
/// environment when no flag names it.
const AZ_ACCOUNT: &str = "simulated";

/// The simulated pool's process, killed if a test ends (or fails) before waiting for it.
struct PoolProcess(Option<std::process::Child>);

impl Drop for PoolProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the simulated pool in `--az-account` mode; returns it and its endpoint.
fn pool_for_az(work: &Path, endpoint: &str, created: &str) -> (PoolProcess, String) {
    let python = std::env::var("BATCHSCORE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/batch_pool/pool.py");
    let binary = Path::new(env!("CARGO_BIN_EXE_batchscore"));
    let endpoint_file = work.join("endpoint");
    let child = Command::new(python)
        .arg(script)
        .args(["--az-account", AZ_ACCOUNT, "--endpoint-file"])
        .arg(&endpoint_file)
        .arg("--binary-dir")
        .arg(binary.parent().unwrap())
        .arg("--work")
        .arg(work)
        .args(["--nodes", "2", "--client-id", "pool-identity-client-id", "--timeout", "300"])
        .args(["--created", created, "--api-version", "2024-02-01.19.0"])
        .args(["--env", "AZURE_STORAGE_USE_EMULATOR=true"])
        .args(["--env", &format!("AZURITE_BLOB_STORAGE_URL={endpoint}")])
        .current_dir(work)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs the simulated pool");
    let child = PoolProcess(Some(child));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Ok(url) = std::fs::read_to_string(&endpoint_file) {
            return (child, url);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the simulated pool did not start within 30 s");
}

/// Runs the commands of `batch plan`'s `next:` line as printed, in `sh`, with the real `az`
/// first on the PATH and pointed at `batch_url` the way the CLI reads an account from the
/// environment. `FILE` and `ACCOUNT` are the placeholders the line asks the user to fill.
fn run_printed(said: &str, az: &str, batch_url: &str, file: &Path, dir: &Path) -> String {
    let line = said.lines().find_map(|l| l.strip_prefix("next: ")).expect("a next: line");
    let line = line.replace("FILE", file.to_str().unwrap()).replace("ACCOUNT", AZ_ACCOUNT);
    let bin = Path::new(az).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let config = dir.join("azure-config");
    let out = Command::new("/bin/sh")
        .args(["-ec", &line])
        .current_dir(dir)
        .env("PATH", path)
        .env("AZURE_CONFIG_DIR", &config)
        .env("AZURE_CORE_COLLECT_TELEMETRY", "false")
        .env("AZURE_BATCH_ENDPOINT", batch_url)
        .env("AZURE_BATCH_ACCOUNT", AZ_ACCOUNT)
        .env("AZURE_BATCH_ACCESS_KEY", "c2ltdWxhdGVkIGFjY291bnQga2V5")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{line}\n{text}");
    text
}

/// Waits for the simulated pool; its report, which must say every task succeeded.
fn pool_report(mut pool: PoolProcess) -> serde_json::Value {
    let out = pool.0.take().unwrap().wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("pool.py printed no report ({e}): {}", String::from_utf8_lossy(&out.stderr))
    });
    assert!(out.status.success(), "the simulated pool failed: {report:#}");
    assert_eq!(report["violations"], serde_json::json!([]), "{report:#}");
    report
}

/// Regression (issue 27, 6): `batch plan --from/--to` printed `jq .tasks FILE > tasks.json`
/// for a file whose `tasks` was `{"value": [...]}`, which azure-cli 2.91.0 posts as one task
/// without an id, so the one-off job never got its shards. Every az command `batch plan`
/// prints now runs as printed with the real CLI against the simulated Batch service, which
/// answers with Batch's bodies and then runs the job it was given.
#[test]
fn the_az_commands_batch_plan_prints_work_with_the_real_cli() {
    let Some(endpoint) = azurite() else { return };
    let Some(cli) = az_cli() else { return };
    let p = unique("azcli");
    let (readings, models) = upload_fixture(&endpoint, &p);
    let dir = tempdir();
    let config = storage_config(dir.path());
    let out = az(&format!("{p}/out"));
    let run_flags =
        ["--input", &readings, "--registry", &models, "--output", &out, "--config", &config];

    // A one-off job and its tasks: `jq` the file apart, create, add, switch to terminatejob.
    let plan_file = dir.path().join("backfill.json");
    let mut plan = vec!["batch", "plan", "--target", "azure-batch", "--name", "backfill"];
    plan.extend(["--pool", "scoring", "--shards", "3", "--app-package", "batchscore:1.0"]);
    plan.extend(["--from", "2026-01-01", "--to", "2026-01-02", "--retries", "1"]);
    plan.extend(["--out", plan_file.to_str().unwrap(), "--"]);
    plan.extend(run_flags);
    plan.extend(SMALL_PARTS);
    let said = expect_at(&endpoint, &plan, 0);
    let work = dir.path().join("one-off");
    std::fs::create_dir_all(&work).unwrap();
    let (pool, url) = pool_for_az(&work, &endpoint, "2026-01-05T00:00:00Z");
    run_printed(&said, &cli, &url, &plan_file, dir.path());
    let report = pool_report(pool);
    assert_eq!(report["requests"]["create_job"], 1, "{report:#}");
    assert_eq!(report["requests"]["patch_job"], 1, "{report:#}");
    assert_eq!(report["job"]["onAllTasksComplete"], "terminatejob");
    let mut ids: Vec<&str> =
        report["task_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    ids.sort_unstable();
    let shards = ["shard-00000-of-00003", "shard-00001-of-00003", "shard-00002-of-00003"];
    assert_eq!(ids, shards, "every shard a task of its own: {report:#}");
    let run_id = "backfill-20260101T000000Z";
    let status = expect_at(&endpoint, &["status", "--output", &out, "--run-id", run_id], 0);
    assert!(status.contains("(complete)"), "{status}");

    // A job schedule: created by the CLI, its first job run by the pool with its job manager.
    let schedule_file = dir.path().join("daily.json");
    let mut plan = vec!["batch", "plan", "--target", "azure-batch", "--name", "daily"];
    plan.extend(["--pool", "scoring", "--shards", "2", "--every", "1d"]);
    plan.extend(["--app-package", "batchscore:1.0", "--client-id", "pool-identity-client-id"]);
    plan.extend(["--out", schedule_file.to_str().unwrap(), "--"]);
    plan.extend(run_flags);
    plan.extend(SMALL_PARTS);
    let said = expect_at(&endpoint, &plan, 0);
    let work = dir.path().join("schedule");
    std::fs::create_dir_all(&work).unwrap();
    let (pool, url) = pool_for_az(&work, &endpoint, "2026-01-02T00:00:10Z");
    run_printed(&said, &cli, &url, &schedule_file, dir.path());
    let report = pool_report(pool);
    assert_eq!(report["requests"]["create_schedule"], 1, "{report:#}");
    // Every field of the schedule reached the service as written.
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&schedule_file).unwrap()).unwrap();
    assert_eq!(report["schedule"], written, "the CLI changed the schedule on its way");
    assert_eq!(report["manager"]["exit_codes"], serde_json::json!([0]), "{report:#}");
    assert_eq!(report["tasks_added"], 2, "{report:#}");
    let status = expect_at(
        &endpoint,
        &["status", "--output", &out, "--run-id", "daily-20260101T000000Z"],
        0,
    );
    assert!(status.contains("(complete)"), "{status}");
}
