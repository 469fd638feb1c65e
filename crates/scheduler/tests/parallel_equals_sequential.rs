//! Property: whatever the layout, thread count and sharding, a run writes exactly the rows a
//! plain sequential reference computes (read everything, score each device with its model).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use batchscore_detectors::Detector;
use batchscore_io::{Location, Storage, decode_parquet, hive_value};
use batchscore_registry::{ModelKey, Registry};
use batchscore_scheduler::{DeviceSelection, RunSpec};
use batchscore_synth::{GenerateSpec, Partitioning, generate};
use proptest::prelude::*;

type Rows = BTreeMap<(i64, i64), common::Outcome>;

/// Reads every input file whole and scores each device's rows, sorted by time, in one call.
fn reference(input: &Location, registry: &Registry, selection: &DeviceSelection) -> Rows {
    let mut per_device: BTreeMap<i64, Vec<(i64, Vec<f64>)>> = BTreeMap::new();
    let mut sensors: Vec<String> = Vec::new();
    for entry in input.list("").unwrap() {
        let hive = hive_value(&entry.path, "device_id").map(|d| d.parse::<i64>().unwrap());
        for batch in decode_parquet(&entry.path, input.get(&entry.path).unwrap()).unwrap() {
            let schema = batch.schema();
            sensors = schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| n != "device_id" && n != "timestamp")
                .collect();
            let ts = batch
                .column_by_name("timestamp")
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>();
            for row in 0..batch.num_rows() {
                let device = match hive {
                    Some(d) => d,
                    None => batch
                        .column_by_name("device_id")
                        .unwrap()
                        .as_primitive::<Int64Type>()
                        .value(row),
                };
                if !selection.contains(device) {
                    continue;
                }
                let values = sensors
                    .iter()
                    .map(|s| {
                        batch.column_by_name(s).unwrap().as_primitive::<Float64Type>().value(row)
                    })
                    .collect();
                per_device.entry(device).or_default().push((ts.value(row), values));
            }
        }
    }
    let mut out = Rows::new();
    for (device, mut rows) in per_device {
        rows.sort_by_key(|(t, _)| *t);
        let model = registry.load(&ModelKey::device(device)).unwrap();
        let columns: Vec<Vec<f64>> = model
            .meta
            .features
            .iter()
            .map(|f| {
                let i = sensors.iter().position(|s| s == f).unwrap();
                rows.iter().map(|(_, v)| v[i]).collect()
            })
            .collect();
        let refs: Vec<&[f64]> = columns.iter().map(Vec::as_slice).collect();
        let scored = model.detector.score(&refs).unwrap();
        for (i, (t, _)) in rows.iter().enumerate() {
            out.insert(
                (device, *t),
                (scored.score[i].to_bits(), scored.decision[i].to_bits(), scored.is_anomaly[i]),
            );
        }
    }
    out
}

/// Reads a completed run's output through its `_SUCCESS` manifest; fails on a row written
/// twice.
fn output_rows(out: &Location, run_id: &str) -> Rows {
    let mut rows = Rows::new();
    for batch in common::run_batches(out, run_id) {
        let device = batch.column_by_name("device_id").unwrap().as_primitive::<Int64Type>();
        let ts =
            batch.column_by_name("timestamp").unwrap().as_primitive::<TimestampMicrosecondType>();
        for (i, outcome) in common::outcomes(&batch).into_iter().enumerate() {
            assert!(!device.is_null(i));
            let previous = rows.insert((device.value(i), ts.value(i)), outcome);
            assert!(previous.is_none(), "row written twice");
        }
    }
    rows
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn parallel_sharded_run_equals_sequential_reference(
        devices in 1u32..7,
        rows_per_device in 10usize..120,
        row_group_rows in 5usize..150,
        rows_per_file in 30usize..400,
        by_device in any::<bool>(),
        threads in 1usize..4,
        shards in 1u32..4,
        min_part_rows in 1u64..200,
        chunk_rows in prop_oneof![1usize..80, Just(usize::MAX)],
        selection_mask in 1u8..=255,
        seed in 0u64..1000,
    ) {
        let storage = Storage::new().unwrap();
        let root = storage.open(&format!("memory://prop{seed}")).unwrap();
        let spec = GenerateSpec {
            devices,
            sensors: 3,
            rows_per_device,
            seed,
            partitioning: if by_device { Partitioning::Device } else { Partitioning::None },
            rows_per_file,
            row_group_rows,
            anomaly_rate: 0.02,
            ..GenerateSpec::default()
        };
        generate(&spec, &root).unwrap();
        let input = root.join("readings").unwrap();
        let registry_location = root.join("registry").unwrap();
        common::train_forests(&input, &registry_location, seed, 500_000);

        let chosen: Vec<String> = (0..devices).filter(|d| selection_mask & (1 << (d % 8)) != 0).map(|d| d.to_string()).collect();
        prop_assume!(!chosen.is_empty());
        let selection = DeviceSelection::parse(&chosen.join(",")).unwrap();
        let output = root.join("out").unwrap();
        let spec = RunSpec {
            selection: selection.clone(),
            threads,
            min_part_rows,
            max_part_rows: min_part_rows * 3,
            chunk_rows,
            ..common::run_spec(&input, &registry_location, &output)
        };
        let run_id = common::run_shards(&spec, shards);
        let registry = Registry::open(registry_location).unwrap();
        let expected = reference(&input, &registry, &selection);
        prop_assert_eq!(expected.len(), chosen.len() * rows_per_device);
        prop_assert_eq!(output_rows(&output, &run_id), expected);
    }
}
