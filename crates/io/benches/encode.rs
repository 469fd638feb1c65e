//! Criterion bench of the write path: encoding a scored part as Parquet with each codec and
//! statistics level, and decoding it again.
//!
//! `BATCHSCORE_BENCH_PART=FILE cargo bench -p batchscore-io --bench encode` re-encodes the rows
//! of a scored part that `batchscore run` wrote (the figures in docs/benchmarks.md, "The write
//! path"); without it, a synthetic part of the same shape (262,144 rows of 16 devices: device,
//! timestamp, 8 sensors, score, decision, is_anomaly, model_version, run_id). It prints each
//! variant's size, and with `BATCHSCORE_BENCH_OUT=DIR` writes the variants there, for other
//! readers (pyarrow, DuckDB) to check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use batchscore_io::{
    ParquetCodec, ParquetStatistics, WriteOptions, decode_parquet, encode_parquet,
};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// The default (`WriteOptions::default()`) is zstd level 1 with page statistics.
const VARIANTS: [(&str, ParquetCodec, ParquetStatistics); 7] = [
    ("zstd3-page", ParquetCodec::Zstd(3), ParquetStatistics::Page),
    ("zstd3-chunk", ParquetCodec::Zstd(3), ParquetStatistics::Chunk),
    ("zstd1-chunk", ParquetCodec::Zstd(1), ParquetStatistics::Chunk),
    ("zstd1-page", ParquetCodec::Zstd(1), ParquetStatistics::Page),
    ("zstd6-page", ParquetCodec::Zstd(6), ParquetStatistics::Page),
    ("snappy-page", ParquetCodec::Snappy, ParquetStatistics::Page),
    ("none-page", ParquetCodec::Uncompressed, ParquetStatistics::Page),
];

/// A deterministic stand-in for a scored part: smooth sensor signals with noise, as the sample
/// generator makes them.
fn synthetic() -> Vec<RecordBatch> {
    let (devices, per_device) = (16i64, 16_384usize);
    let rows = devices as usize * per_device;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let device: Vec<i64> = (0..rows).map(|i| (i / per_device) as i64).collect();
    let time: Vec<i64> =
        (0..rows).map(|i| 1_767_225_600_000_000 + (i % per_device) as i64 * 5_000_000).collect();
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(device.clone())),
        Arc::new(TimestampMicrosecondArray::from(time).with_timezone("UTC")),
    ];
    let mut fields =
        vec![Field::new("device_id", DataType::Int64, false), Field::new("timestamp", utc, false)];
    for s in 0..8 {
        let values: Vec<f64> = (0..rows)
            .map(|i| 20.0 + 5.0 * ((i % per_device) as f64 / 720.0 + f64::from(s)).sin() + noise())
            .collect();
        columns.push(Arc::new(Float64Array::from(values)));
        fields.push(Field::new(format!("sensor_{s}"), DataType::Float64, true));
    }
    let score: Vec<f64> = (0..rows).map(|_| -0.45 + 0.1 * noise()).collect();
    let decision: Vec<f64> = score.iter().map(|s| s + 0.5).collect();
    let anomaly: Vec<bool> = decision.iter().map(|d| *d < 0.0).collect();
    let versions: Vec<String> = device.iter().map(|d| format!("{:016x}", d * 7_919)).collect();
    columns.push(Arc::new(Float64Array::from(score)));
    columns.push(Arc::new(Float64Array::from(decision)));
    columns.push(Arc::new(BooleanArray::from(anomaly)));
    columns.push(Arc::new(StringArray::from(versions)));
    columns.push(Arc::new(StringArray::from(vec!["run-0123456789abcdef"; rows])));
    for (name, t) in [
        ("score", DataType::Float64),
        ("decision", DataType::Float64),
        ("is_anomaly", DataType::Boolean),
        ("model_version", DataType::Utf8),
        ("run_id", DataType::Utf8),
    ] {
        fields.push(Field::new(name, t, false));
    }
    vec![RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()]
}

fn bench(c: &mut Criterion) {
    let batches = match std::env::var_os("BATCHSCORE_BENCH_PART") {
        Some(path) => {
            let bytes = Bytes::from(std::fs::read(&path).unwrap());
            decode_parquet(&path.to_string_lossy(), bytes).unwrap()
        }
        None => synthetic(),
    };
    let schema = batches[0].schema();
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let out = std::env::var_os("BATCHSCORE_BENCH_OUT").map(std::path::PathBuf::from);
    let mut encode = c.benchmark_group("parquet_encode");
    encode.sample_size(10).throughput(Throughput::Elements(rows as u64));
    let mut files = Vec::new();
    for (name, codec, statistics) in VARIANTS {
        let options = WriteOptions { codec, statistics, ..WriteOptions::default() };
        let bytes = encode_parquet(&schema, &batches, &options).unwrap();
        let per_row = bytes.len() as f64 / rows as f64;
        eprintln!("{name}: {} bytes for {rows} rows ({per_row:.2} B/row)", bytes.len());
        if let Some(dir) = &out {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(format!("{name}.parquet")), &bytes).unwrap();
        }
        encode.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| encode_parquet(&schema, &batches, &options).unwrap())
        });
        files.push((name, bytes));
    }
    encode.finish();
    let mut decode = c.benchmark_group("parquet_decode");
    decode.sample_size(10).throughput(Throughput::Elements(rows as u64));
    for (name, bytes) in files {
        decode.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| decode_parquet("bench", bytes.clone()).unwrap())
        });
    }
    decode.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
