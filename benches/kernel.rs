//! Criterion benches of the hot paths: IsolationForest scoring and fitting.
//!
//! `cargo bench --bench kernel` prints rows/s (throughput) for scoring 100 trees of 256 samples
//! over 8 features, the reference shape of the performance targets (with the kernel scoring
//! picks, then with each kernel this CPU runs), the same rows counted into the drift bins (what
//! drift adds to scoring) and the time to fit such a forest. Loading a model is benched in the
//! registry crate (`cargo bench -p batchscore-registry --bench load`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use batchscore_detectors::{Detector, ForestKernel, IsolationForestParams};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn data(rows: usize, features: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..features).map(|_| (0..rows).map(|_| rng.random::<f64>() * 10.0).collect()).collect()
}

fn refs(columns: &[Vec<f64>]) -> Vec<&[f64]> {
    columns.iter().map(Vec::as_slice).collect()
}

fn bench(c: &mut Criterion) {
    let train = data(2000, 8, 1);
    let params = IsolationForestParams { seed: 7, ..Default::default() }.check().unwrap();
    let forest = params.fit(&refs(&train)).unwrap();

    // Every kernel this CPU runs; the plain `iforest_score` names the one scoring picks.
    let mut group = c.benchmark_group("iforest_score");
    // 1 and 3 rows: what a real-time request brings per device (a partial lane group); 200: a
    // device's series in configuration (c).
    for rows in [1usize, 3, 200, 1_024, 65_536] {
        let batch = data(rows, 8, 2);
        let columns = refs(&batch);
        let mut out = vec![0.0; rows];
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_with_input(BenchmarkId::new("100x256x8", rows), &rows, |b, _| {
            b.iter(|| forest.score_samples_into(&columns, &mut out).unwrap())
        });
        for kernel in [ForestKernel::Portable, ForestKernel::Avx512] {
            if !kernel.is_available() {
                continue;
            }
            let id = BenchmarkId::new(format!("{}/100x256x8", kernel.name()), rows);
            group.bench_with_input(id, &rows, |b, _| {
                b.iter(|| forest.score_samples_with(kernel, &columns, &mut out).unwrap())
            });
        }
    }
    group.finish();

    // Drift: the same 65,536 rows of 8 features counted into each feature's training bins.
    let reference = batchscore_registry::DriftReference::of(&refs(&train));
    let batch = data(65_536, 8, 2);
    let mut group = c.benchmark_group("drift_observe");
    group.throughput(Throughput::Elements(65_536));
    group.bench_function("8_features/65536", |b| {
        b.iter(|| {
            reference
                .features
                .iter()
                .zip(&batch)
                .map(|(bins, values)| bins.as_ref().unwrap().observe(values).rows())
                .sum::<u64>()
        })
    });
    // The same rows as 200-row series, as in configuration (c): the per-call cost shows.
    group.bench_function("8_features/200x327", |b| {
        b.iter(|| {
            let mut rows = 0;
            for (bins, values) in reference.features.iter().zip(&batch) {
                for series in values.chunks(200) {
                    rows += bins.as_ref().unwrap().observe(series).rows();
                }
            }
            rows
        })
    });
    group.finish();

    c.bench_function("iforest_fit_2000x8", |b| b.iter(|| params.fit(&refs(&train)).unwrap()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
