//! Property: for long-layout readings (CSV or Parquet), whatever the threads, shards, part sizes
//! and sensor selection, a run writes exactly the rows a plain sequential reference computes:
//! every selected (device, sensor) series scored by its own model, each row once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimestampMicrosecondType};
use batchscore_detectors::Detector;
use batchscore_io::{Location, Storage, decode_parquet};
use batchscore_registry::{ModelKey, Registry};
use batchscore_scheduler::{DeviceSelection, RunSpec, SensorSelection};
use batchscore_synth::{FileFormat, GenerateSpec, Layout, Partitioning, generate, sensor_names};
use proptest::prelude::*;

/// `(device, sensor, timestamp)` -> (score bits, decision bits, is_anomaly).
type Rows = BTreeMap<(i64, String, i64), common::Outcome>;

fn text(batch: &arrow::array::RecordBatch, name: &str) -> Vec<String> {
    let column =
        arrow::compute::cast(batch.column_by_name(name).unwrap(), &DataType::Utf8).unwrap();
    column.as_string::<i32>().iter().map(|s| s.unwrap().to_string()).collect()
}

/// Reads the Parquet copy of the readings whole and scores each selected series in one call.
fn reference(
    input: &Location,
    registry: &Registry,
    devices: &DeviceSelection,
    sensors: &SensorSelection,
) -> Rows {
    let mut series: BTreeMap<(i64, String), Vec<(i64, f64)>> = BTreeMap::new();
    for entry in input.list("").unwrap() {
        for batch in decode_parquet(&entry.path, input.get(&entry.path).unwrap()).unwrap() {
            let device = batch.column_by_name("device").unwrap().as_primitive::<Int64Type>();
            let ts = batch
                .column_by_name("timestamp")
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>();
            let value = batch.column_by_name("value").unwrap().as_primitive::<Float64Type>();
            let sensor = text(&batch, "sensor");
            for (row, name) in sensor.into_iter().enumerate() {
                if devices.contains(device.value(row)) && sensors.contains(&name) {
                    series
                        .entry((device.value(row), name))
                        .or_default()
                        .push((ts.value(row), value.value(row)));
                }
            }
        }
    }
    let mut out = Rows::new();
    for ((device, sensor), mut rows) in series {
        rows.sort_by_key(|(t, _)| *t);
        let model = registry.load(&ModelKey::series(device, &sensor).unwrap()).unwrap();
        let values: Vec<f64> = rows.iter().map(|(_, v)| *v).collect();
        let scored = model.detector.score(&[&values]).unwrap();
        for (i, (t, _)) in rows.iter().enumerate() {
            let bits = (scored.score[i].to_bits(), scored.decision[i].to_bits());
            out.insert((device, sensor.clone(), *t), (bits.0, bits.1, scored.is_anomaly[i]));
        }
    }
    out
}

/// A completed run's rows, through its `_SUCCESS` manifest; fails on a row written twice.
fn output_rows(out: &Location, run_id: &str) -> Rows {
    let mut rows = Rows::new();
    for batch in common::run_batches(out, run_id) {
        let device = batch.column_by_name("device").unwrap().as_primitive::<Int64Type>();
        let ts =
            batch.column_by_name("timestamp").unwrap().as_primitive::<TimestampMicrosecondType>();
        let sensors = text(&batch, "sensor").into_iter();
        for (i, (name, outcome)) in sensors.zip(common::outcomes(&batch)).enumerate() {
            let key = (device.value(i), name, ts.value(i));
            assert!(rows.insert(key, outcome).is_none(), "row written twice");
        }
    }
    rows
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    #[test]
    fn long_layout_run_equals_sequential_reference(
        devices in 1u32..5,
        sensors in 1usize..4,
        rows_per_device in 5usize..60,
        csv in any::<bool>(),
        row_group_rows in 5usize..100,
        rows_per_file in 20usize..300,
        threads in 1usize..4,
        shards in 1u32..4,
        min_part_rows in 1u64..150,
        chunk_rows in prop_oneof![1usize..80, Just(usize::MAX)],
        sensor_mask in 1u8..=7,
        device_mask in 1u8..=15,
        seed in 0u64..1000,
    ) {
        let storage = Storage::new().unwrap();
        let root = storage.open(&format!("memory://long{seed}-{csv}")).unwrap();
        let spec = GenerateSpec {
            devices,
            sensors,
            rows_per_device,
            seed,
            partitioning: Partitioning::None,
            layout: Layout::Long,
            format: if csv { FileFormat::Csv } else { FileFormat::Parquet },
            rows_per_file,
            row_group_rows,
            ..GenerateSpec::default()
        };
        generate(&spec, &root.join("input").unwrap()).unwrap();
        // The same readings as Parquet, for the reference to read independently.
        let copy = GenerateSpec { format: FileFormat::Parquet, ..spec.clone() };
        generate(&copy, &root.join("copy").unwrap()).unwrap();
        let input = root.join("input/readings").unwrap();
        let registry_location = root.join("registry").unwrap();
        common::train_forests(&input, &registry_location, seed, 100);
        let registry = Registry::open(registry_location.clone()).unwrap();
        prop_assert_eq!(registry.len(), devices as usize * sensors);

        let names = sensor_names(sensors);
        let chosen_sensors: Vec<&str> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| sensor_mask & (1 << i) != 0)
            .map(|(_, n)| n.as_str())
            .collect();
        let sensor_selection = if chosen_sensors.is_empty() {
            SensorSelection::All
        } else {
            SensorSelection::parse(&chosen_sensors.join(",")).unwrap()
        };
        let chosen_devices: Vec<String> =
            (0..4).filter(|d| device_mask & (1 << d) != 0).map(|d: i64| d.to_string()).collect();
        let selection = DeviceSelection::parse(&chosen_devices.join(",")).unwrap();
        let output = root.join("out").unwrap();
        let spec = RunSpec {
            selection: selection.clone(),
            sensors: sensor_selection.clone(),
            threads,
            min_part_rows,
            max_part_rows: min_part_rows * 3,
            chunk_rows,
            ..common::run_spec(&input, &registry_location, &output)
        };
        let run_id = common::run_shards(&spec, shards);
        let expected =
            reference(&root.join("copy/readings").unwrap(), &registry, &selection, &sensor_selection);
        let got = output_rows(&output, &run_id);
        prop_assert!(!expected.is_empty() || devices < 4);
        prop_assert_eq!(got, expected);
    }
}
