//! Encoding output: Parquet with the codec, statistics and row groups [`WriteOptions`] choose,
//! and CSV with RFC 3339 timestamps. Used in memory here and streamed by `upload`.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::IoError;

/// How Parquet output is encoded.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Rows per row group: small enough for statistics to prune, large enough to compress well.
    pub row_group_rows: usize,
    /// Key-value pairs stored in the file footer.
    pub metadata: Vec<(String, String)>,
    /// The compression codec of every column.
    pub codec: ParquetCodec,
    /// Where min/max statistics are kept.
    pub statistics: ParquetStatistics,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            row_group_rows: 128 * 1024,
            metadata: Vec::new(),
            codec: ParquetCodec::default(),
            statistics: ParquetStatistics::default(),
        }
    }
}

/// A Parquet compression codec every mainstream reader (pyarrow, DuckDB, Spark 3, polars)
/// decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParquetCodec {
    /// zstd at a level from 1 (fastest) to 22 (smallest).
    Zstd(i32),
    /// Snappy: fast, larger files.
    Snappy,
    /// No compression.
    Uncompressed,
}

impl Default for ParquetCodec {
    /// zstd level 1: on scored parts, files within 0.4 % of level 3's size (sensor readings and
    /// scores are near-random doubles; the gain is in ids, timestamps and strings, which the
    /// fastest level already finds), encoded 10-15 % faster; snappy would write 10 % bigger
    /// files (docs/benchmarks.md, "The write path").
    fn default() -> Self {
        Self::Zstd(1)
    }
}

/// Where the writer keeps min/max statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParquetStatistics {
    /// Per column chunk (row group), in the footer: what readers prune row groups with.
    Chunk,
    /// Per page as well, in the page index: finer pruning for readers that use it, more to
    /// compute and a bigger footer.
    #[default]
    Page,
}

/// Encodes batches as one Parquet file in memory (by default zstd, statistics per page).
///
/// The bytes depend only on the batches and options, so a rerun writes identical files.
pub fn encode_parquet(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    options: &WriteOptions,
) -> Result<Bytes, IoError> {
    let encode =
        |source: ParquetError| IoError::Encode { what: "Parquet".into(), source: Box::new(source) };
    let props = writer_properties(options, schema).map_err(encode)?;
    let mut buffer = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut buffer, schema.clone(), Some(props)).map_err(encode)?;
    for batch in batches {
        writer.write(batch).map_err(encode)?;
    }
    writer.close().map_err(encode)?;
    Ok(Bytes::from(buffer))
}

/// The writer settings of every Parquet file batchscore writes.
///
/// Dictionary encoding is on only for string and integer columns (device ids, sensors, model
/// versions), where values repeat. Floats and timestamps are nearly all distinct: a dictionary
/// would hash every value only to fall back to plain encoding (measured: a tenth of a scoring
/// run's CPU went to the dictionary's hash table).
pub(crate) fn writer_properties(
    options: &WriteOptions,
    schema: &SchemaRef,
) -> Result<WriterProperties, ParquetError> {
    let kv: Vec<KeyValue> =
        options.metadata.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
    let compression = match options.codec {
        ParquetCodec::Zstd(level) => Compression::ZSTD(ZstdLevel::try_new(level)?),
        ParquetCodec::Snappy => Compression::SNAPPY,
        ParquetCodec::Uncompressed => Compression::UNCOMPRESSED,
    };
    let statistics = match options.statistics {
        ParquetStatistics::Chunk => EnabledStatistics::Chunk,
        ParquetStatistics::Page => EnabledStatistics::Page,
    };
    let mut builder = WriterProperties::builder()
        .set_compression(compression)
        .set_statistics_enabled(statistics)
        .set_max_row_group_row_count(Some(options.row_group_rows.max(1)))
        .set_key_value_metadata((!kv.is_empty()).then_some(kv))
        .set_dictionary_enabled(false);
    for field in schema.fields() {
        let repeats = matches!(
            field.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Dictionary(..)
        ) || field.data_type().is_integer();
        if repeats {
            builder = builder
                .set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), true);
        }
    }
    Ok(builder.build())
}

/// Encodes batches as CSV with a header row; UTC timestamps are written as RFC 3339.
pub fn encode_csv(batches: &[RecordBatch]) -> Result<Bytes, IoError> {
    let encode =
        |e: arrow::error::ArrowError| IoError::Encode { what: "CSV".into(), source: Box::new(e) };
    let mut buffer = Vec::new();
    {
        let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(&mut buffer);
        for batch in batches {
            writer.write(&utc_as_offset(batch).map_err(encode)?).map_err(encode)?;
        }
    }
    Ok(Bytes::from(buffer))
}

/// Re-tags `UTC` timestamp columns as `+00:00`: the CSV writer formats offset time zones
/// without the time-zone database (which would add a large dependency), and the instants are
/// the same.
pub(crate) fn utc_as_offset(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        match field.data_type() {
            DataType::Timestamp(unit, Some(tz))
                if matches!(tz.as_ref(), "UTC" | "Z" | "Etc/UTC") =>
            {
                let data_type = DataType::Timestamp(*unit, Some("+00:00".into()));
                columns.push(arrow::compute::cast(column, &data_type)?);
                fields.push(Field::new(field.name(), data_type, field.is_nullable()));
            }
            _ => {
                columns.push(column.clone());
                fields.push(field.as_ref().clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}
