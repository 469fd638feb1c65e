//! Parquet in and out: footers, row-group statistics, projected range reads, encoding.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::statistics::Statistics;
use parquet::schema::types::ColumnPath;

use crate::{Entry, IoError, Location};

/// How many footers are fetched at once when opening many files.
const FOOTER_CONCURRENCY: usize = 16;
/// Bytes fetched from the end of a file in the first request: most footers fit, so one request.
const FOOTER_PREFETCH: usize = 64 * 1024;
/// Rows per decoded batch.
const READ_BATCH_ROWS: usize = 64 * 1024;

/// A Parquet object whose footer has been read: schema, row groups and their statistics.
#[derive(Debug, Clone)]
pub struct ParquetSource {
    location: Location,
    path: String,
    size: u64,
    meta: ArrowReaderMetadata,
}

/// Reads byte ranges of one object; the footer is fetched once and then reused.
struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
    metadata: Option<Arc<ParquetMetaData>>,
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move { self.store.get_range(&self.path, range).await.map_err(external) }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        // The store coalesces nearby ranges into fewer requests.
        async move { self.store.get_ranges(&self.path, &ranges).await.map_err(external) }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            if let Some(metadata) = &self.metadata {
                return Ok(metadata.clone());
            }
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(FOOTER_PREFETCH))
                .load_and_finish(&mut *self, size)
                .await?;
            let metadata = Arc::new(metadata);
            self.metadata = Some(metadata.clone());
            Ok(metadata)
        }
        .boxed()
    }
}

impl ParquetSource {
    /// Reads the footers of `entries` below `location`, a bounded number at a time.
    pub fn open_all(location: &Location, entries: &[Entry]) -> Result<Vec<ParquetSource>, IoError> {
        let futures = entries.iter().map(|entry| {
            let location = location.clone();
            let entry = entry.clone();
            async move {
                let (store, path) = location.resolve(&entry.path)?;
                let mut reader = ObjectReader { store, path, size: entry.size, metadata: None };
                let url = location.url_of(&entry.path);
                let metadata = reader.get_metadata(None).await.map_err(|source| match source {
                    ParquetError::External(e) => match e.downcast::<object_store::Error>() {
                        Ok(store_error) => IoError::storage(url.clone(), *store_error),
                        Err(other) => IoError::Parquet {
                            url: url.clone(),
                            source: ParquetError::External(other),
                        },
                    },
                    source => IoError::Parquet { url: url.clone(), source },
                })?;
                let meta = ArrowReaderMetadata::try_new(metadata, ArrowReaderOptions::new())
                    .map_err(|source| IoError::Parquet { url, source })?;
                Ok(ParquetSource { location, path: entry.path, size: entry.size, meta })
            }
        });
        location.block_on(
            futures::stream::iter(futures).buffered(FOOTER_CONCURRENCY).try_collect::<Vec<_>>(),
        )
    }

    /// Relative path of the file below the location it was opened from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The file's URL, for messages.
    pub fn url(&self) -> String {
        self.location.url_of(&self.path)
    }

    /// Size of the file in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file's Arrow schema.
    pub fn schema(&self) -> &SchemaRef {
        self.meta.schema()
    }

    /// Number of row groups.
    pub fn num_row_groups(&self) -> usize {
        self.meta.metadata().num_row_groups()
    }

    /// Rows in row group `rg`.
    pub fn row_group_rows(&self, rg: usize) -> u64 {
        self.meta.metadata().row_group(rg).num_rows().max(0) as u64
    }

    /// `(min, max)` of an integer or timestamp column in row group `rg`, from its statistics.
    ///
    /// `None` when the file has no statistics for it; callers must then read the row group.
    pub fn int_range(&self, rg: usize, column: &str) -> Option<(i64, i64)> {
        let metadata = self.meta.metadata();
        let index = metadata
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.path().string() == column)?;
        match metadata.row_group(rg).column(index).statistics()? {
            Statistics::Int64(s) => Some((*s.min_opt()?, *s.max_opt()?)),
            Statistics::Int32(s) => Some((i64::from(*s.min_opt()?), i64::from(*s.max_opt()?))),
            _ => None,
        }
    }

    /// Decodes the given row groups, keeping only the named top-level columns.
    ///
    /// Only the byte ranges of those column chunks are fetched.
    pub fn read(
        &self,
        row_groups: &[usize],
        columns: &[&str],
    ) -> Result<Vec<RecordBatch>, IoError> {
        let url = self.url();
        let schema = self.schema();
        let mut indices = Vec::with_capacity(columns.len());
        for column in columns {
            let index = schema.index_of(column).map_err(|_| IoError::MissingColumn {
                url: url.clone(),
                column: (*column).to_string(),
            })?;
            indices.push(index);
        }
        let (store, path) = self.location.resolve(&self.path)?;
        let reader = ObjectReader {
            store,
            path,
            size: self.size,
            metadata: Some(self.meta.metadata().clone()),
        };
        let mask =
            ProjectionMask::roots(self.meta.metadata().file_metadata().schema_descr(), indices);
        let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, self.meta.clone())
            .with_row_groups(row_groups.to_vec())
            .with_projection(mask)
            .with_batch_size(READ_BATCH_ROWS);
        let parquet_error = |source| IoError::Parquet { url: url.clone(), source };
        self.location.block_on(async {
            let stream = builder.build().map_err(parquet_error)?;
            stream.try_collect::<Vec<_>>().await.map_err(parquet_error)
        })
    }
}

/// How Parquet output is encoded.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Rows per row group: small enough for statistics to prune, large enough to compress well.
    pub row_group_rows: usize,
    /// Key-value pairs stored in the file footer.
    pub metadata: Vec<(String, String)>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self { row_group_rows: 128 * 1024, metadata: Vec::new() }
    }
}

/// Encodes batches as one Parquet file in memory (zstd, statistics on).
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
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
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

/// Decodes a whole Parquet file held in memory.
pub fn decode_parquet(url: &str, bytes: Bytes) -> Result<Vec<RecordBatch>, IoError> {
    let parquet_error = |source| IoError::Parquet { url: url.into(), source };
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(parquet_error)?
        .build()
        .map_err(parquet_error)?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parquet_error(ParquetError::ArrowError(e.to_string())))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Location, Storage};
    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(devices: Vec<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("device_id", DataType::Int64, false),
            Field::new("v", DataType::Float64, true),
        ]));
        let values: Vec<f64> = devices.iter().map(|d| *d as f64 * 0.5).collect();
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(devices)), Arc::new(Float64Array::from(values))],
        )
        .unwrap()
    }

    #[test]
    fn statistics_prune_and_projection_reads_on_every_backend() {
        let (_dir, storage, urls) = crate::backends::all("parquet");
        for url in &urls {
            statistics_prune_and_projection_reads(&storage.open(url).unwrap());
        }
    }

    fn statistics_prune_and_projection_reads(loc: &Location) {
        let b = batch((0..1000).collect());
        let options =
            WriteOptions { row_group_rows: 100, metadata: vec![("k".into(), "v".into())] };
        let schema = b.schema();
        let bytes = encode_parquet(&schema, std::slice::from_ref(&b), &options).unwrap();
        assert_eq!(bytes, encode_parquet(&schema, &[b], &options).unwrap());
        loc.put("f.parquet", bytes).unwrap();
        let sources = ParquetSource::open_all(loc, &loc.list("").unwrap()).unwrap();
        let source = &sources[0];
        assert_eq!(source.num_row_groups(), 10);
        assert_eq!(source.int_range(3, "device_id"), Some((300, 399)));
        assert_eq!(source.int_range(3, "v"), None);
        let read = source.read(&[3, 7], &["v"]).unwrap();
        let rows: usize = read.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 200);
        assert_eq!(read[0].num_columns(), 1);
        assert!(matches!(source.read(&[0], &["nope"]), Err(IoError::MissingColumn { .. })));
    }

    #[test]
    fn truncated_files_are_errors_naming_the_file() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://bad").unwrap();
        let b = batch((0..10).collect());
        let bytes = encode_parquet(&b.schema(), &[b], &WriteOptions::default()).unwrap();
        loc.put("t.parquet", bytes.slice(0..bytes.len() / 2)).unwrap();
        loc.put("x.parquet", Bytes::from_static(b"not parquet at all")).unwrap();
        for name in ["t.parquet", "x.parquet"] {
            let entries: Vec<Entry> =
                loc.list("").unwrap().into_iter().filter(|e| e.path == name).collect();
            let err = ParquetSource::open_all(&loc, &entries).unwrap_err();
            assert!(matches!(err, IoError::Parquet { .. }), "{err:?}");
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
