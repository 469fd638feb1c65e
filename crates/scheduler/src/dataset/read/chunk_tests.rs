//! Reading a unit in chunks: the chunks are the whole unit, cut between devices.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, TimestampMicrosecondArray};
use arrow::datatypes::{Field, Schema};
use batchscore_io::{Location, Storage, WriteOptions, encode_parquet};
use batchscore_synth::{FileFormat, GenerateSpec, Layout, Partitioning, generate};

use super::*;
use crate::InputColumns;

fn scan(root: &Location) -> Dataset {
    let input = root.join("readings").unwrap();
    let (all, window) = (DeviceSelection::All, TimeWindow::default());
    Dataset::scan(&input, &InputColumns::default(), &all, &window).unwrap()
}

/// Every chunk of the whole dataset read as one unit.
fn chunks(d: &Dataset, chunk_rows: usize) -> Result<Vec<UnitTable>, SchedulerError> {
    let all: Vec<usize> = (0..d.slices.len()).collect();
    let (selection, sensors, window) =
        (DeviceSelection::All, SensorSelection::All, TimeWindow::default());
    let filter = (&(i64::MIN..=i64::MAX), &selection, &sensors, &window);
    let mut out = Vec::new();
    d.read_unit_in_chunks(&all, filter, chunk_rows, &mut |t| {
        out.push(t);
        Ok(())
    })?;
    Ok(out)
}

/// A table's rows as comparable tuples: device, sensor name, time, values' bits.
fn rows(t: &UnitTable) -> Vec<(i64, String, i64, Vec<u64>)> {
    (0..t.device.len())
        .map(|i| {
            let sensor = t.sensor.get(i).map(|&s| t.sensor_names[s as usize].clone());
            let values = t.values.iter().map(|v| v[i].to_bits()).collect();
            (t.device[i], sensor.unwrap_or_default(), t.timestamp_us[i], values)
        })
        .collect()
}

fn check_chunks_make_the_unit(d: &Dataset, chunk_rows: usize) -> usize {
    let all: Vec<usize> = (0..d.slices.len()).collect();
    let whole = d
        .read_unit(
            &all,
            i64::MIN..=i64::MAX,
            &DeviceSelection::All,
            &SensorSelection::All,
            &TimeWindow::default(),
        )
        .unwrap();
    let chunks = chunks(d, chunk_rows).unwrap();
    let joined: Vec<_> = chunks.iter().flat_map(rows).collect();
    assert_eq!(joined, rows(&whole), "chunks of {chunk_rows} rows are the unit, in order");
    for pair in chunks.windows(2) {
        let (last, first) = (pair[0].device.last(), pair[1].device.first());
        assert!(last < first, "chunks hold whole devices, in device order");
    }
    let series: usize = chunks.iter().map(|c| c.runs.len()).sum();
    assert_eq!(series, whole.runs.len(), "no series is split between chunks");
    chunks.len()
}

#[test]
fn sorted_and_partitioned_input_streams_in_chunks_of_whole_devices() {
    let storage = Storage::new().unwrap();
    for (name, partitioning, layout, format) in [
        ("sorted", Partitioning::None, Layout::Wide, FileFormat::Parquet),
        ("hive", Partitioning::Device, Layout::Wide, FileFormat::Parquet),
        ("long", Partitioning::None, Layout::Long, FileFormat::Parquet),
        ("csv", Partitioning::None, Layout::Wide, FileFormat::Csv),
    ] {
        let root = storage.open(&format!("memory://chunks/{name}")).unwrap();
        let spec = GenerateSpec {
            devices: 12,
            sensors: 2,
            rows_per_device: 30,
            row_group_rows: 16,
            partitioning,
            layout,
            format,
            ..Default::default()
        };
        generate(&spec, &root).unwrap();
        let d = scan(&root);
        for chunk_rows in [1, 7, 64, usize::MAX] {
            let n = check_chunks_make_the_unit(&d, chunk_rows);
            match (format, chunk_rows) {
                (_, usize::MAX) => assert_eq!(n, 1, "{name}: one chunk"),
                // CSV has no statistics: nothing is known complete before the end.
                (FileFormat::Csv, _) => assert_eq!(n, 1, "{name}: CSV is gathered whole"),
                (_, 1) => assert!(n >= 11, "{name}: a chunk per device or so, got {n}"),
                _ => assert!(n > 1, "{name}: {chunk_rows}-row chunks, got {n}"),
            }
        }
    }
}

#[test]
fn a_large_file_streams_row_group_by_row_group() {
    // Over 1 MiB: read by ranged requests through the footer kept at planning.
    let storage = Storage::new().unwrap();
    let root = storage.open("memory://chunks/large").unwrap();
    let spec = GenerateSpec {
        devices: 20,
        rows_per_device: 2_000,
        row_group_rows: 4_096,
        ..Default::default()
    };
    generate(&spec, &root).unwrap();
    let d = scan(&root);
    let size = root.size_of("readings/part-00000.parquet").unwrap().unwrap_or(0);
    assert!(size > 1 << 20, "{size} bytes");
    let n = check_chunks_make_the_unit(&d, 1);
    assert!(n >= 9, "a chunk per row group, got {n}");
    // A chunk's consumer writes to storage, blocking on the runtime that fetches the
    // input's ranges: it must not be called from inside it (it panicked when it was).
    let all: Vec<usize> = (0..d.slices.len()).collect();
    let (selection, sensors, window) =
        (DeviceSelection::All, SensorSelection::All, TimeWindow::default());
    let filter = (&(i64::MIN..=i64::MAX), &selection, &sensors, &window);
    let mut written = 0;
    d.read_unit_in_chunks(&all, filter, 1, &mut |t| {
        root.put(&format!("out/{written}"), bytes::Bytes::from(t.device.len().to_string()))?;
        written += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(written, n);
}

/// Writes `readings/NAME` holding `(device, minute, value)` rows in that order.
fn put_file(root: &Location, name: &str, rows: &[(i64, i64, f64)], row_group_rows: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Int64, false),
        Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, None), false),
        Field::new("temperature", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(TimestampMicrosecondArray::from_iter_values(
                rows.iter().map(|r| r.1 * 60_000_000),
            )),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap();
    let options = WriteOptions { row_group_rows, ..WriteOptions::default() };
    let bytes = encode_parquet(&schema, &[batch], &options).unwrap();
    root.put(&format!("readings/{name}"), bytes).unwrap();
}

#[test]
fn ties_keep_input_order_when_files_are_read_out_of_it() {
    let storage = Storage::new().unwrap();
    let root = storage.open("memory://chunks/ties").unwrap();
    // `a` holds devices 1 and 5, `b` device 1 alone: `b` is read first (its smallest
    // device interval is), yet device 1's rows at minute 0 keep input order, `a`'s first.
    put_file(&root, "a.parquet", &[(5, 0, 50.0), (1, 0, 10.0), (1, 1, 11.0)], 16);
    put_file(&root, "b.parquet", &[(1, 0, 20.0), (1, 2, 21.0)], 16);
    let d = scan(&root);
    for chunk_rows in [1, usize::MAX] {
        let chunks = chunks(&d, chunk_rows).unwrap();
        let values: Vec<f64> = chunks.iter().flat_map(|c| c.values[0].clone()).collect();
        assert_eq!(values, vec![10.0, 20.0, 11.0, 21.0, 50.0], "{chunk_rows}-row chunks");
    }
}

#[test]
fn input_in_time_order_is_gathered_whole() {
    let storage = Storage::new().unwrap();
    let root = storage.open("memory://chunks/time").unwrap();
    // Every row group holds every device: no device is complete before the end.
    let rows: Vec<(i64, i64, f64)> =
        (0..40).flat_map(|m| (0..5).map(move |d| (d, m, (d * 100 + m) as f64))).collect();
    put_file(&root, "t.parquet", &rows, 10);
    let d = scan(&root);
    assert_eq!(check_chunks_make_the_unit(&d, 1), 1);
}

#[test]
fn statistics_that_lie_about_devices_are_an_error_not_a_split_series() {
    let storage = Storage::new().unwrap();
    let root = storage.open("memory://chunks/lie").unwrap();
    let rows: Vec<(i64, i64, f64)> =
        (0..3).flat_map(|d| (0..20).map(move |m| (d, m, m as f64))).collect();
    put_file(&root, "s.parquet", &rows, 10);
    let mut d = scan(&root);
    assert_eq!(d.slices.len(), 6);
    // The second row group holds device 0, but is said to hold device 5 only: once the
    // first is read, device 0 looks complete and goes out; its later rows must not
    // start a second series of it.
    (d.slices[1].lo, d.slices[1].hi) = (5, 5);
    let error = chunks(&d, 1).unwrap_err();
    assert!(
        matches!(&error, SchedulerError::InvalidValue { column, value, .. }
            if column == "device_id" && value == "0"),
        "{error}"
    );
    assert_eq!(error.class(), batchscore_io::ErrorClass::BadInput);
}
