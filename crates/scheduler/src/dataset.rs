//! The input dataset: one listing, footers, schema checks, pruning, and reading a unit's rows.

use std::ops::Range;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use batchscore_io::{IoError, Location, ParquetSource, hive_value};
use serde::{Deserialize, Serialize};

use crate::{DeviceSelection, SchedulerError, TimeWindow};

/// Names of the key columns of wide-layout readings; every other column is a sensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputColumns {
    pub device: String,
    pub timestamp: String,
}

impl Default for InputColumns {
    fn default() -> Self {
        Self { device: "device_id".into(), timestamp: "timestamp".into() }
    }
}

/// A row group that survived pruning, with the device interval its statistics allow.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Slice {
    pub file: usize,
    pub row_group: usize,
    /// Smallest and largest device id the row group may hold (inclusive).
    pub lo: i64,
    pub hi: i64,
    pub rows: u64,
}

/// The input after listing, footer reads and pruning.
#[derive(Debug)]
pub(crate) struct Dataset {
    pub files: Vec<ParquetSource>,
    /// The device of each file that sits in a `device=N` partition.
    hive_device: Vec<Option<i64>>,
    pub columns: InputColumns,
    /// Sensor columns, in the first file's order.
    pub sensors: Vec<String>,
    pub slices: Vec<Slice>,
    /// Parquet files listed, before partition pruning.
    pub files_listed: usize,
    /// Row groups in the files read, before statistics pruning.
    pub row_groups_total: usize,
    /// `(path, size, version tag)` of every file read: identifies the input's contents.
    pub identity: Vec<(String, u64, String)>,
}

/// One unit's rows, sorted by device and time, with per-device row ranges.
#[derive(Debug, Default)]
pub(crate) struct UnitTable {
    pub device: Vec<i64>,
    pub timestamp_us: Vec<i64>,
    /// One column per sensor (in [`Dataset::sensors`] order).
    pub sensors: Vec<Vec<f64>>,
    /// Each device's rows.
    pub runs: Vec<(i64, Range<usize>)>,
}

fn column_type_error(
    url: String,
    column: &str,
    found: &DataType,
    expected: &str,
) -> SchedulerError {
    SchedulerError::Input(IoError::ColumnType {
        url,
        column: column.into(),
        found: found.to_string(),
        expected: expected.into(),
    })
}

fn is_sensor_type(t: &DataType) -> bool {
    t.is_numeric() && !matches!(t, DataType::Decimal32(..) | DataType::Decimal64(..))
}

fn to_micros(value: i64, unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => value.saturating_mul(1_000_000),
        TimeUnit::Millisecond => value.saturating_mul(1_000),
        TimeUnit::Microsecond => value,
        TimeUnit::Nanosecond => value.div_euclid(1_000),
    }
}

impl Dataset {
    /// Lists `location` once, prunes hive partitions by the selection, reads the remaining
    /// footers, checks schemas and prunes row groups by device and time statistics.
    pub fn scan(
        location: &Location,
        columns: &InputColumns,
        selection: &DeviceSelection,
        window: &TimeWindow,
    ) -> Result<Self, SchedulerError> {
        let listed = location.list("")?;
        let mut entries = Vec::new();
        let mut hive_device = Vec::new();
        let mut saw_parquet = false;
        let mut files_listed = 0;
        let mut other_files = 0;
        for entry in listed {
            let name = entry.path.rsplit('/').next().unwrap_or("");
            if !name.ends_with(".parquet") && !name.starts_with(['_', '.']) {
                other_files += 1;
            }
            if !name.ends_with(".parquet") || name.starts_with('_') || name.starts_with('.') {
                continue;
            }
            saw_parquet = true;
            files_listed += 1;
            let device = match hive_value(&entry.path, &columns.device) {
                None => None,
                Some(v) => Some(v.parse::<i64>().map_err(|_| {
                    column_type_error(
                        location.url_of(&entry.path),
                        &columns.device,
                        &DataType::Utf8,
                        "an integer partition value",
                    )
                })?),
            };
            if device.is_some_and(|d| !selection.contains(d)) {
                continue;
            }
            hive_device.push(device);
            entries.push(entry);
        }
        if !saw_parquet {
            return Err(SchedulerError::NoInput { url: location.url().to_string(), other_files });
        }
        let files = ParquetSource::open_all(location, &entries).map_err(SchedulerError::reading)?;
        let identity = entries
            .iter()
            .map(|e| (e.path.clone(), e.size, e.e_tag.clone().unwrap_or_default()))
            .collect();
        let row_groups_total = files.iter().map(ParquetSource::num_row_groups).sum();
        let mut dataset = Dataset {
            files,
            files_listed,
            row_groups_total,
            hive_device,
            columns: columns.clone(),
            sensors: Vec::new(),
            slices: Vec::new(),
            identity,
        };
        dataset.check_schemas()?;
        dataset.prune(selection, window)?;
        Ok(dataset)
    }

    fn check_schemas(&mut self) -> Result<(), SchedulerError> {
        let c = &self.columns;
        for (i, file) in self.files.iter().enumerate() {
            let schema = file.schema();
            let url = file.url();
            let missing = |column: &str| {
                SchedulerError::Input(IoError::MissingColumn {
                    url: url.clone(),
                    column: column.into(),
                })
            };
            let ts = schema.field_with_name(&c.timestamp).map_err(|_| missing(&c.timestamp))?;
            if !matches!(ts.data_type(), DataType::Timestamp(..)) {
                return Err(column_type_error(url, &c.timestamp, ts.data_type(), "a timestamp"));
            }
            match schema.field_with_name(&c.device) {
                Ok(f) if !f.data_type().is_integer() => {
                    return Err(column_type_error(url, &c.device, f.data_type(), "an integer"));
                }
                Ok(_) => {}
                Err(_) if self.hive_device[i].is_some() => {}
                Err(_) => return Err(missing(&c.device)),
            }
            let file_sensors: Vec<&str> = schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .filter(|n| *n != c.device && *n != c.timestamp)
                .collect();
            if i == 0 {
                self.sensors = file_sensors.iter().map(|s| s.to_string()).collect();
                if self.sensors.is_empty() {
                    return Err(missing("<any sensor column>"));
                }
            }
            for sensor in &self.sensors {
                let field = schema.field_with_name(sensor).map_err(|_| missing(sensor))?;
                if !is_sensor_type(field.data_type()) {
                    return Err(column_type_error(url, sensor, field.data_type(), "a number"));
                }
            }
        }
        Ok(())
    }

    fn prune(
        &mut self,
        selection: &DeviceSelection,
        window: &TimeWindow,
    ) -> Result<(), SchedulerError> {
        for (f, file) in self.files.iter().enumerate() {
            let unit = match file.schema().field_with_name(&self.columns.timestamp) {
                Ok(field) => match field.data_type() {
                    DataType::Timestamp(unit, _) => *unit,
                    _ => TimeUnit::Microsecond,
                },
                Err(_) => TimeUnit::Microsecond,
            };
            for rg in 0..file.num_row_groups() {
                let rows = file.row_group_rows(rg);
                if rows == 0 {
                    continue;
                }
                let (lo, hi) = match self.hive_device[f] {
                    Some(d) => (d, d),
                    // Without statistics the row group may hold any device.
                    None => {
                        file.int_range(rg, &self.columns.device).unwrap_or((i64::MIN, i64::MAX))
                    }
                };
                if !selection.overlaps(lo, hi) {
                    continue;
                }
                if let Some((t0, t1)) = file.int_range(rg, &self.columns.timestamp)
                    && !window.overlaps(to_micros(t0, unit), to_micros(t1, unit))
                {
                    continue;
                }
                self.slices.push(Slice { file: f, row_group: rg, lo, hi, rows });
            }
        }
        Ok(())
    }

    /// Reads the given slices and keeps the rows of selected devices inside the window, sorted
    /// by device and time (ties keep input order, so the result is deterministic).
    pub fn read_unit(
        &self,
        slices: &[usize],
        selection: &DeviceSelection,
        window: &TimeWindow,
    ) -> Result<UnitTable, SchedulerError> {
        let mut device = Vec::new();
        let mut timestamp_us = Vec::new();
        let mut sensors: Vec<Vec<f64>> = vec![Vec::new(); self.sensors.len()];
        let mut by_file: Vec<(usize, Vec<usize>)> = Vec::new();
        for &s in slices {
            let slice = &self.slices[s];
            match by_file.last_mut() {
                Some((f, rgs)) if *f == slice.file => rgs.push(slice.row_group),
                _ => by_file.push((slice.file, vec![slice.row_group])),
            }
        }
        for (f, row_groups) in by_file {
            let file = &self.files[f];
            let hive = self.hive_device[f];
            let mut wanted: Vec<&str> = Vec::with_capacity(self.sensors.len() + 2);
            if hive.is_none() {
                wanted.push(&self.columns.device);
            }
            wanted.push(&self.columns.timestamp);
            wanted.extend(self.sensors.iter().map(String::as_str));
            let batches = file.read(&row_groups, &wanted).map_err(SchedulerError::reading)?;
            for batch in batches {
                self.append_batch(
                    &file.url(),
                    &batch,
                    hive,
                    selection,
                    window,
                    (&mut device, &mut timestamp_us, &mut sensors),
                )?;
            }
        }
        // Sort by (device, time, input position): a stable sort on the first two keys.
        let mut order: Vec<usize> = (0..device.len()).collect();
        order.sort_by_key(|&i| (device[i], timestamp_us[i]));
        let device: Vec<i64> = order.iter().map(|&i| device[i]).collect();
        let timestamp_us = order.iter().map(|&i| timestamp_us[i]).collect();
        let sensors = sensors.iter().map(|c| order.iter().map(|&i| c[i]).collect()).collect();
        let mut runs: Vec<(i64, Range<usize>)> = Vec::new();
        for (i, d) in device.iter().enumerate() {
            match runs.last_mut() {
                Some((last, range)) if last == d => range.end = i + 1,
                _ => runs.push((*d, i..i + 1)),
            }
        }
        Ok(UnitTable { device, timestamp_us, sensors, runs })
    }

    fn append_batch(
        &self,
        url: &str,
        batch: &RecordBatch,
        hive: Option<i64>,
        selection: &DeviceSelection,
        window: &TimeWindow,
        (device, timestamp_us, sensors): (&mut Vec<i64>, &mut Vec<i64>, &mut Vec<Vec<f64>>),
    ) -> Result<(), SchedulerError> {
        let cast = |name: &str, to: &DataType| -> Result<arrow::array::ArrayRef, SchedulerError> {
            let column = batch.column_by_name(name).ok_or_else(|| {
                SchedulerError::Input(IoError::MissingColumn {
                    url: url.into(),
                    column: name.into(),
                })
            })?;
            arrow::compute::cast(column, to).map_err(|_| {
                column_type_error(url.into(), name, column.data_type(), &to.to_string())
            })
        };
        let devices = match hive {
            Some(_) => None,
            None => Some(cast(&self.columns.device, &DataType::Int64)?),
        };
        let devices = devices.as_ref().map(|a| a.as_primitive::<Int64Type>());
        let ts_type = DataType::Timestamp(TimeUnit::Microsecond, None);
        let ts = cast(&self.columns.timestamp, &ts_type)?;
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        let values: Vec<arrow::array::ArrayRef> =
            self.sensors.iter().map(|s| cast(s, &DataType::Float64)).collect::<Result<_, _>>()?;
        let values: Vec<&arrow::array::PrimitiveArray<Float64Type>> =
            values.iter().map(|a| a.as_primitive::<Float64Type>()).collect();
        for row in 0..batch.num_rows() {
            // Rows without a device or timestamp cannot be keyed; they are skipped.
            let d = match (hive, devices) {
                (Some(d), _) => d,
                (None, Some(a)) if a.is_valid(row) => a.value(row),
                _ => continue,
            };
            if !selection.contains(d) || ts.is_null(row) {
                continue;
            }
            let t = ts.value(row);
            if !window.contains(t) {
                continue;
            }
            device.push(d);
            timestamp_us.push(t);
            for (column, v) in sensors.iter_mut().zip(&values) {
                // A missing reading is NaN, which the detectors treat as missing.
                column.push(if v.is_valid(row) { v.value(row) } else { f64::NAN });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchscore_io::Storage;
    use batchscore_synth::{GenerateSpec, Partitioning, generate};

    fn scan(root: &Location, selection: &str, window: TimeWindow) -> Dataset {
        let input = root.join("readings").unwrap();
        let selection = DeviceSelection::parse(selection).unwrap();
        Dataset::scan(&input, &InputColumns::default(), &selection, &window).unwrap()
    }

    #[test]
    fn statistics_and_partitions_prune_before_reading() {
        let storage = Storage::new().unwrap();
        let packed = storage.open("memory://scan/packed").unwrap();
        // 10 devices x 100 rows, sorted by device, 50-row groups: 20 groups, 2 per device.
        let spec = GenerateSpec {
            devices: 10,
            rows_per_device: 100,
            row_group_rows: 50,
            ..Default::default()
        };
        generate(&spec, &packed).unwrap();
        assert_eq!(scan(&packed, "all", TimeWindow::default()).slices.len(), 20);
        assert_eq!(scan(&packed, "3,7", TimeWindow::default()).slices.len(), 4);
        // The first 50 minutes of each device are in its first row group.
        let start = spec.start_us;
        let window = TimeWindow::new(Some(start), Some(start + 50 * 60_000_000)).unwrap();
        let pruned = scan(&packed, "all", window);
        assert_eq!(pruned.slices.len(), 10);
        assert!(pruned.slices.iter().all(|s| s.row_group % 2 == 0));

        // Hive partitions outside the selection are not even opened.
        let hive = storage.open("memory://scan/hive").unwrap();
        generate(&GenerateSpec { partitioning: Partitioning::Device, ..spec.clone() }, &hive)
            .unwrap();
        let d = scan(&hive, "2..4", TimeWindow::default());
        assert_eq!(d.files.len(), 2);
        assert_eq!(d.identity.len(), 2);
    }

    #[test]
    fn reads_sorted_rows_with_per_device_runs() {
        let storage = Storage::new().unwrap();
        let root = storage.open("memory://scan/read").unwrap();
        let spec = GenerateSpec {
            devices: 4,
            rows_per_device: 30,
            row_group_rows: 16,
            ..Default::default()
        };
        generate(&spec, &root).unwrap();
        let selection = DeviceSelection::parse("1,3").unwrap();
        let d = scan(&root, "1,3", TimeWindow::default());
        let all: Vec<usize> = (0..d.slices.len()).collect();
        let table = d.read_unit(&all, &selection, &TimeWindow::default()).unwrap();
        assert_eq!(table.runs, vec![(1, 0..30), (3, 30..60)]);
        assert!(table.timestamp_us[..30].windows(2).all(|w| w[0] < w[1]));
        assert_eq!(table.sensors.len(), 8);
    }
}
