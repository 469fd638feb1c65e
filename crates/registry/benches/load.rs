//! Criterion benches of loading a model: what scoring pays per model key.
//!
//! `cargo bench -p batchscore-registry --bench load` times, for a forest of 100 trees of 256
//! samples over 8 features trained by batchscore (with its drift reference):
//! `model_load_100_trees` (the scoring path: fetch from a store, file checksum, bincode,
//! structural checks, one scoring layout), `model_decode_100_trees` (with the content-hash
//! recomputation `models verify` adds), and the file checksum alone with XXH3 (every load) and
//! SHA-256 (the registry index's, checked by `models verify`; every load's before format
//! version 4).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use batchscore_detectors::IsolationForestParams;
use batchscore_registry::{
    DriftReference, FeatureSummary, Model, ModelKey, Registry, TrainingInfo,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

fn data(rows: usize, features: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..features).map(|_| (0..rows).map(|_| rng.random::<f64>() * 10.0).collect()).collect()
}

fn model(key: i64) -> Model {
    let train = data(2000, 8, 1);
    let columns: Vec<&[f64]> = train.iter().map(Vec::as_slice).collect();
    let params = IsolationForestParams { seed: 7, ..Default::default() }.check().unwrap();
    let forest = params.fit(&columns).unwrap();
    let summaries = columns.iter().map(|c| FeatureSummary::of(c)).collect();
    Model::isolation_forest(
        ModelKey::device(key),
        params.params(),
        (0..8).map(|i| format!("f{i}")).collect(),
        TrainingInfo { rows: 2000, from_us: None, to_us: None, summaries },
        forest,
        "2026-01-01T00:00:00Z".into(),
    )
    .unwrap()
    .with_drift(DriftReference::of(&columns))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let model = model(1);
    let bytes = model.encode().unwrap();
    eprintln!("model file, 100 trees: {} bytes", bytes.len());

    // The scoring path's load: fetch from the store, checksum, structural checks, no content
    // re-hashing (the version the file states is checked against the index instead).
    let storage = batchscore_io::Storage::new().unwrap();
    let mut registry = Registry::open(storage.open("memory://bench/registry").unwrap()).unwrap();
    let entry = registry.write_model(&model).unwrap();
    registry.commit(vec![entry]).unwrap();
    let key = model.meta.key.clone();
    c.bench_function("model_load_100_trees", |b| b.iter(|| registry.load(&key).unwrap()));
    c.bench_function("model_decode_100_trees", |b| {
        b.iter(|| Model::decode("bench", &bytes).unwrap())
    });

    let mut group = c.benchmark_group("file_checksum");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("xxh3", |b| b.iter(|| xxhash_rust::xxh3::xxh3_64(&bytes)));
    group.bench_function("sha256", |b| b.iter(|| Sha256::digest(&bytes)));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
