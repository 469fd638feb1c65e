//! What crossing between arrow-rs and polars costs, next to the aggregation it serves.
//!
//! `cargo bench -p batchscore-features --bench exchange` times, on one unit of 1,000,000 long
//! readings (device, timestamp, sensor, value: 200 devices x 5 sensors x 1,000 readings at
//! 5 s), the crossing to polars (`to_polars`), the crossing back of a frame of the same size
//! (`to_arrow`), and the whole per-unit aggregation (`Aggregation::apply`: both crossings plus
//! 1-minute windows with five statistics).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use batchscore_features::exchange::{to_arrow, to_polars};
use batchscore_features::{AggregateConfig, Aggregation, Stat};
use batchscore_scheduler::{TableLayout, UnitTransform};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const DEVICES: i64 = 200;
const SENSORS: [&str; 5] = ["humidity", "pressure", "rpm", "temperature", "vibration"];
const READINGS: i64 = 1_000;

/// Readings sorted by device, sensor and time, as a unit hands them to a transform.
fn unit() -> RecordBatch {
    let (mut device, mut ts, mut sensor, mut value) = (vec![], vec![], vec![], vec![]);
    for d in 0..DEVICES {
        for (s, name) in SENSORS.iter().enumerate() {
            for i in 0..READINGS {
                device.push(d);
                ts.push(1_767_225_600_000_000 + i * 5_000_000);
                sensor.push(*name);
                value.push(((d * 7 + s as i64 * 13 + i) % 101) as f64 * 0.5);
            }
        }
    }
    let schema = Schema::new(vec![
        Field::new("device", DataType::Int64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), false),
        Field::new("sensor", DataType::Utf8, false),
        Field::new("value", DataType::Float64, true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from(device)),
            Arc::new(TimestampMicrosecondArray::from(ts)),
            Arc::new(StringArray::from(sensor)),
            Arc::new(Float64Array::from(value)),
        ],
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let batch = unit();
    let rows = batch.num_rows() as u64;
    let layout = TableLayout {
        device: "device".into(),
        timestamp: "ts".into(),
        sensor: Some("sensor".into()),
        values: vec!["value".into()],
    };
    let config = AggregateConfig {
        every: Some("1m".into()),
        stats: vec![Stat::Count, Stat::Mean, Stat::Std, Stat::Min, Stat::Max],
        ..AggregateConfig::default()
    };
    let aggregation = Aggregation::new(&config, None).unwrap();
    let mut group = c.benchmark_group("unit_of_1m_long_readings");
    group.throughput(Throughput::Elements(rows));
    group.sample_size(20);
    group.bench_function("to_polars", |b| b.iter(|| to_polars(&batch).unwrap()));
    let frame = to_polars(&batch).unwrap();
    group.bench_function("to_arrow", |b| b.iter(|| to_arrow(&mut frame.clone()).unwrap()));
    group.bench_function("aggregate_1m_5_stats", |b| {
        b.iter(|| aggregation.apply(batch.clone(), &layout).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
