//! Azurite helpers: the emulator started by `scripts/azurite/with-azurite.sh`, unique prefixes,
//! and the independent client `scripts/azurite/blob.py`.

use std::path::Path;
use std::process::{Command, Output};

/// The container `with-azurite.sh` creates.
pub const CONTAINER: &str = "batchscore-test";

/// The emulator's URL, or `None` (and a note) when the tests run without it.
///
/// `scripts/test.sh` always starts Azurite and sets `BATCHSCORE_TEST_AZURITE=1`; with that set,
/// a missing emulator fails the test instead of skipping it.
pub fn azurite() -> Option<String> {
    let url = std::env::var("AZURITE_BLOB_STORAGE_URL").ok();
    if std::env::var("BATCHSCORE_TEST_AZURITE").is_ok_and(|v| v == "1") {
        return Some(url.expect("BATCHSCORE_TEST_AZURITE=1 but AZURITE_BLOB_STORAGE_URL is unset"));
    }
    eprintln!(
        "skipped: Azurite is not running (use scripts/azurite/with-azurite.sh or scripts/test.sh)"
    );
    None
}

/// A prefix no other test (or earlier run) uses.
pub fn unique(name: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// `az://CONTAINER/prefix`.
pub fn az(prefix: &str) -> String {
    format!("az://{CONTAINER}/{prefix}")
}

/// The binary, pointed at the emulator (or a proxy in front of it) at `endpoint`.
pub fn batchscore_at(endpoint: &str, args: &[&str]) -> Output {
    crate::common::command()
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("BATCHSCORE_CONFIG")
        .env("AZURE_STORAGE_USE_EMULATOR", "true")
        .env("AZURITE_BLOB_STORAGE_URL", endpoint)
        .output()
        .expect("the binary runs")
}

/// Like [`batchscore_at`], requiring exit code `code`; returns stdout and stderr.
pub fn expect_at(endpoint: &str, args: &[&str], code: i32) -> String {
    super::require_code(batchscore_at(endpoint, args), args, code)
}

/// Runs `scripts/azurite/blob.py` (the independent REST client) against `endpoint`.
pub fn blob_py(endpoint: &str, args: &[&str]) -> Vec<u8> {
    let python = std::env::var("BATCHSCORE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/azurite/blob.py");
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .env("AZURITE_BLOB_STORAGE_URL", endpoint)
        .output()
        .expect("python runs");
    assert!(out.status.success(), "blob.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Blob names and sizes under `prefix`, through the Blob REST listing.
pub fn list_blobs(endpoint: &str, prefix: &str) -> Vec<(String, u64)> {
    let out = blob_py(endpoint, &["list", CONTAINER, prefix]);
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["type"], "BlockBlob");
            (v["name"].as_str().unwrap().to_string(), v["size"].as_u64().unwrap())
        })
        .collect()
}

/// One blob's bytes, through the independent client.
pub fn get_blob(endpoint: &str, name: &str) -> Vec<u8> {
    blob_py(endpoint, &["get", CONTAINER, name])
}
