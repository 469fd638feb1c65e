//! Property: a device's model does not depend on how training is cut into units or threads,
//! including devices whose rows straddle units.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use batchscore_detectors::IsolationForestParams;
use batchscore_io::Storage;
use batchscore_registry::Registry;
use batchscore_scheduler::{
    DeviceSelection, InputColumns, NoProgress, SensorSelection, TimeWindow, TrainParams, TrainSpec,
    train,
};
use batchscore_synth::{GenerateSpec, Partitioning, generate};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn models_are_the_same_whatever_the_unit_size(
        devices in 2u32..6,
        rows_per_device in 20usize..90,
        row_group_rows in 7usize..60,
        unit_rows in 1u64..200,
        threads in 1usize..4,
        by_device in any::<bool>(),
        seed in 0u64..100,
    ) {
        let storage = Storage::new().unwrap();
        let root = storage.open(&format!("memory://units{seed}")).unwrap();
        let spec = GenerateSpec {
            devices,
            sensors: 3,
            rows_per_device,
            seed,
            row_group_rows,
            partitioning: if by_device { Partitioning::Device } else { Partitioning::None },
            ..GenerateSpec::default()
        };
        generate(&spec, &root).unwrap();
        let input = root.join("readings").unwrap();
        let versions = |unit_rows: u64, threads: usize, name: &str| {
            let registry = root.join(name).unwrap();
            let report = train(&TrainSpec {
                input: input.clone(),
                registry: registry.clone(),
                selection: DeviceSelection::All,
                sensors: SensorSelection::All,
                window: TimeWindow::default(),
                columns: InputColumns::default(),
                features: None,
                params: TrainParams::IsolationForest(
                    IsolationForestParams { n_estimators: 4, seed, ..Default::default() }.check().unwrap(),
                ),
                threads,
                unit_rows,
                created_at: "2026-01-01T00:00:00Z".into(),
            }, &NoProgress).unwrap();
            assert_eq!(report.rows, u64::from(devices) * rows_per_device as u64);
            let registry = Registry::open(registry).unwrap();
            let all: Vec<(String, u64, String)> = registry
                .entries()
                .map(|e| (e.key.to_string(), e.training_rows, e.version.clone()))
                .collect();
            all
        };
        let whole = versions(1_000_000, 1, "whole");
        prop_assert_eq!(whole.len(), devices as usize);
        prop_assert_eq!(versions(unit_rows, threads, "cut"), whole);
    }
}
