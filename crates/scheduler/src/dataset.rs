//! The input dataset: one listing, footers (Parquet) or heads (CSV), column resolution, schema
//! checks, pruning, and reading a unit's rows.
//!
//! Two layouts are read. **Wide**: `device, timestamp, <one column per sensor>`, scored by one
//! model per device. **Long**: `timestamp, device, sensor, value` (the reference system's
//! `TS,Device,Tag,Value`), one row per reading, scored by one univariate model per
//! (device, sensor) series.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ops::Range;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Float64Type, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit,
    TimestampMicrosecondType,
};
use batchscore_io::{CsvSource, Entry, IoError, Location, ParquetSource, hive_value};
use serde::{Deserialize, Serialize};

use crate::{DeviceSelection, SchedulerError, SensorSelection, TimeWindow};

/// How readings are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Long when the input has a sensor and a value column, else wide.
    #[default]
    Auto,
    /// `device, timestamp, <sensor columns...>`: one model per device.
    Wide,
    /// `timestamp, device, sensor, value`: one model per (device, sensor).
    Long,
}

/// The input's layout and key column names, as configured. A name left unset is looked up
/// among common spellings, the reference system's (`TS, Device, Tag, Value`) included.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputColumns {
    pub layout: Layout,
    pub device: Option<String>,
    pub timestamp: Option<String>,
    /// Long layout: the column naming each reading's sensor (integers or text).
    pub sensor: Option<String>,
    /// Long layout: the column holding each reading's value.
    pub value: Option<String>,
}

/// Bytes of CSV per slice: a large CSV file is read by several units, none holding it whole.
const CSV_CHUNK_BYTES: u64 = 64 * 1024 * 1024;

const DEVICE_NAMES: &[&str] = &["device_id", "device", "Device"];
const TIMESTAMP_NAMES: &[&str] = &["timestamp", "TS"];
const SENSOR_NAMES: &[&str] = &["sensor", "Tag"];
const VALUE_NAMES: &[&str] = &["value", "Value"];

impl InputColumns {
    /// The names a column may have: the configured one, else the usual spellings.
    fn candidates<'a>(configured: &'a Option<String>, usual: &'a [&'a str]) -> Vec<&'a str> {
        match configured {
            Some(name) => vec![name.as_str()],
            None => usual.to_vec(),
        }
    }

    /// The device id of a file under a hive partition (`device_id=7/...`), and the key used.
    fn hive_device<'a, 'p>(&'a self, path: &'p str) -> Option<(&'a str, &'p str)> {
        Self::candidates(&self.device, DEVICE_NAMES)
            .into_iter()
            .find_map(|key| hive_value(path, key).map(|v| (key, v)))
    }
}

/// The input's columns as found in its first file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Columns {
    pub device: String,
    pub timestamp: String,
    pub shape: Shape,
}

/// What the non-key columns hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) enum Shape {
    /// One column per sensor, in the first file's order.
    Wide { sensors: Vec<String> },
    /// A sensor column and a value column; `integer_sensors` when every file's sensor column
    /// holds integers (output keeps them as integers).
    Long { sensor: String, value: String, integer_sensors: bool },
}

impl Columns {
    pub fn is_long(&self) -> bool {
        matches!(self.shape, Shape::Long { .. })
    }
}

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
#[derive(Debug, Clone, PartialEq)]
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
    hive_device: Vec<Option<i64>>,
    pub columns: Columns,
    pub slices: Vec<Slice>,
    /// Input files listed, before partition pruning.
    pub files_listed: usize,
    /// Row groups in the files read, before statistics pruning.
    pub row_groups_total: usize,
    /// `(path, size, version tag)` of every file read: identifies the input's contents.
    pub identity: Vec<(String, u64, String)>,
}

/// One series of a unit: a device's rows (wide) or a (device, sensor)'s rows (long).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Series {
    pub device: i64,
    /// Index into [`UnitTable::sensor_names`]; `None` in the wide layout.
    pub sensor: Option<u32>,
    pub rows: Range<usize>,
}

/// One unit's rows, sorted by device, sensor and time, with each series' row range.
#[derive(Debug, Default)]
pub(crate) struct UnitTable {
    pub device: Vec<i64>,
    pub timestamp_us: Vec<i64>,
    /// Long layout: each row's sensor, an index into `sensor_names`; empty when wide.
    pub sensor: Vec<u32>,
    pub sensor_names: Vec<String>,
    /// Wide: one column per sensor (in [`Shape::Wide`] order); long: the value column.
    pub values: Vec<Vec<f64>>,
    pub runs: Vec<Series>,
}

impl UnitTable {
    /// The sensor name of a long-layout series.
    pub fn sensor_name(&self, series: &Series) -> Option<&str> {
        series.sensor.and_then(|s| self.sensor_names.get(s as usize)).map(String::as_str)
    }
}

/// Sensor names in a readable order: integers by value first, then text.
pub(crate) fn sensor_order(a: &str, b: &str) -> Ordering {
    match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
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

fn is_number_type(t: &DataType) -> bool {
    t.is_numeric() && !matches!(t, DataType::Decimal32(..) | DataType::Decimal64(..))
}

fn is_sensor_key_type(t: &DataType) -> bool {
    t.is_integer()
        || matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        || matches!(t, DataType::Dictionary(_, v) if matches!(**v, DataType::Utf8 | DataType::LargeUtf8))
}

fn to_micros(value: i64, unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => value.saturating_mul(1_000_000),
        TimeUnit::Millisecond => value.saturating_mul(1_000),
        TimeUnit::Microsecond => value,
        TimeUnit::Nanosecond => value.div_euclid(1_000),
    }
}

/// Rows appended by one batch, filtered and keyed.
struct Sink<'a> {
    device: &'a mut Vec<i64>,
    timestamp_us: &'a mut Vec<i64>,
    sensor: &'a mut Vec<u32>,
    values: &'a mut Vec<Vec<f64>>,
    /// Long layout: sensor name -> unit-local id.
    dictionary: &'a mut HashMap<String, u32>,
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
        let listed = location.list("")?;
        let mut entries: Vec<Entry> = Vec::new();
        let mut hive_device = Vec::new();
        let mut hive_key: Option<String> = None;
        let mut files_listed = 0;
        let mut other_files = 0;
        for entry in listed {
            let name = entry.path.rsplit('/').next().unwrap_or("");
            if name.starts_with(['_', '.']) {
                continue;
            }
            if !name.ends_with(".parquet") && !name.ends_with(".csv") {
                other_files += 1;
                continue;
            }
            files_listed += 1;
            let device = match config.hive_device(&entry.path) {
                None => None,
                Some((key, value)) => {
                    hive_key.get_or_insert_with(|| key.to_string());
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
            hive_device.push(device);
            entries.push(entry);
        }
        if files_listed == 0 {
            return Err(SchedulerError::NoInput { url: location.url().to_string(), other_files });
        }
        let is_parquet = |e: &Entry| e.path.ends_with(".parquet");
        let parquet_entries: Vec<Entry> =
            entries.iter().filter(|e| is_parquet(e)).cloned().collect();
        let csv_entries: Vec<Entry> = entries.iter().filter(|e| !is_parquet(e)).cloned().collect();
        let mut parquet = ParquetSource::open_all(location, &parquet_entries)
            .map_err(SchedulerError::reading)?
            .into_iter();
        let mut csv = CsvSource::open_all(location, &csv_entries)
            .map_err(SchedulerError::reading)?
            .into_iter();
        // Back into listing order, so the plan does not depend on the formats' grouping.
        let files: Vec<InputFile> = entries
            .iter()
            .filter_map(|e| {
                if is_parquet(e) {
                    parquet.next().map(InputFile::Parquet)
                } else {
                    csv.next().map(InputFile::Csv)
                }
            })
            .collect();
        let identity = entries
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
        let columns = resolve(config, files.first(), hive_key.as_deref())?;
        let mut dataset = Dataset {
            files,
            files_listed,
            row_groups_total,
            hive_device,
            columns,
            slices: Vec::new(),
            identity,
        };
        dataset.check_schemas()?;
        dataset.prune(selection, window);
        Ok(dataset)
    }

    fn check_schemas(&mut self) -> Result<(), SchedulerError> {
        let mut integer_sensors = true;
        let c = &self.columns;
        for (i, file) in self.files.iter().enumerate() {
            let schema = file.schema();
            let url = file.url();
            // CSV types are sampled from the head: only a clear contradiction is an error
            // here; anything else that does not parse fails the read, naming file and line.
            let (csv, sampled_rows) = match file {
                InputFile::Parquet(_) => (false, true),
                InputFile::Csv(c) => (true, c.estimated_rows() > 0),
            };
            let field = |name: &str| schema.field_with_name(name).map(|f| f.data_type());
            let ts = field(&c.timestamp).map_err(|_| missing(url.clone(), &c.timestamp))?;
            let ts_ok = match ts {
                DataType::Timestamp(..) => true,
                // ISO dates without a time sample as dates; numbers are not times.
                _ if csv => !(ts.is_numeric() && sampled_rows),
                _ => false,
            };
            if !ts_ok {
                return Err(column_type_error(url, &c.timestamp, ts, "a timestamp"));
            }
            match field(&c.device) {
                Ok(t) if csv && sampled_rows && !t.is_integer() => {
                    return Err(column_type_error(url, &c.device, t, "integer device ids"));
                }
                Ok(t) if !csv && !t.is_integer() => {
                    return Err(column_type_error(url, &c.device, t, "an integer"));
                }
                Ok(_) => {}
                Err(_) if self.hive_device[i].is_some() => {}
                Err(_) => return Err(missing(url, &c.device)),
            }
            let numbers: Vec<&String> = match &c.shape {
                Shape::Wide { sensors } => sensors.iter().collect(),
                Shape::Long { sensor, value, .. } => {
                    let t = field(sensor).map_err(|_| missing(url.clone(), sensor))?;
                    if !csv && !is_sensor_key_type(t) {
                        return Err(column_type_error(url, sensor, t, "integers or text"));
                    }
                    integer_sensors &= t.is_integer();
                    vec![value]
                }
            };
            for name in numbers {
                let t = field(name).map_err(|_| missing(url.clone(), name))?;
                if !csv && !is_number_type(t) {
                    return Err(column_type_error(url, name, t, "a number"));
                }
            }
        }
        if let Shape::Long { integer_sensors: flag, .. } = &mut self.columns.shape {
            *flag = integer_sensors && !self.files.is_empty();
        }
        Ok(())
    }

    fn prune(&mut self, selection: &DeviceSelection, window: &TimeWindow) {
        for (f, file) in self.files.iter().enumerate() {
            let file = match file {
                InputFile::Parquet(p) => p,
                InputFile::Csv(c) => {
                    // No statistics: each chunk is a slice of any device and time, with its
                    // share of the estimated rows.
                    let rows = c.estimated_rows();
                    if rows == 0 {
                        continue;
                    }
                    let (lo, hi) = self.hive_device[f].map_or((i64::MIN, i64::MAX), |d| (d, d));
                    for (chunk, range) in c.chunks(CSV_CHUNK_BYTES).into_iter().enumerate() {
                        let share = (rows as f64 * (range.end - range.start) as f64
                            / c.size().max(1) as f64)
                            .ceil() as u64;
                        let rows = share.max(1);
                        self.slices.push(Slice { file: f, row_group: chunk, lo, hi, rows });
                    }
                    continue;
                }
            };
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
    }

    /// Columns read from each file, with the types they are decoded as.
    fn read_columns(&self, hive: bool) -> Vec<(&str, DataType)> {
        let c = &self.columns;
        let mut wanted = Vec::new();
        if !hive {
            wanted.push((c.device.as_str(), DataType::Int64));
        }
        wanted.push((c.timestamp.as_str(), DataType::Timestamp(TimeUnit::Microsecond, None)));
        match &c.shape {
            Shape::Wide { sensors } => {
                wanted.extend(sensors.iter().map(|s| (s.as_str(), DataType::Float64)));
            }
            Shape::Long { sensor, value, .. } => {
                wanted.push((sensor.as_str(), DataType::Utf8));
                wanted.push((value.as_str(), DataType::Float64));
            }
        }
        wanted
    }

    /// Reads the given slices and keeps the rows of selected devices (and, in the long layout,
    /// sensors) inside the window, sorted by device, sensor and time (ties keep input order,
    /// so the result is deterministic).
    pub fn read_unit(
        &self,
        slices: &[usize],
        selection: &DeviceSelection,
        sensors: &SensorSelection,
        window: &TimeWindow,
    ) -> Result<UnitTable, SchedulerError> {
        let value_columns = match &self.columns.shape {
            Shape::Wide { sensors } => sensors.len(),
            Shape::Long { .. } => 1,
        };
        let mut table = UnitTable { values: vec![Vec::new(); value_columns], ..Default::default() };
        let mut dictionary: HashMap<String, u32> = HashMap::new();
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
            let wanted = self.read_columns(hive.is_some());
            let batches = match file {
                InputFile::Parquet(p) => {
                    let names: Vec<&str> = wanted.iter().map(|(n, _)| *n).collect();
                    p.read(&row_groups, &names)
                }
                InputFile::Csv(c) => {
                    let chunks = c.chunks(CSV_CHUNK_BYTES);
                    let mut batches = Vec::new();
                    for chunk in row_groups {
                        if let Some(range) = chunks.get(chunk) {
                            batches.extend(
                                c.read(range.clone(), &wanted).map_err(SchedulerError::reading)?,
                            );
                        }
                    }
                    Ok(batches)
                }
            }
            .map_err(SchedulerError::reading)?;
            let mut sink = Sink {
                device: &mut table.device,
                timestamp_us: &mut table.timestamp_us,
                sensor: &mut table.sensor,
                values: &mut table.values,
                dictionary: &mut dictionary,
            };
            for batch in batches {
                self.append_batch(
                    &file.url(),
                    &batch,
                    hive,
                    (selection, sensors, window),
                    &mut sink,
                )?;
            }
        }
        table.sensor_names = vec![String::new(); dictionary.len()];
        for (name, id) in dictionary {
            table.sensor_names[id as usize] = name;
        }
        sort_and_split(&mut table);
        Ok(table)
    }

    fn append_batch(
        &self,
        url: &str,
        batch: &RecordBatch,
        hive: Option<i64>,
        (selection, sensors, window): (&DeviceSelection, &SensorSelection, &TimeWindow),
        sink: &mut Sink<'_>,
    ) -> Result<(), SchedulerError> {
        let cast = |name: &str, to: &DataType| -> Result<ArrayRef, SchedulerError> {
            let column =
                batch.column_by_name(name).ok_or_else(|| missing(url.to_string(), name))?;
            arrow::compute::cast(column, to).map_err(|_| {
                column_type_error(url.into(), name, column.data_type(), &to.to_string())
            })
        };
        let c = &self.columns;
        let devices = match hive {
            Some(_) => None,
            None => Some(cast(&c.device, &DataType::Int64)?),
        };
        let devices = devices.as_ref().map(|a| a.as_primitive::<Int64Type>());
        let ts = cast(&c.timestamp, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        let value_names: Vec<&String> = match &c.shape {
            Shape::Wide { sensors } => sensors.iter().collect(),
            Shape::Long { value, .. } => vec![value],
        };
        let values: Vec<ArrayRef> =
            value_names.iter().map(|s| cast(s, &DataType::Float64)).collect::<Result<_, _>>()?;
        let values: Vec<&arrow::array::PrimitiveArray<Float64Type>> =
            values.iter().map(|a| a.as_primitive::<Float64Type>()).collect();
        // Long layout: each row's sensor as a key into the batch's dictionary, and each
        // dictionary entry's unit-wide id (`None`: not selected).
        let long = match &c.shape {
            Shape::Wide { .. } => None,
            Shape::Long { sensor, .. } => {
                let text = cast(sensor, &DataType::Utf8)?;
                let dict_type =
                    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
                let dict = arrow::compute::cast(&text, &dict_type)
                    .map_err(|source| SchedulerError::Arrow { what: "sensor", source })?;
                let dict = dict.as_dictionary::<Int32Type>().clone();
                let names = dict.values().as_string::<i32>();
                let ids: Vec<Option<u32>> = (0..names.len())
                    .map(|i| {
                        let name = names.value(i);
                        sensors.contains(name).then(|| {
                            let next = sink.dictionary.len() as u32;
                            *sink.dictionary.entry(name.to_string()).or_insert(next)
                        })
                    })
                    .collect();
                Some((dict, ids))
            }
        };
        for row in 0..batch.num_rows() {
            // Rows without a device, timestamp or sensor cannot be keyed; they are skipped.
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
            if let Some((dict, ids)) = &long {
                let keys = dict.keys();
                if keys.is_null(row) {
                    continue;
                }
                match ids.get(keys.value(row) as usize).copied().flatten() {
                    Some(id) => sink.sensor.push(id),
                    None => continue,
                }
            }
            sink.device.push(d);
            sink.timestamp_us.push(t);
            for (column, v) in sink.values.iter_mut().zip(&values) {
                // A missing reading is NaN, which the detectors treat as missing.
                column.push(if v.is_valid(row) { v.value(row) } else { f64::NAN });
            }
        }
        Ok(())
    }
}

/// The columns of a dataset whose every file was pruned away: nothing is read, so the
/// configured (or usual) names stand.
fn fallback_columns(config: &InputColumns, hive_key: Option<&str>) -> Columns {
    let first = |configured: &Option<String>, usual: &[&str]| {
        configured.clone().unwrap_or_else(|| usual[0].to_string())
    };
    let shape = match config.layout {
        Layout::Long => Shape::Long {
            sensor: first(&config.sensor, SENSOR_NAMES),
            value: first(&config.value, VALUE_NAMES),
            integer_sensors: false,
        },
        Layout::Wide | Layout::Auto => Shape::Wide { sensors: Vec::new() },
    };
    Columns {
        device: config
            .device
            .clone()
            .or(hive_key.map(String::from))
            .unwrap_or_else(|| DEVICE_NAMES[0].into()),
        timestamp: first(&config.timestamp, TIMESTAMP_NAMES),
        shape,
    }
}

/// Finds the key columns in the first file and decides the layout.
fn resolve(
    config: &InputColumns,
    first: Option<&InputFile>,
    hive_key: Option<&str>,
) -> Result<Columns, SchedulerError> {
    let Some(file) = first else {
        return Ok(fallback_columns(config, hive_key));
    };
    let schema: &Schema = file.schema();
    let url = file.url();
    let find = |configured: &Option<String>, usual: &[&str]| {
        InputColumns::candidates(configured, usual)
            .into_iter()
            .find(|n| schema.field_with_name(n).is_ok())
            .map(String::from)
    };
    let first_name = |configured: &Option<String>, usual: &[&str]| {
        configured.clone().unwrap_or_else(|| usual[0].to_string())
    };
    let timestamp = find(&config.timestamp, TIMESTAMP_NAMES)
        .ok_or_else(|| missing(url.clone(), &first_name(&config.timestamp, TIMESTAMP_NAMES)))?;
    let device = match (find(&config.device, DEVICE_NAMES), hive_key) {
        (Some(name), _) => name,
        (None, Some(key)) => key.to_string(),
        (None, None) => return Err(missing(url, &first_name(&config.device, DEVICE_NAMES))),
    };
    let sensor = find(&config.sensor, SENSOR_NAMES);
    let value = find(&config.value, VALUE_NAMES);
    let long = match config.layout {
        Layout::Long => true,
        Layout::Wide => false,
        Layout::Auto => sensor.is_some() && value.is_some(),
    };
    let shape = if long {
        Shape::Long {
            sensor: sensor
                .ok_or_else(|| missing(url.clone(), &first_name(&config.sensor, SENSOR_NAMES)))?,
            value: value
                .ok_or_else(|| missing(url.clone(), &first_name(&config.value, VALUE_NAMES)))?,
            integer_sensors: false,
        }
    } else {
        let sensors: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| *n != device && *n != timestamp)
            .collect();
        if sensors.is_empty() {
            return Err(missing(url, "<any sensor column>"));
        }
        Shape::Wide { sensors }
    };
    Ok(Columns { device, timestamp, shape })
}

/// Sorts a unit's rows by (device, sensor, time), stable so ties keep input order, and
/// records each series' row range.
fn sort_and_split(table: &mut UnitTable) {
    let n = table.device.len();
    let mut order: Vec<usize> = (0..n).collect();
    if table.sensor.is_empty() {
        order.sort_by_key(|&i| (table.device[i], table.timestamp_us[i]));
    } else {
        // Sensors sort by name (integers by value), not by the order they were met in.
        let mut by_name: Vec<u32> = (0..table.sensor_names.len() as u32).collect();
        by_name.sort_by(|a, b| {
            sensor_order(&table.sensor_names[*a as usize], &table.sensor_names[*b as usize])
        });
        let mut rank = vec![0u32; by_name.len()];
        for (r, id) in by_name.iter().enumerate() {
            rank[*id as usize] = r as u32;
        }
        order.sort_by_key(|&i| {
            (table.device[i], rank[table.sensor[i] as usize], table.timestamp_us[i])
        });
        table.sensor = order.iter().map(|&i| table.sensor[i]).collect();
    }
    table.device = order.iter().map(|&i| table.device[i]).collect();
    table.timestamp_us = order.iter().map(|&i| table.timestamp_us[i]).collect();
    for column in &mut table.values {
        *column = order.iter().map(|&i| column[i]).collect();
    }
    let mut runs: Vec<Series> = Vec::new();
    for i in 0..n {
        let device = table.device[i];
        let sensor = table.sensor.get(i).copied();
        match runs.last_mut() {
            Some(last) if last.device == device && last.sensor == sensor => last.rows.end = i + 1,
            _ => runs.push(Series { device, sensor, rows: i..i + 1 }),
        }
    }
    table.runs = runs;
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
        let table =
            d.read_unit(&all, &selection, &SensorSelection::All, &TimeWindow::default()).unwrap();
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
        let table = d.read_unit(&all, &selection, &SensorSelection::All, &window).unwrap();
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
        let table = d.read_unit(&all, &selection, &only, &window).unwrap();
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
        let table = d.read_unit(&[0], &selection, &SensorSelection::All, &window).unwrap();
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
