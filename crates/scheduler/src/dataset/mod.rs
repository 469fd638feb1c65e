//! The input dataset: one listing, footers (Parquet) or heads (CSV), column resolution, schema
//! checks, pruning, and reading a unit's rows.
//!
//! Two layouts are read. **Wide**: `device, timestamp, <one column per sensor>`, scored by one
//! model per device. **Long**: `timestamp, device, sensor, value` (the reference system's
//! `TS,Device,Tag,Value`), one row per reading, scored by one univariate model per
//! (device, sensor) series.

mod columns;
mod prune;
mod read;
mod schema;

use std::collections::{BTreeMap, BTreeSet};

use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use batchscore_io::{CsvSource, Entry, IoError, Location, ParquetSource};

use columns::resolve;
pub use columns::sensor_order;
pub(crate) use columns::{Columns, Shape, series_order};
pub use columns::{InputColumns, Layout};
pub(crate) use read::{Series, UnitTable};

use crate::{DeviceSelection, SchedulerError, TimeWindow};

/// Bytes of CSV per slice: a large CSV file is read by several units, none holding it whole.
const CSV_CHUNK_BYTES: u64 = 64 * 1024 * 1024;

/// One input file.
#[derive(Debug)]
pub(crate) enum InputFile {
    Parquet(ParquetSource),
    Csv(CsvSource),
}

impl InputFile {
    pub fn url(&self) -> String {
        match self {
            InputFile::Parquet(p) => p.url(),
            InputFile::Csv(c) => c.url(),
        }
    }

    /// The Parquet schema, or the CSV header with sampled types.
    fn schema(&self) -> &SchemaRef {
        match self {
            InputFile::Parquet(p) => p.schema(),
            InputFile::Csv(c) => c.sampled_schema(),
        }
    }
}

/// A row group (or a chunk of a CSV file) that survived pruning, with the device interval its
/// statistics allow.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Slice {
    pub file: usize,
    /// The row group, or for CSV the chunk of `CSV_CHUNK_BYTES`.
    pub row_group: usize,
    /// Smallest and largest device id the row group may hold (inclusive).
    pub lo: i64,
    pub hi: i64,
    /// Rows (for CSV, an estimate until read).
    pub rows: u64,
}

/// The input after listing, footer reads and pruning.
#[derive(Debug)]
pub(crate) struct Dataset {
    pub files: Vec<InputFile>,
    /// The device of each file that sits in a `device=N` partition.
    pub hive_device: Vec<Option<i64>>,
    pub columns: Columns,
    pub slices: Vec<Slice>,
    /// Input files listed, before partition pruning.
    pub files_listed: usize,
    /// Row groups in the files read, before statistics pruning.
    pub row_groups_total: usize,
    /// `(path, size, version tag)` of every file read: identifies the input's contents.
    pub identity: Vec<(String, u64, String)>,
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

fn missing(url: String, column: &str) -> SchedulerError {
    SchedulerError::Input(IoError::MissingColumn { url, column: column.into() })
}

/// The timestamps the engine reads, in microseconds since the epoch: the years 0001 to 9999
/// (Parquet readers, Spark and SQL engines hold no other). A reading outside them is bad input:
/// a window grid, an hour count or a chart over it would span more than every reading made.
pub const TIMESTAMP_RANGE_US: std::ops::Range<i64> =
    -62_135_596_800_000_000..253_402_300_800_000_000;

/// The error for a reading whose timestamp is outside [`TIMESTAMP_RANGE_US`].
pub(crate) fn timestamp_out_of_range(url: &str, column: &str, us: i64) -> SchedulerError {
    SchedulerError::InvalidValue {
        url: url.to_string(),
        column: column.to_string(),
        value: format!("{us} µs since 1970-01-01"),
        reason: "timestamps are read from the year 0001 to 9999".into(),
    }
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
    /// footers (Parquet) and heads (CSV), resolves the columns from the first file, checks
    /// every file's schema and prunes row groups by device and time statistics.
    pub fn scan(
        location: &Location,
        config: &InputColumns,
        selection: &DeviceSelection,
        window: &TimeWindow,
    ) -> Result<Self, SchedulerError> {
        let listing = Listing::of(location, config, selection)?;
        let files = open_sources(location, &listing.entries)?;
        let identity = listing
            .entries
            .iter()
            .map(|e| (e.path.clone(), e.size, e.e_tag.clone().unwrap_or_default()))
            .collect();
        let row_groups_total = files
            .iter()
            .map(|f| match f {
                InputFile::Parquet(p) => p.num_row_groups(),
                InputFile::Csv(c) => c.chunks(CSV_CHUNK_BYTES).len(),
            })
            .sum();
        let columns = resolve(config, files.first(), listing.hive_key.as_deref())?;
        let mut dataset = Dataset {
            files,
            files_listed: listing.files_listed,
            row_groups_total,
            hive_device: listing.hive_device,
            columns,
            slices: Vec::new(),
            identity,
        };
        dataset.check_schemas()?;
        dataset.prune(selection, window);
        Ok(dataset)
    }
}

impl Dataset {
    /// A dataset of already planned files and slices (a stored plan): the files are opened
    /// (footers, CSV heads) but not listed, checked or pruned again.
    pub(crate) fn from_parts(
        location: &Location,
        entries: &[Entry],
        hive_device: Vec<Option<i64>>,
        columns: Columns,
        slices: Vec<Slice>,
        (files_listed, row_groups_total): (usize, usize),
    ) -> Result<Self, SchedulerError> {
        let files = open_sources(location, entries)?;
        let identity = entries
            .iter()
            .map(|e| (e.path.clone(), e.size, e.e_tag.clone().unwrap_or_default()))
            .collect();
        Ok(Dataset {
            files,
            hive_device,
            columns,
            slices,
            files_listed,
            row_groups_total,
            identity,
        })
    }
}

/// The input files of one listing, after hive partitions outside the selection are dropped.
struct Listing {
    entries: Vec<Entry>,
    /// The device of each entry that sits in a `device=N` partition.
    hive_device: Vec<Option<i64>>,
    /// The partition key met (`device_id`, ...), if any.
    hive_key: Option<String>,
    /// Parquet and CSV files listed, before partition pruning.
    files_listed: usize,
}

impl Listing {
    /// Lists `location` once; files starting with `_` or `.` are not input.
    fn of(
        location: &Location,
        config: &InputColumns,
        selection: &DeviceSelection,
    ) -> Result<Self, SchedulerError> {
        let listed = location.list("")?;
        if listed.is_empty() {
            return Err(SchedulerError::InputMissing { url: location.url().to_string() });
        }
        let mut listing = Listing {
            entries: Vec::new(),
            hive_device: Vec::new(),
            hive_key: None,
            files_listed: 0,
        };
        let runs = RunDirectories::of(location, &listed)?;
        let mut other_files = 0;
        for entry in listed {
            // Files and directories starting with `_` or `.` are not data (commit records,
            // Spark's `_temporary`, hidden files).
            if entry.path.split('/').any(|segment| segment.starts_with(['_', '.'])) {
                continue;
            }
            // In a run directory, the parts `_SUCCESS` names are the data; its drift table
            // and report are not.
            if !runs.admits(&entry.path) {
                continue;
            }
            let name = entry.path.rsplit('/').next().unwrap_or("");
            if !name.ends_with(".parquet") && !name.ends_with(".csv") {
                other_files += 1;
                continue;
            }
            listing.files_listed += 1;
            let device = match config.hive_device(&entry.path) {
                None => None,
                Some((key, value)) => {
                    listing.hive_key.get_or_insert_with(|| key.to_string());
                    Some(value.parse::<i64>().map_err(|_| {
                        column_type_error(
                            location.url_of(&entry.path),
                            key,
                            &DataType::Utf8,
                            "an integer partition value",
                        )
                    })?)
                }
            };
            if device.is_some_and(|d| !selection.contains(d)) {
                continue;
            }
            listing.hive_device.push(device);
            listing.entries.push(entry);
        }
        if listing.files_listed == 0 {
            return Err(SchedulerError::NoInput { url: location.url().to_string(), other_files });
        }
        Ok(listing)
    }
}

/// The batchscore run directories inside a listing (an aggregated or scored dataset read as
/// input), with the parts their `_SUCCESS` names.
struct RunDirectories {
    /// Run directory (relative, `""` for the listed location itself) -> its parts' paths
    /// relative to the listed location.
    parts: BTreeMap<String, BTreeSet<String>>,
}

impl RunDirectories {
    /// Finds run directories by their `_plan.json`; one without `_SUCCESS` is refused: before
    /// it completes, its parts are a part of the data.
    fn of(location: &Location, listed: &[Entry]) -> Result<Self, SchedulerError> {
        let paths: BTreeSet<&str> = listed.iter().map(|e| e.path.as_str()).collect();
        let mut parts = BTreeMap::new();
        for entry in listed {
            let Some(dir) = entry.path.strip_suffix(crate::commit::PLAN) else { continue };
            if !(dir.is_empty() || dir.ends_with('/')) {
                continue;
            }
            let success = format!("{dir}{}", crate::commit::SUCCESS);
            if !paths.contains(success.as_str()) {
                return Err(SchedulerError::InvalidSetting {
                    setting: "input",
                    reason: format!(
                        "{} is a batchscore run that has not completed (no _SUCCESS): finish it \
                         (run the same command again) before reading it",
                        location.url_of(dir.trim_end_matches('/'))
                    ),
                });
            }
            let manifest: crate::Manifest =
                crate::commit::from_json(location, &success, &location.get(&success)?)?;
            let named = manifest.parts.iter().map(|p| format!("{dir}{}", p.path)).collect();
            parts.insert(dir.to_string(), named);
        }
        Ok(Self { parts })
    }

    /// True unless `path` lies in a run directory whose `_SUCCESS` does not name it.
    fn admits(&self, path: &str) -> bool {
        self.parts
            .iter()
            .filter(|(dir, _)| path.starts_with(dir.as_str()))
            .all(|(_, named)| named.contains(path))
    }
}

/// Opens every entry (Parquet footers, CSV heads, each format concurrently), in listing order,
/// so the plan does not depend on the formats' grouping.
fn open_sources(location: &Location, entries: &[Entry]) -> Result<Vec<InputFile>, SchedulerError> {
    let is_parquet = |e: &Entry| e.path.ends_with(".parquet");
    let parquet_entries: Vec<Entry> = entries.iter().filter(|e| is_parquet(e)).cloned().collect();
    let csv_entries: Vec<Entry> = entries.iter().filter(|e| !is_parquet(e)).cloned().collect();
    let mut parquet = ParquetSource::open_all(location, &parquet_entries)
        .map_err(SchedulerError::reading)?
        .into_iter();
    let mut csv =
        CsvSource::open_all(location, &csv_entries).map_err(SchedulerError::reading)?.into_iter();
    Ok(entries
        .iter()
        .filter_map(|e| {
            if is_parquet(e) {
                parquet.next().map(InputFile::Parquet)
            } else {
                csv.next().map(InputFile::Csv)
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::ops::Range;

    use super::*;
    use crate::SensorSelection;
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
        let table = d
            .read_unit(
                &all,
                i64::MIN..=i64::MAX,
                &selection,
                &SensorSelection::All,
                &TimeWindow::default(),
            )
            .unwrap();
        let runs: Vec<(i64, Option<u32>, Range<usize>)> =
            table.runs.iter().map(|s| (s.device, s.sensor, s.rows.clone())).collect();
        assert_eq!(runs, vec![(1, None, 0..30), (3, None, 30..60)]);
        assert!(table.timestamp_us[..30].windows(2).all(|w| w[0] < w[1]));
        assert_eq!(table.values.len(), 8);
        assert!(!d.columns.is_long(), "wide input is detected as wide");
    }

    /// Series of a long-layout table as `(device, sensor, rows)`.
    fn series(table: &UnitTable) -> Vec<(i64, String, usize)> {
        table
            .runs
            .iter()
            .map(|s| (s.device, table.sensor_name(s).unwrap().to_string(), s.rows.len()))
            .collect()
    }

    #[test]
    fn long_parquet_reads_per_sensor_series() {
        let storage = Storage::new().unwrap();
        let root = storage.open("memory://scan/long").unwrap();
        let spec = GenerateSpec {
            devices: 3,
            sensors: 2,
            rows_per_device: 10,
            layout: batchscore_synth::Layout::Long,
            row_group_rows: 16,
            ..Default::default()
        };
        generate(&spec, &root).unwrap();
        let d = scan(&root, "0,2", TimeWindow::default());
        assert_eq!(
            d.columns.shape,
            Shape::Long { sensor: "sensor".into(), value: "value".into(), integer_sensors: false }
        );
        assert_eq!(d.columns.device, "device");
        let all: Vec<usize> = (0..d.slices.len()).collect();
        let selection = DeviceSelection::parse("0,2").unwrap();
        let window = TimeWindow::default();
        let table = d
            .read_unit(&all, i64::MIN..=i64::MAX, &selection, &SensorSelection::All, &window)
            .unwrap();
        let expected: Vec<(i64, String, usize)> = [0, 2]
            .iter()
            .flat_map(|d| ["pressure", "temperature"].map(|s| (*d, s.to_string(), 10)))
            .collect();
        assert_eq!(series(&table), expected, "sorted by device, then sensor name");
        assert_eq!(table.values.len(), 1);
        for run in &table.runs {
            let ts = &table.timestamp_us[run.rows.clone()];
            assert!(ts.windows(2).all(|w| w[0] < w[1]), "each series in time order");
        }
        let only = SensorSelection::parse("pressure").unwrap();
        let table = d.read_unit(&all, i64::MIN..=i64::MAX, &selection, &only, &window).unwrap();
        assert_eq!(series(&table).len(), 2);
        assert!(series(&table).iter().all(|(_, s, _)| s == "pressure"));
    }

    #[test]
    fn reference_csv_is_read_as_is() {
        let storage = Storage::new().unwrap();
        let root = storage.open("memory://scan/reference").unwrap();
        let mut text = String::from("TS,Device,Tag,Value\n");
        // Tags 10 and 2: integer tags sort by value. Rows out of time order on purpose.
        for (ts, device, tag, value) in [
            ("2018-08-28 23:00:10.000", 1, 10, "1.5"),
            ("2018-08-28 23:00:05.000", 1, 10, "1.25"),
            ("2018-08-28 23:00:05.000", 1, 2, ""),
            ("2018-08-28 23:00:05.000", 3, 2, "4"),
        ] {
            text.push_str(&format!("{ts},{device},{tag},{value}\n"));
        }
        root.put("readings/sensor_data.csv", bytes::Bytes::from(text)).unwrap();
        let d = scan(&root, "all", TimeWindow::default());
        assert_eq!((d.columns.device.as_str(), d.columns.timestamp.as_str()), ("Device", "TS"));
        assert_eq!(
            d.columns.shape,
            Shape::Long { sensor: "Tag".into(), value: "Value".into(), integer_sensors: true }
        );
        let selection = DeviceSelection::All;
        let window = TimeWindow::default();
        let table = d
            .read_unit(&[0], i64::MIN..=i64::MAX, &selection, &SensorSelection::All, &window)
            .unwrap();
        assert_eq!(
            series(&table),
            vec![(1, "2".into(), 1), (1, "10".into(), 2), (3, "2".into(), 1)]
        );
        assert!(table.values[0][0].is_nan(), "an empty value is missing");
        assert_eq!(&table.values[0][1..3], &[1.25, 1.5], "time order within a series");

        // Configured names must exist; a layout can be forced.
        let input = root.join("readings").unwrap();
        let named = InputColumns { value: Some("Reading".into()), ..Default::default() };
        let wide = Dataset::scan(&input, &named, &selection, &window).unwrap();
        assert!(!wide.columns.is_long(), "without a value column the input is wide");
        let forced = InputColumns { layout: Layout::Long, ..named };
        let err = Dataset::scan(&input, &forced, &selection, &window).unwrap_err();
        assert!(err.to_string().contains("Reading"), "{err}");
    }

    #[test]
    fn sensor_names_sort_integers_by_value_then_text() {
        let mut names = vec!["b", "10", "a", "2", "-1"];
        names.sort_by(|a, b| sensor_order(a, b));
        assert_eq!(names, vec!["-1", "2", "10", "a", "b"]);
    }
}
