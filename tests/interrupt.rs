//! Stopping a run: SIGTERM and SIGINT stop it cleanly (exit 143 / 130, one line on how to
//! resume), and SIGKILL at any moment leaves nothing that a rerun does not complete into the
//! exact bytes of an uninterrupted run, with no stray objects.
//!
//! `BATCHSCORE_KILL_TRIALS` sets the number of kill -9 trials (3 by default, as in CI);
//! `scripts/kill-loop.sh N` runs many.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::common::*;

/// Readings large enough that a run takes a while on one thread, in many units.
pub(crate) struct Workload {
    _dir: tempfile::TempDir,
    pub(crate) readings: String,
    pub(crate) models: String,
    /// Every part and receipt of an uninterrupted run, by relative path.
    pub(crate) clean: BTreeMap<String, Vec<u8>>,
    /// How long the uninterrupted run took.
    took: Duration,
}

pub(crate) const RUN_FLAGS: [&str; 8] =
    ["--run-id", "r", "--threads", "1", "--min-part-rows", "5000", "--max-part-rows", "15000"];

pub(crate) fn workload() -> &'static Workload {
    static W: OnceLock<Workload> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempdir();
        let data = dir.path().join("data").display().to_string();
        expect_code(
            &[
                "generate",
                "--devices",
                "60",
                "--rows-per-device",
                "4000",
                "--row-group-rows",
                "5000",
                "--out",
                &data,
            ],
            0,
        );
        let readings = format!("{data}/readings");
        let models = dir.path().join("models").display().to_string();
        expect_code(
            &["train", "--input", &readings, "--registry", &models, "--n-estimators", "20"],
            0,
        );
        let out = dir.path().join("clean");
        let started = Instant::now();
        run_job(&readings, &models, &out.display().to_string(), &RUN_FLAGS, 0);
        let took = started.elapsed();
        let clean = committed(&out.join("r"));
        assert!(
            clean.keys().filter(|k| k.starts_with("part-")).count() >= 10,
            "{:?}",
            clean.keys()
        );
        Workload { _dir: dir, readings, models, clean, took }
    })
}

/// The parts and receipts of a run directory (manifests hold timings, so they differ).
pub(crate) fn committed(run: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut objects: BTreeMap<String, Vec<u8>> = files(run)
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with("part-") || k.starts_with("_receipts/") || k.starts_with("_drift/unit-")
        })
        .collect();
    // The drift table sits beside the run's folder (OUTPUT/_runs/RUN_ID/).
    if let (Some(output), Some(name)) = (run.parent(), run.file_name()) {
        let table = output.join("_runs").join(name).join("drift.parquet");
        if let Ok(bytes) = std::fs::read(table) {
            objects.insert("../_runs/RUN_ID/drift.parquet".into(), bytes);
        }
    }
    objects
}

fn spawn_run(out: &Path) -> Child {
    let w = workload();
    let out = out.display().to_string();
    let mut args = vec!["run", "--input", &w.readings, "--registry", &w.models, "--output", &out];
    args.extend(RUN_FLAGS);
    crate::common::command()
        .args(&args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the run directory holds at least one receipt (bounded by 60 s).
fn wait_for_a_receipt(run: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::fs::read_dir(run.join("_receipts")).is_ok_and(|mut d| d.next().is_some()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no unit committed within 60 s");
}

/// Reruns the job to completion and checks its output against the uninterrupted run's.
fn rerun_and_compare(out: &Path) {
    let w = workload();
    run_job(&w.readings, &w.models, &out.display().to_string(), &RUN_FLAGS, 0);
    let run = out.join("r");
    let got = committed(&run);
    assert_eq!(got.keys().collect::<Vec<_>>(), w.clean.keys().collect::<Vec<_>>());
    for (path, bytes) in &w.clean {
        assert!(got[path] == *bytes, "{path} differs from the uninterrupted run's");
    }
    let stray: Vec<String> = files(&run)
        .into_iter()
        .map(|(path, _)| path)
        .filter(|k| {
            !(k.starts_with("part-")
                || k.starts_with("_receipts/part-")
                || k.starts_with("_drift/unit-")
                || k.starts_with("_manifests/shard-")
                || *k == "_plan.json"
                || *k == "_SUCCESS")
        })
        .collect();
    assert!(stray.is_empty(), "stray objects: {stray:?}");
}

fn stop_with(signal: &str, code: i32) {
    let dir = tempdir();
    let out = dir.path().join("out");
    let child = spawn_run(&out);
    wait_for_a_receipt(&out.join("r"));
    let status = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    let name = signal.trim_start_matches('-');
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("stopped by SIG{name}")))
        .unwrap_or_default();
    assert!(line.contains("run `r`") && line.contains("run the same command again"), "{stderr}");
    assert!(!Path::new(&out.join("r/_SUCCESS")).exists(), "stopped before the end: {stderr}");
    rerun_and_compare(&out);
}

#[test]
fn sigterm_stops_the_run_with_exit_143_and_the_rerun_completes_it() {
    stop_with("-TERM", 143);
}

#[test]
fn sigint_stops_the_run_with_exit_130_and_the_rerun_completes_it() {
    stop_with("-INT", 130);
}

#[test]
fn kill_9_at_random_moments_never_breaks_exactly_once() {
    let w = workload();
    let trials: u64 =
        std::env::var("BATCHSCORE_KILL_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let seed: u64 =
        std::env::var("BATCHSCORE_KILL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    eprintln!("kill -9 trials: {trials}, seed {seed}, clean run {:?}", w.took);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let dir = tempdir();
    for trial in 0..trials {
        let out: PathBuf = dir.path().join(format!("out-{trial}"));
        // Killed once or twice at random moments of the run, then rerun to completion.
        for _ in 0..rng.random_range(1..=2u32) {
            let mut child = spawn_run(&out);
            let at = w.took.mul_f64(rng.random_range(0.0..1.1));
            std::thread::sleep(at);
            let _ = child.kill();
            let _ = child.wait();
        }
        rerun_and_compare(&out);
    }
}

#[test]
fn sigterm_stops_training_without_an_index_and_training_again_completes() {
    let w = workload();
    let dir = tempdir();
    let registry = dir.path().join("models");
    let registry_s = registry.display().to_string();
    // Units of 5 devices: a unit writes its models as one pack, so packs appear as training
    // goes on.
    let config = dir.path().join("batchscore.toml");
    std::fs::write(&config, "[train]\nunit_rows = 20000\n").unwrap();
    let config = config.display().to_string();
    let child = crate::common::command()
        .args(["--config", &config, "train", "--input", &w.readings, "--registry", &registry_s])
        .args(["--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stopped once its first model object is written.
    let deadline = Instant::now() + Duration::from_secs(60);
    let written = || {
        ["packs", "models"].iter().any(|d| {
            std::fs::read_dir(registry.join(d)).is_ok_and(|mut entries| entries.next().is_some())
        })
    };
    while !written() {
        assert!(Instant::now() < deadline, "no model written within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success()
    );
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("stopped by SIGTERM: training stopped before its index was written"),
        "{stderr}"
    );
    assert!(!registry.join("index.json").exists(), "no index after a stop");
    let again = ["--config", &config, "-q", "train", "--input", &w.readings];
    expect_code(&[&again[..], &["--registry", &registry_s]].concat(), 0);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(registry.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["models"].as_array().unwrap().len(), 60);
}

/// Regression: a job busy in one long step (polars over a large unit, a long computation)
/// did not answer SIGTERM; a scheduled job then stalled until it was killed. Every job now
/// ends within a second of the signal, with the signal's exit code.
#[test]
fn a_job_busy_in_one_long_step_answers_sigterm_within_a_second() {
    let dir = tempdir();
    let out = dir.path().join("gen").display().to_string();
    // One file of 20 million rows: a single step of many seconds.
    let child = crate::common::command()
        .args(["generate", "--devices", "1", "--rows-per-device", "20000000"])
        .args(["--rows-per-file", "20000000", "--out", &out])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let sent = Instant::now();
    assert!(
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success()
    );
    let output = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    // Not a timing: the step takes tens of seconds; the job's own bound is 0.7 s, and the rest
    // is margin for a loaded machine.
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
}
