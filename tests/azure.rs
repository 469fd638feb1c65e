//! The whole job on Azure Blob Storage (Azurite): same results as on local disk, retries through
//! injected faults, concurrent attempts of one shard, requests to open a registry, and permanent
//! errors that fail fast without leaking credentials.
//!
//! These tests need the emulator: `scripts/test.sh` (or `scripts/azurite/with-azurite.sh cargo
//! test`) starts it. Data goes in under a unique prefix per test, uploaded and read back by
//! `scripts/azurite/blob.py`, a REST client independent of batchscore.

use std::path::Path;

use crate::common::azurite::{
    CONTAINER, az, azurite, batchscore_at, blob_py, expect_at, get_blob, list_blobs, unique,
};
use crate::common::proxy::FaultProxy;
use crate::common::*;

/// Uploads the fixture's readings and registry under `prefix` with the independent client;
/// returns their `az://` URLs.
pub(crate) fn upload_fixture(endpoint: &str, prefix: &str) -> (String, String) {
    let f = fixture();
    blob_py(endpoint, &["put-dir", &f.readings(), CONTAINER, &format!("{prefix}/readings")]);
    blob_py(endpoint, &["put-dir", &f.registry(), CONTAINER, &format!("{prefix}/models")]);
    (az(&format!("{prefix}/readings")), az(&format!("{prefix}/models")))
}

/// A test's share of the emulator: the fixture uploaded under its own prefix, and a config file.
struct Remote {
    endpoint: String,
    prefix: String,
    readings: String,
    models: String,
    config: String,
    _dir: tempfile::TempDir,
}

/// `None` when Azurite is not running (see [`azurite`]).
fn remote(name: &str) -> Option<Remote> {
    let endpoint = azurite()?;
    let prefix = unique(name);
    let (readings, models) = upload_fixture(&endpoint, &prefix);
    let dir = tempdir();
    let config = storage_config(dir.path());
    Some(Remote { endpoint, prefix, readings, models, config, _dir: dir })
}

/// A config file with fast retries, a request timeout shorter than the proxy's slow answers, and
/// small multipart blocks, so faults cost little time, slow answers become client timeouts, and
/// every part of the fixture goes up in several blocks.
pub(crate) fn storage_config(dir: &Path) -> String {
    let path = dir.join("storage.toml");
    std::fs::write(
        &path,
        "[storage]\nmax_retries = 12\ninitial_backoff = \"10ms\"\nmax_backoff = \"200ms\"\n\
         multipart_part_size = \"64KiB\"\nmax_concurrent_requests = 8\n\n[storage.options]\n\
         timeout = \"1s\"\n",
    )
    .unwrap();
    path.display().to_string()
}

/// The `_SUCCESS` manifest of a run on Azurite, read by the independent client.
fn remote_manifest(endpoint: &str, run_prefix: &str) -> serde_json::Value {
    serde_json::from_slice(&get_blob(endpoint, &format!("{run_prefix}/_SUCCESS"))).unwrap()
}

/// The blob name of `run_prefix`'s drift table: beside the run's folder, in
/// `OUTPUT/_runs/RUN_ID/`.
fn drift_table_of(run_prefix: &str) -> String {
    let (output, run) = run_prefix.rsplit_once('/').unwrap();
    format!("{output}/_runs/{run}/drift.parquet")
}

/// Checks a committed run on Azurite: every part the manifest names is a blob of the recorded
/// size, no other Parquet blob is in the run's folder (the drift table sits beside it), and
/// the manifest names the drift table where it is. Returns the scored rows.
pub(crate) fn check_run(endpoint: &str, run_prefix: &str) -> Scored {
    let m = remote_manifest(endpoint, run_prefix);
    let blobs = list_blobs(endpoint, &format!("{run_prefix}/"));
    let parts: Vec<(String, u64)> = blobs
        .iter()
        .filter(|(name, _)| name.ends_with(".parquet"))
        .map(|(name, size)| (name[run_prefix.len() + 1..].to_string(), *size))
        .collect();
    let table = m["drift"]["table"].as_str().unwrap_or_default();
    let (output, _) = run_prefix.rsplit_once('/').unwrap();
    assert_eq!(format!("{output}/{table}"), drift_table_of(run_prefix), "{m}");
    assert!(!get_blob(endpoint, &drift_table_of(run_prefix)).is_empty());
    let named: Vec<(String, u64)> = m["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["path"].as_str().unwrap().to_string(), p["bytes"].as_u64().unwrap()))
        .collect();
    assert_eq!(parts, named, "part blobs and manifest differ");
    scored_rows_from(&m, |part| get_blob(endpoint, &format!("{run_prefix}/{part}")))
}

/// Part files, receipts, drift partials and the drift table of a run: the bytes that must not
/// depend on faults or attempts.
pub(crate) fn committed_bytes(endpoint: &str, run_prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut objects: Vec<(String, Vec<u8>)> = list_blobs(endpoint, &format!("{run_prefix}/"))
        .into_iter()
        .filter(|(name, _)| {
            name.ends_with(".parquet") || name.contains("/_receipts/") || name.contains("/_drift/")
        })
        .map(|(name, _)| {
            let bytes = get_blob(endpoint, &name);
            (name[run_prefix.len() + 1..].to_string(), bytes)
        })
        .collect();
    objects.push(("drift table".into(), get_blob(endpoint, &drift_table_of(run_prefix))));
    objects
}

#[test]
fn pipeline_on_azurite_matches_local_disk() {
    let Some(endpoint) = azurite() else { return };
    let f = fixture();
    let p = unique("pipeline");
    let (readings, _) = upload_fixture(&endpoint, &p);
    // Train into a registry on Azurite, from the uploaded readings.
    let models = az(&format!("{p}/trained"));
    expect_at(&endpoint, &["train", "--input", &readings, "--registry", &models, "--seed", "3"], 0);
    let listed = expect_at(&endpoint, &["models", "list", "--registry", &models], 0);
    assert!(listed.contains(&format!("{DEVICES} models in {models}")), "{listed}");
    let verified = expect_at(&endpoint, &["models", "verify", "--registry", &models], 0);
    assert!(verified.contains(&format!("{DEVICES} ok, 0 bad")), "{verified}");
    // Every Azure URL form names the same registry.
    for url in [
        format!("azure://{CONTAINER}/{p}/trained"),
        format!("abfss://{CONTAINER}@devstoreaccount1.dfs.core.windows.net/{p}/trained"),
        format!("https://devstoreaccount1.blob.core.windows.net/{CONTAINER}/{p}/trained"),
    ] {
        let listed = expect_at(&endpoint, &["models", "list", "--registry", &url], 0);
        assert!(listed.contains(&format!("{DEVICES} models in {url}")), "{listed}");
    }
    let shown = expect_at(&endpoint, &["models", "show", "7", "--registry", &models], 0);
    assert!(shown.contains("\"trees\": 100"), "{shown}");

    // `generate` writes straight to the container too.
    let generated = az(&format!("{p}/generated"));
    expect_at(
        &endpoint,
        &["generate", "--devices", "3", "--rows-per-device", "50", "--out", &generated],
        0,
    );
    let names: Vec<String> =
        list_blobs(&endpoint, &format!("{p}/generated/")).into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&format!("{p}/generated/labels.parquet")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with(&format!("{p}/generated/readings/"))), "{names:?}");

    let out = az(&format!("{p}/out"));
    let mut args = vec!["run", "--input", &readings, "--registry", &models, "--output", &out];
    args.extend(["--run-id", "same", "--threads", "2"]);
    args.extend(SMALL_PARTS);
    expect_at(&endpoint, &args, 0);
    let remote = check_run(&endpoint, &format!("{p}/out/same"));

    let local_out = tempdir();
    let mut extra = vec!["--run-id", "same"];
    extra.extend(SMALL_PARTS);
    run_job(&f.readings(), &f.registry(), local_out.path().to_str().unwrap(), &extra, 0);
    let local = scored_rows(&local_out.path().join("same"));
    assert_eq!(remote.len(), (DEVICES as usize) * ROWS);
    assert!(remote == local, "scores on Azurite differ from scores on local disk");

    // pyarrow, through the Blob REST API, sees every row exactly once.
    let rows: serde_json::Value = serde_json::from_slice(&blob_py(
        &endpoint,
        &["rows", CONTAINER, &format!("{p}/out/same/part-")],
    ))
    .unwrap();
    let total: u64 = rows.as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, (DEVICES as u64) * ROWS as u64);
}

#[test]
fn transient_faults_are_retried_and_output_is_identical() {
    let Some(Remote { endpoint, prefix: p, readings, models, config, _dir }) = remote("faults")
    else {
        return;
    };
    let run = |endpoint: &str, out: &str| {
        let mut args = vec!["--config", &config, "run", "--input", &readings];
        args.extend(["--registry", &models, "--output", out, "--run-id", "r"]);
        args.extend(SMALL_PARTS);
        expect_at(endpoint, &args, 0)
    };
    run(&endpoint, &az(&format!("{p}/clean")));

    let upstream = endpoint.trim_start_matches("http://");
    let proxy = FaultProxy::start(upstream, 0.2, 11);
    let log = run(&proxy.url(), &az(&format!("{p}/faulty")));
    let faults = proxy.faults();
    let retried = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    eprintln!(
        "faults injected: {faults:?}; retries: {} by object_store, {} create-only by batchscore",
        retried("backing off"),
        retried("create-only write failed")
    );
    let injected: u64 = faults.values().sum();
    assert!(injected >= 10 && faults.len() >= 4, "too few faults to mean anything: {faults:?}");

    // Identical parts and receipts, the same rows, and `_SUCCESS` naming the same parts.
    let clean = committed_bytes(&endpoint, &format!("{p}/clean/r"));
    let faulty = committed_bytes(&endpoint, &format!("{p}/faulty/r"));
    assert!(!clean.is_empty());
    assert!(clean == faulty, "output after faults differs from the fault-free run ({faults:?})");
    let a = remote_manifest(&endpoint, &format!("{p}/clean/r"));
    let b = remote_manifest(&endpoint, &format!("{p}/faulty/r"));
    assert_eq!(a["parts"], b["parts"]);
    assert_eq!(a["devices"], b["devices"]);
    assert_eq!(check_run(&endpoint, &format!("{p}/faulty/r")).len(), (DEVICES as usize) * ROWS);

    // Reading a registry through faults: every model verifies.
    let verified = expect_at(
        &proxy.url(),
        &["--config", &config, "models", "verify", "--registry", &models],
        0,
    );
    assert!(verified.contains(&format!("{DEVICES} ok, 0 bad")), "{verified}");
}

#[test]
fn concurrent_attempts_of_a_shard_commit_each_part_once() {
    let Some(Remote { endpoint, prefix: p, readings, models, config, _dir }) = remote("attempts")
    else {
        return;
    };
    let args = |out: &str, shard: &str| -> Vec<String> {
        let mut a: Vec<String> = ["--config", &config, "run", "--input", &readings, "--registry"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(
            [&models, "--output", out, "--run-id", "r", "--shard-count", "2"].map(String::from),
        );
        a.extend(["--shard-index", shard, "--threads", "2"].map(String::from));
        a.extend(SMALL_PARTS.map(String::from));
        a
    };
    let out = az(&format!("{p}/out"));
    // Two attempts of shard 0 at once, as Azure Batch may run after losing a node.
    let spawn = || {
        crate::common::command()
            .args(args(&out, "0"))
            .env_remove("RUST_LOG")
            .env("AZURE_STORAGE_USE_EMULATOR", "true")
            .env("AZURITE_BLOB_STORAGE_URL", &endpoint)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let attempts = [spawn(), spawn()];
    for attempt in attempts {
        let output = attempt.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "an attempt failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // How the two attempts shared the work depends on timing; shown for the record.
        eprintln!(
            "{}",
            stdout.lines().filter(|l| l.trim_start().starts_with("units")).collect::<String>()
        );
    }
    let shard1: Vec<String> = args(&out, "1");
    let shard1: Vec<&str> = shard1.iter().map(String::as_str).collect();
    let done = expect_at(&endpoint, &shard1, 0);
    assert!(done.contains("_SUCCESS written"), "{done}");

    // The same bytes as one attempt per shard, each part once, the manifest naming real parts.
    let reference = az(&format!("{p}/reference"));
    for shard in ["0", "1"] {
        let a = args(&reference, shard);
        expect_at(&endpoint, &a.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    }
    let rows = check_run(&endpoint, &format!("{p}/out/r"));
    assert_eq!(rows.len(), (DEVICES as usize) * ROWS);
    assert!(
        committed_bytes(&endpoint, &format!("{p}/out/r"))
            == committed_bytes(&endpoint, &format!("{p}/reference/r"))
    );
}

/// A part's block-list commit that reaches the server but whose answer is lost: object_store
/// commits again, and the run completes with every row. (A fault-injection run once saw the
/// second commit refused with InvalidBlockList, another attempt's late commit having discarded
/// the blocks; the upload then reads the object back and accepts it when it holds exactly the
/// bytes written. Azurite accepts the repeated commit here, so this pins the lost answer, not
/// that race.)
#[test]
fn a_lost_answer_to_a_completed_upload_is_not_a_failure() {
    let Some(Remote { endpoint, prefix: p, readings, models, config, _dir }) = remote("lost")
    else {
        return;
    };
    let proxy =
        FaultProxy::lose_answer_once(endpoint.trim_start_matches("http://"), "comp=blocklist");
    let out = az(&format!("{p}/lost"));
    let mut args = vec!["--config", &config, "run", "--input", &readings];
    args.extend(["--registry", &models, "--output", &out, "--run-id", "r"]);
    args.extend(SMALL_PARTS);
    expect_at(&proxy.url(), &args, 0);
    assert_eq!(proxy.faults().get("ResetAfter"), Some(&1), "{:?}", proxy.log());
    assert_eq!(check_run(&endpoint, &format!("{p}/lost/r")).len(), (DEVICES as usize) * ROWS);
}

#[test]
fn opening_a_registry_costs_one_request_whatever_its_size() {
    let Some(endpoint) = azurite() else { return };
    let p = unique("registry");
    let (_, models) = upload_fixture(&endpoint, &p);
    let proxy = FaultProxy::start(endpoint.trim_start_matches("http://"), 0.0, 1);
    let listed = expect_at(&proxy.url(), &["models", "list", "--registry", &models], 0);
    assert!(listed.contains(&format!("{DEVICES} models")), "{listed}");
    assert_eq!(
        proxy.log(),
        vec![format!("GET /devstoreaccount1/{CONTAINER}/{p}/models/index.json")]
    );

    // Scoring fetches models by pack: the fixture trains in one unit, so its models are one
    // pack, and the run (one unit, one chunk) reads them in one ranged GET.
    proxy.reset_counts();
    let out = az(&format!("{p}/out"));
    expect_at(
        &proxy.url(),
        &["run", "--input", &az(&format!("{p}/readings")), "--registry", &models, "--output", &out],
        0,
    );
    let model_gets = proxy
        .log()
        .into_iter()
        .filter(|l| l.contains("/models/models/") || l.contains("/models/packs/"))
        .collect::<Vec<_>>();
    assert_eq!(model_gets.len(), 1, "{:?}", proxy.log());
    assert!(model_gets[0].starts_with("GET") && model_gets[0].ends_with(".f4.pack"));
}

#[test]
fn permanent_errors_fail_fast_and_never_show_credentials() {
    let Some(endpoint) = azurite() else { return };
    let p = unique("errors");
    let (readings, models) = upload_fixture(&endpoint, &p);
    let proxy = FaultProxy::start(endpoint.trim_start_matches("http://"), 0.0, 1);

    // A wrong SAS token: 403, exit 2 after one request (no retries), the signature hidden.
    let sas = "sv=2021-08-06&ss=b&srt=sco&sp=rl&sig=TopSecretSignature123";
    let out = batchscore_at(
        &proxy.url(),
        &[
            "--storage-option",
            &format!("azure_storage_sas_key={sas}"),
            "models",
            "list",
            "--registry",
            &models,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("TopSecretSignature123"), "{stderr}");
    assert!(stderr.contains(&format!("{models}/index.json")), "{stderr}");
    assert_eq!(proxy.requests(), 1, "a permanent error was retried");

    // A registry URL with nothing there, and a malformed URL: exit 2 naming the URL.
    let missing = az(&format!("{p}/no-such-registry"));
    let text = expect_at(&endpoint, &["models", "list", "--registry", &missing], 2);
    assert!(text.contains(&format!("no model registry at {missing}")), "{text}");
    let text = expect_at(&endpoint, &["models", "list", "--registry", "az://bad.container/x"], 2);
    assert!(text.contains("invalid storage URL `az://bad.container/x`"), "{text}");
    let text =
        expect_at(&endpoint, &["--storage-option", "azure_acount_key=x", "models", "list"], 2);
    assert!(text.contains("azure_acount_key") && !text.contains("=x"), "{text}");

    // The account key given as an option signs requests and is redacted in the manifest.
    let key =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    let out = az(&format!("{p}/out"));
    expect_at(
        &endpoint,
        &[
            "--storage-option",
            &format!("azure_storage_account_key={key}"),
            "run",
            "--input",
            &readings,
            "--registry",
            &models,
            "--output",
            &out,
            "--run-id",
            "k",
        ],
        0,
    );
    let manifest = get_blob(&endpoint, &format!("{p}/out/k/_SUCCESS"));
    let text = String::from_utf8_lossy(&manifest);
    assert!(
        !text.contains(key) && text.contains("\"azure_storage_account_key\": \"***\""),
        "{text}"
    );
}

/// Regression: a storage outage that outlasts the retries while the column chunks of a remote
/// Parquet file over 1 MiB were read exited 4 ("bad data, do not retry"): the reader wrapped
/// the storage error as a Parquet error. It is retry-worthy: exit 75.
#[test]
fn an_outage_while_reading_a_large_remote_file_exits_75() {
    let Some(endpoint) = azurite() else { return };
    let p = unique("outage");
    let dir = tempdir();
    let data = dir.path().join("data");
    let data_s = data.display().to_string();
    // Two devices x 60,000 rows in one file: several MiB, read by range requests.
    expect_code(
        &[
            "generate",
            "--devices",
            "2",
            "--rows-per-device",
            "60000",
            "--rows-per-file",
            "120000",
            "--out",
            &data_s,
        ],
        0,
    );
    let file = data.join("readings/part-00000.parquet");
    assert!(std::fs::metadata(&file).unwrap().len() > 1 << 20, "the file is over 1 MiB");
    let models = dir.path().join("models").display().to_string();
    expect_code(
        &[
            "train",
            "--input",
            &format!("{data_s}/readings"),
            "--registry",
            &models,
            "--n-estimators",
            "5",
        ],
        0,
    );
    blob_py(
        &endpoint,
        &["put-dir", &format!("{data_s}/readings"), CONTAINER, &format!("{p}/readings")],
    );
    blob_py(&endpoint, &["put-dir", &models, CONTAINER, &format!("{p}/models")]);
    let config = dir.path().join("storage.toml");
    std::fs::write(
        &config,
        "[storage]\nmax_retries = 2\ninitial_backoff = \"10ms\"\nmax_backoff = \"50ms\"\n",
    )
    .unwrap();
    // The footer read passes; every read of the file's column chunks meets the outage.
    let proxy = FaultProxy::outage_after(
        endpoint.trim_start_matches("http://"),
        &format!("{p}/readings/part-00000.parquet"),
        1,
    );
    let out = batchscore_at(
        &proxy.url(),
        &[
            "--config",
            &config.display().to_string(),
            "run",
            "--input",
            &az(&format!("{p}/readings")),
            "--registry",
            &az(&format!("{p}/models")),
            "--output",
            &az(&format!("{p}/out")),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("part-00000.parquet") && stderr.contains("503"), "{stderr}");
    assert!(proxy.faults().get("Status503").is_some_and(|n| *n >= 3), "{:?}", proxy.faults());
}
