//! Reading a unit: its row groups and CSV chunks, filtered to the selection and window, keyed
//! and sorted into series.

use std::collections::HashMap;
use std::ops::{Range, RangeInclusive};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Float64Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType,
};

use super::{
    CSV_CHUNK_BYTES, Columns, Dataset, InputFile, Shape, Slice, column_type_error, missing,
    sensor_order,
};
use crate::{DeviceSelection, SchedulerError, SensorSelection, TimeWindow};

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

/// Which rows a unit keeps: its devices, the selected devices and sensors, the window.
type Filter<'a> =
    (&'a RangeInclusive<i64>, &'a DeviceSelection, &'a SensorSelection, &'a TimeWindow);

/// Rows appended by one batch, filtered and keyed.
struct Sink<'a> {
    device: &'a mut Vec<i64>,
    timestamp_us: &'a mut Vec<i64>,
    sensor: &'a mut Vec<u32>,
    values: &'a mut Vec<Vec<f64>>,
    /// Long layout: sensor name -> unit-local id.
    dictionary: &'a mut HashMap<String, u32>,
    /// Each row's file rank, and the rank of this batch's file, when files are read out of
    /// input order.
    ranks: Option<(&'a mut Vec<u32>, u32)>,
    /// Rows of devices below this bound were handed on already.
    floor: i64,
}

impl Dataset {
    /// Columns read from each file, with the types they are decoded as. The device column is
    /// read whenever the file has one, under a hive partition too, where it must agree.
    fn read_columns(&self, device: bool) -> Vec<(&str, DataType)> {
        let c = &self.columns;
        let mut wanted = Vec::new();
        if device {
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

    /// Reads the given slices and keeps the rows of selected devices in `devices` (and, in the
    /// long layout, sensors) inside the window, sorted by device, sensor and time (ties keep
    /// input order, so the result is deterministic).
    pub fn read_unit(
        &self,
        slices: &[usize],
        devices: RangeInclusive<i64>,
        selection: &DeviceSelection,
        sensors: &SensorSelection,
        window: &TimeWindow,
    ) -> Result<UnitTable, SchedulerError> {
        let mut whole = None;
        let filter = (&devices, selection, sensors, window);
        self.read_unit_in_chunks(slices, filter, usize::MAX, &mut |table| {
            whole = Some(table);
            Ok(())
        })?;
        Ok(whole.unwrap_or_else(|| Builder::new(&self.columns.shape, false).finish()))
    }

    /// Reads a unit like [`Dataset::read_unit`], handing its rows to `each` in chunks that
    /// each hold whole devices, in device order: the chunks' rows, one after the other, are
    /// the unit's rows in [`Dataset::read_unit`]'s order. A unit without rows hands nothing.
    ///
    /// Files are read in the order of their smallest device, each file's row groups in file
    /// order, a batch at a time. Once `chunk_rows` rows are gathered, the rows of every device
    /// that no unread row group can hold (by its statistics) go out as a chunk. Input sorted
    /// or partitioned by device so streams through in about `chunk_rows` rows plus a row
    /// group; input whose every row group may hold every device (files per time period, CSV)
    /// is gathered whole, as one chunk.
    pub fn read_unit_in_chunks(
        &self,
        slices: &[usize],
        filter: Filter<'_>,
        chunk_rows: usize,
        each: &mut dyn FnMut(UnitTable) -> Result<(), SchedulerError>,
    ) -> Result<(), SchedulerError> {
        let order = ReadOrder::new(&self.slices, slices);
        let mut builder = Builder::new(&self.columns.shape, order.reordered);
        let mut done = 0;
        for (position, (f, group)) in order.files.iter().enumerate() {
            let file = &self.files[*f];
            let hive = self.hive_device[*f];
            let has_device = file.schema().field_with_name(&self.columns.device).is_ok();
            let wanted = self.read_columns(hive.is_none() || has_device);
            let url = file.url();
            builder.rank = order.file_rank[position];
            let first = done;
            match file {
                InputFile::Parquet(p) => {
                    let names: Vec<&str> = wanted.iter().map(|(n, _)| *n).collect();
                    let row_groups: Vec<usize> =
                        group.iter().map(|&s| self.slices[s].row_group).collect();
                    // Rows read once each of the file's slices is complete.
                    let ends: Vec<u64> = group
                        .iter()
                        .scan(0u64, |end, &s| {
                            *end += self.slices[s].rows;
                            Some(*end)
                        })
                        .collect();
                    let mut consumed = 0u64;
                    p.read_each(&row_groups, &names, |batch: RecordBatch| {
                        consumed += batch.num_rows() as u64;
                        append_batch(
                            &self.columns,
                            &url,
                            &batch,
                            hive,
                            filter,
                            &mut builder.sink(),
                        )?;
                        while done - first < group.len() && ends[done - first] <= consumed {
                            done += 1;
                        }
                        builder.cut(Some(order.watermark[done]), chunk_rows, each)
                    })
                    .map_err(|e| match e {
                        SchedulerError::Io(e) => SchedulerError::reading(e),
                        e => e,
                    })?;
                }
                InputFile::Csv(c) => {
                    let chunks = c.chunks(CSV_CHUNK_BYTES);
                    for &s in group {
                        if let Some(range) = chunks.get(self.slices[s].row_group) {
                            let batches =
                                c.read(range.clone(), &wanted).map_err(SchedulerError::reading)?;
                            for batch in batches {
                                let sink = &mut builder.sink();
                                append_batch(&self.columns, &url, &batch, hive, filter, sink)?;
                            }
                        }
                        done += 1;
                        builder.cut(Some(order.watermark[done]), chunk_rows, each)?;
                    }
                }
            }
            done = first + group.len();
            builder.cut(Some(order.watermark[done]), chunk_rows, each)?;
        }
        builder.cut(None, 0, each)
    }
}

/// The order a unit's slices are read in: files by their smallest device, so that devices
/// complete early; each file's row groups in file order.
struct ReadOrder {
    /// `(file, slices)` in reading order.
    files: Vec<(usize, Vec<usize>)>,
    /// Once the first `k` slices in reading order are read, no unread slice holds a device
    /// below `watermark[k]`.
    watermark: Vec<i64>,
    /// Whether files are read out of input order (their index order): rows then carry their
    /// file's rank in input order, so that ties still sort in input order.
    reordered: bool,
    /// Each file's rank in input order, by reading position.
    file_rank: Vec<u32>,
}

impl ReadOrder {
    fn new(all: &[Slice], slices: &[usize]) -> Self {
        let mut files: Vec<(usize, Vec<usize>)> = Vec::new();
        let mut sorted = slices.to_vec();
        sorted.sort_by_key(|&s| (all[s].file, all[s].row_group));
        for s in sorted {
            match files.last_mut() {
                Some((f, group)) if *f == all[s].file => group.push(s),
                _ => files.push((all[s].file, vec![s])),
            }
        }
        let mut by_reading: Vec<usize> = (0..files.len()).collect();
        // A rank must fit beside a row position in a 64-bit tie-breaker; beyond that (never
        // met: millions of files in one unit), files are read in input order.
        if files.len() < 1 << RANK_BITS {
            let least = |group: &[usize]| group.iter().map(|&s| (all[s].lo, all[s].hi)).min();
            by_reading.sort_by_key(|&i| (least(&files[i].1), i));
        }
        let reordered = by_reading.windows(2).any(|w| w[0] > w[1]);
        let file_rank = by_reading.iter().map(|&i| if reordered { i as u32 } else { 0 }).collect();
        let files: Vec<(usize, Vec<usize>)> =
            by_reading.into_iter().map(|i| std::mem::take(&mut files[i])).collect();
        let lows: Vec<i64> =
            files.iter().flat_map(|(_, group)| group.iter().map(|&s| all[s].lo)).collect();
        let mut watermark = vec![i64::MAX; lows.len() + 1];
        for k in (0..lows.len()).rev() {
            watermark[k] = watermark[k + 1].min(lows[k]);
        }
        Self { files, watermark, reordered, file_rank }
    }
}

/// Bits of a row's tie-breaker that hold its position among the rows gathered; the bits above
/// hold its file's rank in input order.
const POSITION_BITS: u32 = 40;
const RANK_BITS: u32 = 64 - POSITION_BITS;

/// A unit's rows being gathered: appended through [`Sink`]s, cut into sorted chunks of whole
/// devices.
struct Builder {
    table: UnitTable,
    /// Long layout: sensor name -> unit-local id.
    dictionary: HashMap<String, u32>,
    /// Each row's file rank in input order, when files are read out of that order.
    ranks: Option<Vec<u32>>,
    /// The rank of the file being read.
    rank: u32,
    /// Every device below this bound went out in a chunk: a later row of one is an error.
    floor: i64,
}

impl Builder {
    fn new(shape: &Shape, ranked: bool) -> Self {
        let value_columns = match shape {
            Shape::Wide { sensors } => sensors.len(),
            Shape::Long { .. } => 1,
        };
        Self {
            table: UnitTable { values: vec![Vec::new(); value_columns], ..Default::default() },
            dictionary: HashMap::new(),
            ranks: ranked.then(Vec::new),
            rank: 0,
            floor: i64::MIN,
        }
    }

    fn sink(&mut self) -> Sink<'_> {
        let rank = self.rank;
        Sink {
            device: &mut self.table.device,
            timestamp_us: &mut self.table.timestamp_us,
            sensor: &mut self.table.sensor,
            values: &mut self.table.values,
            dictionary: &mut self.dictionary,
            ranks: self.ranks.as_mut().map(|r| (r, rank)),
            floor: self.floor,
        }
    }

    /// Once `min_rows` rows are gathered, hands the rows of the devices below `bound` (all
    /// rows: `None`) to `each` as one sorted chunk.
    fn cut(
        &mut self,
        bound: Option<i64>,
        min_rows: usize,
        each: &mut dyn FnMut(UnitTable) -> Result<(), SchedulerError>,
    ) -> Result<(), SchedulerError> {
        let gathered = self.table.device.len();
        if gathered == 0 || gathered < min_rows {
            return Ok(());
        }
        let (chunk, ranks) = match bound {
            None => {
                let empty = UnitTable {
                    values: vec![Vec::new(); self.table.values.len()],
                    ..Default::default()
                };
                (std::mem::replace(&mut self.table, empty), self.ranks.as_mut().map(std::mem::take))
            }
            Some(bound) => {
                if bound <= self.floor {
                    return Ok(());
                }
                self.floor = bound;
                let below: Vec<bool> = self.table.device.iter().map(|&d| d < bound).collect();
                if !below.contains(&true) {
                    return Ok(());
                }
                let t = &mut self.table;
                let chunk = UnitTable {
                    device: split_off_where(&mut t.device, &below),
                    timestamp_us: split_off_where(&mut t.timestamp_us, &below),
                    sensor: split_off_where(&mut t.sensor, &below),
                    values: t.values.iter_mut().map(|v| split_off_where(v, &below)).collect(),
                    ..Default::default()
                };
                (chunk, self.ranks.as_mut().map(|r| split_off_where(r, &below)))
            }
        };
        each(self.sorted(chunk, ranks.as_deref()))
    }

    /// A chunk named and sorted into series.
    fn sorted(&self, mut chunk: UnitTable, ranks: Option<&[u32]>) -> UnitTable {
        chunk.sensor_names = vec![String::new(); self.dictionary.len()];
        for (name, id) in &self.dictionary {
            chunk.sensor_names[*id as usize] = name.clone();
        }
        sort_and_split(&mut chunk, ranks);
        chunk
    }

    /// Every row gathered, as one sorted table.
    fn finish(mut self) -> UnitTable {
        let table = std::mem::take(&mut self.table);
        let ranks = self.ranks.take();
        self.sorted(table, ranks.as_deref())
    }
}

/// Removes the elements whose `mask` entry is true from `v` and returns them, both in order.
fn split_off_where<T: Copy>(v: &mut Vec<T>, mask: &[bool]) -> Vec<T> {
    if v.is_empty() {
        return Vec::new();
    }
    let mut taken = Vec::with_capacity(mask.iter().filter(|m| **m).count());
    let mut kept = 0;
    for (i, &take) in mask.iter().enumerate() {
        if take {
            taken.push(v[i]);
        } else {
            v[kept] = v[i];
            kept += 1;
        }
    }
    v.truncate(kept);
    taken
}

impl UnitTable {
    /// The rows of one batch whose columns `columns` names (a transform's result), keyed and
    /// sorted like a unit read from input.
    pub(crate) fn of_batch(
        url: &str,
        batch: &RecordBatch,
        columns: &Columns,
    ) -> Result<Self, SchedulerError> {
        let mut builder = Builder::new(&columns.shape, false);
        // Selection and window were applied when the unit was read.
        let window = TimeWindow { from_us: None, to_us: None };
        let everything =
            (&(i64::MIN..=i64::MAX), &DeviceSelection::All, &SensorSelection::All, &window);
        append_batch(columns, url, batch, None, everything, &mut builder.sink())?;
        Ok(builder.finish())
    }
}

/// Appends the rows of `batch` that pass the filter to `sink`.
fn append_batch(
    c: &Columns,
    url: &str,
    batch: &RecordBatch,
    hive: Option<i64>,
    (unit_devices, selection, sensors, window): Filter<'_>,
    sink: &mut Sink<'_>,
) -> Result<(), SchedulerError> {
    let cast = |name: &str, to: &DataType| -> Result<ArrayRef, SchedulerError> {
        let column = batch.column_by_name(name).ok_or_else(|| missing(url.to_string(), name))?;
        let cast = arrow::compute::cast(column, to).map_err(|_| {
            column_type_error(url.into(), name, column.data_type(), &to.to_string())
        })?;
        // A value the target type cannot hold (a uint64 device id above i64::MAX) casts to
        // null, and null keys are skipped: that would drop rows without a word.
        if cast.null_count() > column.null_count()
            && let Some(row) = (0..column.len()).find(|&r| column.is_valid(r) && cast.is_null(r))
        {
            let value =
                arrow::util::display::array_value_to_string(column, row).unwrap_or_default();
            return Err(SchedulerError::InvalidValue {
                url: url.to_string(),
                column: name.to_string(),
                value,
                reason: format!("it does not fit the {to} the engine reads it as"),
            });
        }
        Ok(cast)
    };
    let devices = match batch.column_by_name(&c.device) {
        Some(_) => Some(cast(&c.device, &DataType::Int64)?),
        None => None,
    };
    let devices = devices.as_ref().map(|a| a.as_primitive::<Int64Type>());
    if let (Some(partition), Some(column)) = (hive, devices)
        && let Some(row) =
            (0..column.len()).find(|&r| column.is_valid(r) && column.value(r) != partition)
    {
        return Err(SchedulerError::InvalidValue {
            url: url.to_string(),
            column: c.device.clone(),
            value: column.value(row).to_string(),
            reason: format!(
                "the file sits in the partition {}={partition}: a row of another device \
                     would be scored with device {partition}'s model",
                c.device
            ),
        });
    }
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
        if !unit_devices.contains(&d) || !selection.contains(d) || ts.is_null(row) {
            continue;
        }
        let t = ts.value(row);
        if !super::TIMESTAMP_RANGE_US.contains(&t) {
            return Err(super::timestamp_out_of_range(url, &c.timestamp, t));
        }
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
        if d < sink.floor {
            return Err(SchedulerError::InvalidValue {
                url: url.to_string(),
                column: c.device.clone(),
                value: d.to_string(),
                reason: format!(
                    "the file's row-group statistics say its devices are at least {}: \
                     the statistics do not describe the data",
                    sink.floor
                ),
            });
        }
        if let Some((ranks, rank)) = &mut sink.ranks {
            ranks.push(*rank);
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

/// Sorts a unit's rows by (device, sensor, time), stable so ties keep input order, and
/// records each series' row range. `ranks` (when files were read out of input order) is each
/// row's file rank in input order, which ties sort by before their position.
fn sort_and_split(table: &mut UnitTable, ranks: Option<&[u32]>) {
    let n = table.device.len();
    // Every tie-breaker is distinct (its low bits are the row's position), so an unstable
    // sort of the keys gives the stable order.
    let tie = |i: usize| match ranks {
        Some(ranks) => u64::from(ranks[i]) << POSITION_BITS | i as u64,
        None => i as u64,
    };
    let position = |tie: u64| (tie & ((1 << POSITION_BITS) - 1)) as usize;
    let order: Vec<usize> = if table.sensor.is_empty() {
        // The keys side by side with the tie-breaker, sorted unstably, without the random reads
        // of three columns per comparison that sorting indices by a key function does (a
        // tenth of a long-layout run's CPU, `perf record`).
        let mut keys: Vec<(i64, i64, u64)> =
            (0..n).map(|i| (table.device[i], table.timestamp_us[i], tie(i))).collect();
        keys.sort_unstable();
        keys.into_iter().map(|(_, _, t)| position(t)).collect()
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
        let mut keys: Vec<(i64, u32, i64, u64)> = (0..n)
            .map(|i| {
                let rank = rank.get(table.sensor[i] as usize).copied().unwrap_or(u32::MAX);
                (table.device[i], rank, table.timestamp_us[i], tie(i))
            })
            .collect();
        keys.sort_unstable();
        let order: Vec<usize> = keys.into_iter().map(|(.., t)| position(t)).collect();
        table.sensor = order.iter().map(|&i| table.sensor[i]).collect();
        order
    };
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
    use proptest::prelude::*;

    proptest! {
        /// Rows come out in the stable order of (device, sensor by name, time): ties keep their
        /// input order (the values tell rows apart), and each series is one run.
        #[test]
        fn units_sort_stably_by_device_sensor_and_time(
            rows in proptest::collection::vec((0i64..4, 0u32..3, 0i64..5), 0..200),
            long in any::<bool>(),
        ) {
            let names = vec!["b".to_string(), "10".to_string(), "a".to_string()];
            let mut table = UnitTable {
                device: rows.iter().map(|r| r.0).collect(),
                timestamp_us: rows.iter().map(|r| r.2).collect(),
                sensor: if long { rows.iter().map(|r| r.1).collect() } else { Vec::new() },
                sensor_names: if long { names.clone() } else { Vec::new() },
                values: vec![(0..rows.len()).map(|i| i as f64).collect()],
                runs: Vec::new(),
            };
            // "10" sorts before the names that are not numbers, then "a", then "b".
            let rank = |s: u32| [2u32, 0, 1][s as usize];
            let mut expected: Vec<usize> = (0..rows.len()).collect();
            expected.sort_by_key(|&i| {
                let (d, s, t) = rows[i];
                (d, if long { rank(s) } else { 0 }, t)
            });
            sort_and_split(&mut table, None);
            let order: Vec<usize> = table.values[0].iter().map(|v| *v as usize).collect();
            prop_assert_eq!(&order, &expected);
            for (i, &row) in order.iter().enumerate() {
                prop_assert_eq!(table.device[i], rows[row].0);
                prop_assert_eq!(table.timestamp_us[i], rows[row].2);
                if long {
                    prop_assert_eq!(table.sensor[i], rows[row].1);
                }
            }
            let covered: usize = table.runs.iter().map(|s| s.rows.len()).sum();
            prop_assert_eq!(covered, rows.len());
            for pair in table.runs.windows(2) {
                prop_assert!((pair[0].device, pair[0].sensor) != (pair[1].device, pair[1].sensor));
            }
        }
    }
}

#[cfg(test)]
mod chunk_tests;
