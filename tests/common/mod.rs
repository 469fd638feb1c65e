//! Shared fixture and helpers: one generated dataset and trained registry per test process.

pub mod azurite;
pub mod proxy;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub const DEVICES: u32 = 30;
pub const ROWS: usize = 600;
/// Part-size flags that split the fixture (18,000 rows in 1,500-row groups) into many units.
pub const SMALL_PARTS: [&str; 4] = ["--min-part-rows", "1000", "--max-part-rows", "3000"];

/// The binary, started in an empty directory of its own (no `batchscore.toml` to discover,
/// such as the repository's own), without the caller's log or config settings.
pub fn command() -> Command {
    static NEUTRAL: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = NEUTRAL.get_or_init(|| tempfile::tempdir().expect("a temporary directory"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_batchscore"));
    command
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("BATCHSCORE_CONFIG")
        .env_remove("BATCHSCORE_NO_CONFIG");
    command
}

/// Runs the binary with `args`; logs are quiet unless asked.
pub fn batchscore(args: &[&str]) -> Output {
    command().args(args).output().expect("the binary runs")
}

/// Runs the binary and requires exit code `code`; returns stdout and stderr.
pub fn expect_code(args: &[&str], code: i32) -> String {
    require_code(batchscore(args), args, code)
}

/// Requires exit code `code` of a finished `batchscore args`; returns stdout and stderr.
pub fn require_code(out: Output, args: &[&str], code: i32) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(code),
        "batchscore {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout + &stderr
}

/// `batchscore run --input I --registry R --output O EXTRA...`, requiring exit code `code`;
/// returns stdout and stderr.
pub fn run_job(input: &str, registry: &str, output: &str, extra: &[&str], code: i32) -> String {
    let mut args = vec!["run", "--input", input, "--registry", registry, "--output", output];
    args.extend_from_slice(extra);
    expect_code(&args, code)
}

/// A generated dataset with trained models, shared by the tests of this process.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Fixture {
    pub fn data(&self) -> String {
        self.root.join("data").display().to_string()
    }
    pub fn readings(&self) -> String {
        self.root.join("data/readings").display().to_string()
    }
    pub fn registry(&self) -> String {
        self.root.join("registry").display().to_string()
    }
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let f = Fixture { _dir: dir, root };
        // Small row groups so that units, shards and pruning have something to split.
        expect_code(
            &[
                "generate",
                "--devices",
                &DEVICES.to_string(),
                "--rows-per-device",
                &ROWS.to_string(),
                "--seed",
                "7",
                "--row-group-rows",
                "1500",
                "--rows-per-file",
                "6000",
                "--out",
                &f.data(),
            ],
            0,
        );
        expect_code(
            &["train", "--input", &f.readings(), "--registry", &f.registry(), "--seed", "3"],
            0,
        );
        f
    })
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The folder of a run's other tables and report: `OUTPUT/_runs/RUN_ID/` for `OUTPUT/RUN_ID`.
pub fn run_tables(run: &Path) -> PathBuf {
    run.parent().unwrap().join("_runs").join(run.file_name().unwrap())
}

/// Reads every batch of a Parquet file.
pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// The single run directory under `output` (`_runs/`, the runs' tables, is not one).
pub fn run_dir(output: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(output)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('_')))
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.pop().unwrap()
}

/// The `_SUCCESS` manifest of a run directory.
pub fn manifest(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("_SUCCESS")).expect("_SUCCESS exists")).unwrap()
}

/// A scored row: (device, timestamp) -> (score bits, decision bits, is_anomaly).
pub type Scored = HashMap<(i64, i64), (u64, u64, bool)>;

/// Every scored row of a completed run, following the manifest (not a directory listing);
/// fails if any row appears twice.
pub fn scored_rows(run: &Path) -> Scored {
    scored_rows_from(&manifest(run), |part| std::fs::read(run.join(part)).unwrap())
}

/// Every scored row of the parts a `_SUCCESS` manifest names, read by `read(part path)`.
pub fn scored_rows_from(m: &serde_json::Value, read: impl Fn(&str) -> Vec<u8>) -> Scored {
    let mut rows = Scored::new();
    for part in m["parts"].as_array().unwrap() {
        let bytes = bytes::Bytes::from(read(part["path"].as_str().unwrap()));
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
        for batch in reader.map(|b| b.unwrap()) {
            let device = batch.column_by_name("device_id").unwrap().as_primitive::<Int64Type>();
            let ts = batch
                .column_by_name("timestamp")
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>();
            let score = batch.column_by_name("score").unwrap().as_primitive::<Float64Type>();
            let decision = batch.column_by_name("decision").unwrap().as_primitive::<Float64Type>();
            let anomaly = batch.column_by_name("is_anomaly").unwrap().as_boolean();
            for i in 0..batch.num_rows() {
                let key = (device.value(i), ts.value(i));
                let value =
                    (score.value(i).to_bits(), decision.value(i).to_bits(), anomaly.value(i));
                assert!(rows.insert(key, value).is_none(), "row {key:?} written twice");
            }
        }
    }
    rows
}

/// Ground-truth labels: (device, timestamp) -> is_anomaly.
pub fn labels(data: &Path) -> HashMap<(i64, i64), bool> {
    let mut out = HashMap::new();
    for batch in read_parquet(&data.join("labels.parquet")) {
        let device = batch.column_by_name("device_id").unwrap().as_primitive::<Int64Type>();
        let ts =
            batch.column_by_name("timestamp").unwrap().as_primitive::<TimestampMicrosecondType>();
        let label = batch.column_by_name("is_anomaly").unwrap().as_boolean();
        for i in 0..batch.num_rows() {
            assert!(!device.is_null(i));
            out.insert((device.value(i), ts.value(i)), label.value(i));
        }
    }
    out
}

/// Writes `batch` as a Parquet file at `path`, as a hostile or foreign writer would leave it.
pub fn write_parquet(path: &Path, batch: &RecordBatch) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
}

/// All files of a run directory with their bytes, by relative path.
pub fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// ROC-AUC of `-score` against the generated labels, over every row of a completed run:
/// the chance that a random anomaly scores lower than a random normal row (ties count half).
pub fn roc_auc(run: &Path, data: &Path) -> f64 {
    let rows = scored_rows(run);
    let labels = labels(data);
    assert_eq!(rows.len(), labels.len());
    let mut scored: Vec<(f64, bool)> =
        rows.iter().map(|(k, (s, _, _))| (-f64::from_bits(*s), labels[k])).collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = scored.iter().filter(|(_, l)| *l).count() as f64;
    let negatives = scored.len() as f64 - positives;
    assert!(positives > 0.0);
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < scored.len() {
        let mut j = i;
        while j < scored.len() && scored[j].0 == scored[i].0 {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0;
        rank_sum += avg_rank * scored[i..j].iter().filter(|(_, l)| *l).count() as f64;
        i = j;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// Flips a byte in the middle of the model file of `key` in the registry at `registry` (a lone
/// object, or its range of a pack); returns the object's path relative to the registry.
pub fn corrupt_model(registry: &Path, key: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(registry.join("index.json")).unwrap()).unwrap();
    let entry = index["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == key)
        .unwrap_or_else(|| panic!("no model {key} in {index}"));
    let path = entry["path"].as_str().unwrap().to_string();
    let at = entry["offset"].as_u64().unwrap_or(0) + entry["size"].as_u64().unwrap() / 2;
    let file = registry.join(&path);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[at as usize] ^= 0x5a;
    std::fs::write(&file, &bytes).unwrap();
    path
}
