//! Writing generated telemetry as Parquet or CSV, wide or long, partitioned or not.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use batchscore_io::{IoError, Location, ParquetCodec, WriteOptions, encode_csv, encode_parquet};
use rayon::prelude::*;

use crate::{DeviceSeries, sensor_names};

/// How readings are split into files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioning {
    /// Hive partitions `device_id=N/part-0.parquet`, one per device.
    Device,
    /// Files holding many devices, sorted by device and time.
    None,
}

/// Column layout of the readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `device_id, timestamp, <one column per sensor>`.
    Wide,
    /// `timestamp, device, sensor, value`, one row per reading.
    Long,
}

/// File format of the readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Parquet,
    Csv,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateSpec {
    pub devices: u32,
    pub sensors: usize,
    pub rows_per_device: usize,
    pub seed: u64,
    /// First timestamp, microseconds since the Unix epoch (UTC).
    pub start_us: i64,
    /// Sampling interval in seconds.
    pub interval_s: u32,
    /// Share of anomalous rows.
    pub anomaly_rate: f64,
    pub partitioning: Partitioning,
    pub layout: Layout,
    pub format: FileFormat,
    /// Upper bound on rows per file when not partitioned by device.
    pub rows_per_file: usize,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
}

impl Default for GenerateSpec {
    fn default() -> Self {
        Self {
            devices: 100,
            sensors: 8,
            rows_per_device: 1000,
            seed: 42,
            start_us: 1_767_225_600_000_000, // 2026-01-01T00:00:00Z
            interval_s: 60,
            anomaly_rate: 0.01,
            partitioning: Partitioning::None,
            layout: Layout::Wide,
            format: FileFormat::Parquet,
            rows_per_file: 1_000_000,
            row_group_rows: 64 * 1024,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateSummary {
    pub files: usize,
    pub rows: u64,
    pub anomalies: u64,
    pub bytes: u64,
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("invalid generate settings: {0}")]
    Invalid(String),
    #[error("cannot build the {what} table")]
    Arrow {
        what: &'static str,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error(transparent)]
    Io(#[from] IoError),
}

impl SynthError {
    /// The class of this error (see [`batchscore_io::ErrorClass`]).
    pub fn class(&self) -> batchscore_io::ErrorClass {
        match self {
            SynthError::Invalid(_) => batchscore_io::ErrorClass::Usage,
            SynthError::Io(e) => e.class(),
            SynthError::Arrow { .. } => batchscore_io::ErrorClass::Internal,
        }
    }
}

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Generates readings under `out/readings/` and labels at `out/labels.parquet`, using the
/// current rayon pool for parallelism.
pub fn generate(spec: &GenerateSpec, out: &Location) -> Result<GenerateSummary, SynthError> {
    if spec.devices == 0 || spec.sensors == 0 || spec.rows_per_device == 0 {
        return Err(SynthError::Invalid("devices, sensors and rows must be positive".into()));
    }
    if !(0.0..0.5).contains(&spec.anomaly_rate) {
        return Err(SynthError::Invalid("anomaly rate must be in [0, 0.5)".into()));
    }
    let devices_per_file = match spec.partitioning {
        Partitioning::Device => 1,
        Partitioning::None => (spec.rows_per_file / spec.rows_per_device).max(1),
    };
    let files: Vec<(usize, std::ops::Range<i64>)> = (0..i64::from(spec.devices))
        .step_by(devices_per_file)
        .enumerate()
        .map(|(i, start)| {
            (i, start..(start + devices_per_file as i64).min(i64::from(spec.devices)))
        })
        .collect();
    let names = sensor_names(spec.sensors);
    let ext = match spec.format {
        FileFormat::Parquet => "parquet",
        FileFormat::Csv => "csv",
    };

    // Files are written in parallel; each holds a bounded number of rows, so memory stays
    // bounded by threads x rows_per_file.
    let per_file: Vec<(GenerateSummary, Vec<RecordBatch>)> = files
        .par_iter()
        .map(|(index, devices)| -> Result<_, SynthError> {
            let series: Vec<(i64, DeviceSeries)> = devices
                .clone()
                .map(|d| {
                    let s = DeviceSeries::generate(
                        spec.seed,
                        d,
                        spec.sensors,
                        spec.rows_per_device,
                        f64::from(spec.interval_s),
                        spec.anomaly_rate,
                    );
                    (d, s)
                })
                .collect();
            let hive = spec.partitioning == Partitioning::Device;
            let batch = match spec.layout {
                Layout::Wide => wide_batch(spec, &names, &series, !hive)?,
                Layout::Long => long_batch(spec, &names, &series)?,
            };
            let bytes = match spec.format {
                FileFormat::Parquet => encode_parquet(
                    batch.schema_ref(),
                    std::slice::from_ref(&batch),
                    &WriteOptions {
                        row_group_rows: spec.row_group_rows,
                        // Not the output default (level 1): a seed keeps generating the same
                        // bytes it did before that default changed, so cached benchmark data
                        // and the tests' damaged-file fixtures stay valid.
                        codec: ParquetCodec::Zstd(3),
                        ..WriteOptions::default()
                    },
                )?,
                FileFormat::Csv => encode_csv(std::slice::from_ref(&batch))?,
            };
            let path = if hive {
                format!("readings/device_id={}/part-00000.{ext}", devices.start)
            } else {
                format!("readings/part-{index:05}.{ext}")
            };
            out.put(&path, bytes.clone())?;
            let labels = label_batch(spec, &series)?;
            let anomalies = series
                .iter()
                .map(|(_, s)| s.labels.iter().filter(|l| l.is_some()).count() as u64)
                .sum();
            let summary = GenerateSummary {
                files: 1,
                rows: (series.len() * spec.rows_per_device) as u64,
                anomalies,
                bytes: bytes.len() as u64,
            };
            Ok((summary, vec![labels]))
        })
        .collect::<Result<_, _>>()?;

    let mut summary = GenerateSummary::default();
    let mut labels = Vec::new();
    for (s, l) in per_file {
        summary.files += s.files;
        summary.rows += s.rows;
        summary.anomalies += s.anomalies;
        summary.bytes += s.bytes;
        labels.extend(l);
    }
    let schema = label_schema();
    let options = WriteOptions { codec: ParquetCodec::Zstd(3), ..WriteOptions::default() };
    out.put("labels.parquet", encode_parquet(&schema, &labels, &options)?)?;
    Ok(summary)
}

fn arrow_error(what: &'static str) -> impl Fn(arrow::error::ArrowError) -> SynthError {
    move |source| SynthError::Arrow { what, source }
}

fn timestamps(spec: &GenerateSpec) -> impl Iterator<Item = i64> + '_ {
    let step = i64::from(spec.interval_s) * 1_000_000;
    (0..spec.rows_per_device as i64).map(move |t| spec.start_us + t * step)
}

fn wide_batch(
    spec: &GenerateSpec,
    names: &[String],
    series: &[(i64, DeviceSeries)],
    with_device: bool,
) -> Result<RecordBatch, SynthError> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    if with_device {
        fields.push(Field::new("device_id", DataType::Int64, false));
        let ids = series.iter().flat_map(|(d, _)| std::iter::repeat_n(*d, spec.rows_per_device));
        columns.push(Arc::new(Int64Array::from_iter_values(ids)));
    }
    fields.push(Field::new("timestamp", timestamp_type(), false));
    let ts = series.iter().flat_map(|_| timestamps(spec));
    columns.push(Arc::new(TimestampMicrosecondArray::from_iter_values(ts).with_timezone("UTC")));
    for (s, name) in names.iter().enumerate() {
        fields.push(Field::new(name, DataType::Float64, true));
        let values = series.iter().flat_map(|(_, d)| d.values[s].iter().copied());
        columns.push(Arc::new(Float64Array::from_iter_values(values)));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(arrow_error("readings"))
}

fn long_batch(
    spec: &GenerateSpec,
    names: &[String],
    series: &[(i64, DeviceSeries)],
) -> Result<RecordBatch, SynthError> {
    let (mut ts, mut device, mut sensor, mut value) = (vec![], vec![], vec![], vec![]);
    for (d, s) in series {
        for (t, stamp) in timestamps(spec).enumerate() {
            for (i, name) in names.iter().enumerate() {
                ts.push(stamp);
                device.push(*d);
                sensor.push(name.as_str());
                value.push(s.values[i][t]);
            }
        }
    }
    let schema = Schema::new(vec![
        Field::new("timestamp", timestamp_type(), false),
        Field::new("device", DataType::Int64, false),
        Field::new("sensor", DataType::Utf8, false),
        Field::new("value", DataType::Float64, true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
            Arc::new(Int64Array::from(device)),
            Arc::new(StringArray::from(sensor)),
            Arc::new(Float64Array::from(value)),
        ],
    )
    .map_err(arrow_error("long readings"))
}

fn label_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Int64, false),
        Field::new("timestamp", timestamp_type(), false),
        Field::new("is_anomaly", DataType::Boolean, false),
        Field::new("anomaly_kind", DataType::Utf8, true),
    ]))
}

fn label_batch(
    spec: &GenerateSpec,
    series: &[(i64, DeviceSeries)],
) -> Result<RecordBatch, SynthError> {
    let ids = series.iter().flat_map(|(d, _)| std::iter::repeat_n(*d, spec.rows_per_device));
    let ts = series.iter().flat_map(|_| timestamps(spec));
    let flags = series.iter().flat_map(|(_, s)| s.labels.iter().map(Option::is_some));
    let kinds = series.iter().flat_map(|(_, s)| s.labels.iter().map(|l| l.map(|k| k.as_str())));
    RecordBatch::try_new(
        label_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(ids)),
            Arc::new(TimestampMicrosecondArray::from_iter_values(ts).with_timezone("UTC")),
            Arc::new(BooleanArray::from_iter(flags.map(Some))),
            Arc::new(StringArray::from_iter(kinds)),
        ],
    )
    .map_err(arrow_error("labels"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchscore_io::{ParquetSource, Storage};

    #[test]
    fn writes_partitioned_and_packed_layouts_identically() {
        let storage = Storage::new().unwrap();
        let spec = GenerateSpec {
            devices: 5,
            rows_per_device: 50,
            rows_per_file: 120,
            ..Default::default()
        };
        let packed = storage.open("memory://g/packed").unwrap();
        let s = generate(&spec, &packed).unwrap();
        assert_eq!((s.files, s.rows), (3, 250));
        let files: Vec<String> =
            packed.list("readings").unwrap().into_iter().map(|e| e.path).collect();
        assert_eq!(
            files,
            [
                "readings/part-00000.parquet",
                "readings/part-00001.parquet",
                "readings/part-00002.parquet"
            ]
        );
        let hive = storage.open("memory://g/hive").unwrap();
        let spec_hive = GenerateSpec { partitioning: Partitioning::Device, ..spec.clone() };
        assert_eq!(generate(&spec_hive, &hive).unwrap().files, 5);
        let sources = ParquetSource::open_all(&hive, &hive.list("readings").unwrap()).unwrap();
        assert_eq!(sources[0].path(), "readings/device_id=0/part-00000.parquet");
        assert!(sources[0].schema().index_of("device_id").is_err());
        // Same seed, same bytes.
        let again = storage.open("memory://g/again").unwrap();
        generate(&spec, &again).unwrap();
        assert_eq!(
            packed.get("readings/part-00001.parquet").unwrap(),
            again.get("readings/part-00001.parquet").unwrap()
        );
        assert_eq!(packed.get("labels.parquet").unwrap(), again.get("labels.parquet").unwrap());
    }

    #[test]
    fn long_csv_layout() {
        let storage = Storage::new().unwrap();
        let spec = GenerateSpec {
            devices: 2,
            sensors: 3,
            rows_per_device: 4,
            layout: Layout::Long,
            format: FileFormat::Csv,
            ..Default::default()
        };
        let out = storage.open("memory://g/long").unwrap();
        generate(&spec, &out).unwrap();
        let text = String::from_utf8(out.get("readings/part-00000.csv").unwrap().to_vec()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "timestamp,device,sensor,value");
        assert_eq!(lines.len(), 1 + 2 * 3 * 4);
        assert!(lines[1].starts_with("2026-01-01T00:00:00Z,0,temperature,"), "{}", lines[1]);
    }
}
