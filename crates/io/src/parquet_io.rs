//! Parquet in: footers, row-group statistics, projected range reads, decoding guarded against the parquet crate's panics.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::basic::Type as PhysicalType;
use parquet::errors::ParquetError;
use parquet::file::FOOTER_SIZE;
use parquet::file::metadata::{
    ColumnChunkMetaData, FooterTail, ParquetMetaData, ParquetMetaDataReader,
};
use parquet::file::statistics::Statistics;

use crate::{Entry, IoError, Location};

/// How many footers are fetched at once when opening many files.
const FOOTER_CONCURRENCY: usize = 16;
/// Bytes fetched from the end of a file in the first request: most footers fit, so one request.
const FOOTER_PREFETCH: usize = 64 * 1024;
/// Files up to this size are read whole, in one request, and their footers are not kept
/// between planning and reading: small files are the ones that come by the thousand.
const SMALL_FILE: u64 = 1 << 20;
/// Rows per decoded batch: the decoder's buffers are a batch's size, and a unit streams in
/// batches (docs/benchmarks.md, "Flat memory").
const READ_BATCH_ROWS: usize = 16 * 1024;

/// A Parquet object whose footer has been read: schema, row groups and their statistics.
///
/// Planning keeps every input file's source at once, so a source holds only what planning asks
/// (row counts and the ranges of integer columns), and `read` decodes the footer again: a
/// decoded footer takes about six times its encoded size (measured: 12.5 KB against 2.1 KB for
/// an 11-column file), which made the footers of 10,000 files the largest part of a run's
/// memory. A large file keeps its footer's raw bytes and reads only the projected column
/// chunks; a small one (up to `SMALL_FILE`) keeps nothing and is read whole, in the one
/// request its column chunks would have taken anyway.
#[derive(Debug, Clone)]
pub struct ParquetSource {
    location: Location,
    path: String,
    size: u64,
    schema: SchemaRef,
    /// Top-level integer columns whose statistics `int_range` answers from.
    int_columns: Arc<[String]>,
    row_groups: Vec<RowGroupSummary>,
    /// A large file's footer Thrift bytes (without the 8-byte tail); `None` for a small file.
    footer: Option<Bytes>,
}

/// What planning reads of one row group.
#[derive(Debug, Clone)]
struct RowGroupSummary {
    rows: u64,
    /// `(min, max)` of each of the file's `int_columns`, when the statistics hold them.
    int_ranges: Box<[Option<(i64, i64)>]>,
}

/// Reads byte ranges of one object for the Parquet reader, with its footer already decoded.
struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    metadata: Arc<ParquetMetaData>,
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
        async move { Ok(self.metadata.clone()) }.boxed()
    }
}

/// The length of the footer's Thrift bytes, from a `size`-byte file's last 8 bytes.
fn footer_len(last: &[u8], size: u64) -> Result<u64, ParquetError> {
    let tail_len = FOOTER_SIZE as u64;
    let last: &[u8; FOOTER_SIZE] = last.try_into().map_err(|_| {
        ParquetError::General(format!("{size} bytes is too small for a Parquet file"))
    })?;
    let footer_tail = FooterTail::try_new(last)?;
    if footer_tail.is_encrypted_footer() {
        return Err(ParquetError::General("encrypted footers are not supported".into()));
    }
    let len = footer_tail.metadata_length() as u64;
    // The leading magic, the footer and its tail must fit.
    if len + tail_len + 4 > size {
        return Err(ParquetError::General(format!(
            "the footer announces {len} bytes, more than the file's {size}"
        )));
    }
    Ok(len)
}

/// The footer's Thrift bytes inside a whole file.
fn footer_of(file: &[u8]) -> Result<&[u8], ParquetError> {
    let size = file.len();
    let last = file.get(size.saturating_sub(FOOTER_SIZE)..).unwrap_or_default();
    let len = footer_len(last, size as u64)? as usize;
    let end = size - FOOTER_SIZE;
    Ok(&file[end - len..end])
}

/// Fetches the footer's Thrift bytes of a `size`-byte object: one request when the footer fits
/// in the last `FOOTER_PREFETCH` bytes (nearly always), two otherwise.
async fn fetch_footer(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    size: u64,
    e_tag: Option<&str>,
) -> Result<Bytes, ParquetError> {
    let tail_len = FOOTER_SIZE as u64;
    // A file too short for the magic and a footer (an empty file, say) is refused before any
    // request: asking a store for an empty range is an error of the store, not of the file.
    if size < tail_len + 4 {
        return Err(ParquetError::General(format!("{size} bytes is too small for a Parquet file")));
    }
    let prefetch = (FOOTER_PREFETCH as u64).min(size);
    let tail = crate::location::get_range_if(store, path, size - prefetch..size, e_tag)
        .await
        .map_err(external)?;
    let len =
        footer_len(tail.get(tail.len().saturating_sub(FOOTER_SIZE)..).unwrap_or_default(), size)?;
    if len + tail_len <= prefetch {
        let end = tail.len() - FOOTER_SIZE;
        // A copy, not a slice: a slice would keep the whole prefetched range alive.
        return Ok(Bytes::copy_from_slice(&tail[end - len as usize..end]));
    }
    store.get_range(path, size - tail_len - len..size - tail_len).await.map_err(external)
}

/// The Arrow view of the footer bytes of a `size`-byte file, its column chunk ranges checked.
fn arrow_metadata(footer: &[u8], size: u64) -> Result<ArrowReaderMetadata, ParquetError> {
    let metadata = ParquetMetaDataReader::decode_metadata(footer)?;
    check_chunk_ranges(&metadata, size)?;
    // The Arrow schema a writer may embed is IPC-encoded, and arrow-ipc panics on some damaged
    // ones; the engine casts every column to its own types, so the Parquet schema suffices.
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    ArrowReaderMetadata::try_new(Arc::new(metadata), options)
}

/// Every column chunk must lie inside the file: the parquet crate asserts (panics) on a
/// negative offset or length, and a damaged footer can hold either.
fn check_chunk_ranges(metadata: &ParquetMetaData, size: u64) -> Result<(), ParquetError> {
    for (g, group) in metadata.row_groups().iter().enumerate() {
        for (c, column) in group.columns().iter().enumerate() {
            let start =
                column.dictionary_page_offset().unwrap_or_else(|| column.data_page_offset());
            let len = column.compressed_size();
            let inside = u64::try_from(start)
                .ok()
                .zip(u64::try_from(len).ok())
                .and_then(|(start, len)| start.checked_add(len))
                .is_some_and(|end| end <= size)
                && column.data_page_offset() >= 0;
            if !inside {
                return Err(ParquetError::General(format!(
                    "row group {g}, column {c}: its chunk ({len} bytes at offset {start}) lies \
                     outside the {size}-byte file"
                )));
            }
        }
    }
    Ok(())
}

impl ParquetSource {
    /// Reads the footers of `entries` below `location`, a bounded number at a time.
    pub fn open_all(location: &Location, entries: &[Entry]) -> Result<Vec<ParquetSource>, IoError> {
        let futures = entries.iter().map(|entry| {
            let location = location.clone();
            let entry = entry.clone();
            async move {
                let (store, path) = location.resolve(&entry.path)?;
                let url = location.url_of(&entry.path);
                let footer = fetch_footer(&store, &path, entry.size, entry.e_tag.as_deref())
                    .await
                    .map_err(|source| IoError::parquet(url.clone(), source))?;
                let source = Self::from_footer(location, entry, footer)
                    .map_err(|source| IoError::parquet(url, source))?;
                Ok::<_, IoError>(source)
            }
        });
        // Each footer is summarised as it arrives, so at most FOOTER_CONCURRENCY decoded
        // footers exist at once.
        let mut sources = location.block_on(
            futures::stream::iter(futures).buffered(FOOTER_CONCURRENCY).try_collect::<Vec<_>>(),
        )?;
        // Files of one dataset nearly always share their fields: share their memory too.
        for i in 1..sources.len() {
            let (before, after) = sources.split_at_mut(i);
            let (prev, this) = (&before[i - 1], &mut after[0]);
            if prev.schema == this.schema && prev.int_columns == this.int_columns {
                this.schema = prev.schema.clone();
                this.int_columns = prev.int_columns.clone();
            }
        }
        Ok(sources)
    }

    /// A source from its footer's Thrift bytes: the summary planning reads, and the bytes
    /// themselves only for a large file.
    fn from_footer(location: Location, entry: Entry, footer: Bytes) -> Result<Self, ParquetError> {
        let meta = arrow_metadata(&footer, entry.size)?;
        let metadata = meta.metadata();
        let mut int_columns = Vec::new();
        let mut indices = Vec::new();
        for (i, column) in metadata.file_metadata().schema_descr().columns().iter().enumerate() {
            if column.path().parts().len() == 1
                && matches!(column.physical_type(), PhysicalType::INT32 | PhysicalType::INT64)
            {
                int_columns.push(column.path().string());
                indices.push(i);
            }
        }
        let row_groups = metadata
            .row_groups()
            .iter()
            .map(|rg| RowGroupSummary {
                rows: rg.num_rows().max(0) as u64,
                int_ranges: indices.iter().map(|&i| int_statistics(rg.column(i))).collect(),
            })
            .collect();
        Ok(ParquetSource {
            location,
            path: entry.path,
            size: entry.size,
            // The file's key-value metadata, which differs from file to file, is not kept.
            schema: Arc::new(Schema::new(meta.schema().fields().clone())),
            int_columns: Arc::from(int_columns),
            row_groups,
            footer: (entry.size > SMALL_FILE).then_some(footer),
        })
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

    /// The file's Arrow schema: its fields, without the file's key-value metadata.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Number of row groups.
    pub fn num_row_groups(&self) -> usize {
        self.row_groups.len()
    }

    /// Rows in row group `rg`.
    pub fn row_group_rows(&self, rg: usize) -> u64 {
        self.row_groups.get(rg).map_or(0, |g| g.rows)
    }

    /// `(min, max)` of an integer or timestamp column in row group `rg`, from its statistics.
    ///
    /// `None` when the file has no statistics for it; callers must then read the row group.
    pub fn int_range(&self, rg: usize, column: &str) -> Option<(i64, i64)> {
        let index = self.int_columns.iter().position(|c| c == column)?;
        *self.row_groups.get(rg)?.int_ranges.get(index)?
    }

    /// Decodes the given row groups, keeping only the named top-level columns.
    ///
    /// Only the byte ranges of those column chunks are fetched.
    pub fn read(
        &self,
        row_groups: &[usize],
        columns: &[&str],
    ) -> Result<Vec<RecordBatch>, IoError> {
        let mut batches = Vec::new();
        self.read_each(row_groups, columns, |batch| {
            batches.push(batch);
            Ok::<_, IoError>(())
        })?;
        Ok(batches)
    }

    /// Decodes the given row groups in that order, keeping only the named top-level columns,
    /// and hands each batch to `each` as it is decoded: memory holds one batch, not the row
    /// groups. No batch spans two row groups. The first error of `each` stops the reading and
    /// is returned. Only the decoding runs under the panic guard (see [`guarded`]), not `each`.
    pub fn read_each<E: From<IoError>>(
        &self,
        row_groups: &[usize],
        columns: &[&str],
        mut each: impl FnMut(RecordBatch) -> Result<(), E>,
    ) -> Result<(), E> {
        let url = self.url();
        let mut indices = Vec::with_capacity(columns.len());
        for column in columns {
            let index = self.schema.index_of(column).map_err(|_| IoError::MissingColumn {
                url: url.clone(),
                column: (*column).to_string(),
            })?;
            indices.push(index);
        }
        let parquet_error = |source| IoError::parquet(url.clone(), source);
        let Some(footer) = &self.footer else {
            let file = self.location.get(&self.path)?;
            if file.len() as u64 != self.size {
                return Err(parquet_error(ParquetError::General(format!(
                    "the file is {} bytes, it was {} when the run was planned",
                    file.len(),
                    self.size
                )))
                .into());
            }
            let meta = guarded(&url, || {
                footer_of(&file)
                    .and_then(|footer| arrow_metadata(footer, file.len() as u64))
                    .map_err(parquet_error)
            })?;
            let mask =
                ProjectionMask::roots(meta.metadata().file_metadata().schema_descr(), indices);
            // A reader per row group: batches never span two, so a caller knows when each is
            // complete (as with the stream below).
            for &row_group in row_groups {
                let mut reader = guarded(&url, || {
                    ParquetRecordBatchReaderBuilder::new_with_metadata(file.clone(), meta.clone())
                        .with_row_groups(vec![row_group])
                        .with_projection(mask.clone())
                        .with_batch_size(READ_BATCH_ROWS)
                        .build()
                        .map_err(parquet_error)
                })?;
                while let Some(batch) = guarded(&url, || {
                    reader
                        .next()
                        .transpose()
                        .map_err(|e| parquet_error(ParquetError::ArrowError(e.to_string())))
                })? {
                    each(batch)?;
                }
            }
            return Ok(());
        };
        let meta = guarded(&url, || arrow_metadata(footer, self.size).map_err(parquet_error))?;
        let (store, path) = self.location.resolve(&self.path)?;
        let reader = ObjectReader { store, path, metadata: meta.metadata().clone() };
        let mask = ProjectionMask::roots(meta.metadata().file_metadata().schema_descr(), indices);
        let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta)
            .with_row_groups(row_groups.to_vec())
            .with_projection(mask)
            .with_batch_size(READ_BATCH_ROWS);
        let mut stream = guarded(&url, || builder.build().map_err(parquet_error))?;
        // One batch per trip into the runtime: `each` runs outside it, free to block on
        // storage itself (a scored chunk's upload).
        while let Some(batch) = guarded(&url, || {
            self.location.block_on(async { stream.try_next().await.map_err(parquet_error) })
        })? {
            each(batch)?;
        }
        Ok(())
    }
}

/// `(min, max)` of an integer column chunk, from its statistics.
fn int_statistics(column: &ColumnChunkMetaData) -> Option<(i64, i64)> {
    match column.statistics()? {
        Statistics::Int64(s) => Some((*s.min_opt()?, *s.max_opt()?)),
        Statistics::Int32(s) => Some((i64::from(*s.min_opt()?), i64::from(*s.max_opt()?))),
        _ => None,
    }
}

/// Runs the decoding of one file, turning a panic of the parquet crate into an error of that
/// file. The crate asserts on some damaged pages instead of returning an error (upstream fixes
/// them case by case, e.g. apache/arrow-rs#10107); one damaged input file must fail with exit
/// code 4 naming it, not crash the job.
fn guarded<T>(url: &str, decode: impl FnOnce() -> Result<T, IoError>) -> Result<T, IoError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)) {
        Ok(result) => result,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(IoError::parquet(
                url,
                ParquetError::General(format!("damaged data stopped the Parquet decoder: {what}")),
            ))
        }
    }
}

/// Decodes a whole Parquet file held in memory.
pub fn decode_parquet(url: &str, bytes: Bytes) -> Result<Vec<RecordBatch>, IoError> {
    guarded(url, || decode_parquet_unguarded(url, bytes))
}

fn decode_parquet_unguarded(url: &str, bytes: Bytes) -> Result<Vec<RecordBatch>, IoError> {
    let parquet_error = |source| IoError::parquet(url, source);
    let meta = footer_of(&bytes)
        .and_then(|footer| arrow_metadata(footer, bytes.len() as u64))
        .map_err(parquet_error)?;
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, meta)
        .build()
        .map_err(parquet_error)?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parquet_error(ParquetError::ArrowError(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{ParquetCodec, ParquetStatistics, WriteOptions, encode_parquet};
    use crate::{Location, Storage};
    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::basic::{Compression, ZstdLevel};

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

    /// Every codec and statistics level writes what its options say and reads back the same
    /// rows; the default is zstd level 1 with page statistics.
    #[test]
    fn codecs_and_statistics_round_trip() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let b = batch((0..5_000).map(|i| i / 100).collect());
        let default = WriteOptions::default();
        assert_eq!(
            (default.codec, default.statistics),
            (ParquetCodec::Zstd(1), ParquetStatistics::Page)
        );
        for codec in [
            ParquetCodec::Zstd(1),
            ParquetCodec::Zstd(3),
            ParquetCodec::Snappy,
            ParquetCodec::Uncompressed,
        ] {
            for statistics in [ParquetStatistics::Chunk, ParquetStatistics::Page] {
                let options = WriteOptions { codec, statistics, ..WriteOptions::default() };
                let bytes =
                    encode_parquet(&b.schema(), std::slice::from_ref(&b), &options).unwrap();
                let reader = SerializedFileReader::new(bytes.clone()).unwrap();
                let column = reader.metadata().row_group(0).column(0);
                let expected = match codec {
                    ParquetCodec::Zstd(level) => {
                        Compression::ZSTD(ZstdLevel::try_new(level).unwrap())
                    }
                    ParquetCodec::Snappy => Compression::SNAPPY,
                    ParquetCodec::Uncompressed => Compression::UNCOMPRESSED,
                };
                // The footer records the codec, not the level.
                assert_eq!(
                    std::mem::discriminant(&column.compression()),
                    std::mem::discriminant(&expected)
                );
                assert!(column.statistics().is_some(), "{codec:?} {statistics:?}");
                assert_eq!(
                    column.column_index_offset().is_some(),
                    statistics == ParquetStatistics::Page,
                    "{codec:?} {statistics:?}"
                );
                let back = decode_parquet("m", bytes).unwrap();
                assert_eq!(arrow::compute::concat_batches(&b.schema(), &back).unwrap(), b);
            }
        }
        // A level zstd does not have is an encoding error, not a panic.
        let bad = WriteOptions { codec: ParquetCodec::Zstd(99), ..WriteOptions::default() };
        assert!(encode_parquet(&b.schema(), std::slice::from_ref(&b), &bad).is_err());
    }

    #[test]
    fn statistics_prune_and_projection_reads_on_every_backend() {
        let (_dir, storage, urls) = crate::backends::all("parquet");
        for url in &urls {
            statistics_prune_and_projection_reads(&storage.open(url).unwrap());
        }
    }

    /// Both read paths: a small file (read whole, footer not kept) and one above `SMALL_FILE`
    /// (footer kept, projected column chunks fetched by range).
    fn statistics_prune_and_projection_reads(loc: &Location) {
        for (name, rows) in [("small.parquet", 1_000i64), ("large.parquet", 300_000)] {
            // Scrambled values, so that the large file stays large once compressed.
            let b = batch((0..rows).collect());
            let noise: Vec<f64> =
                (0..rows).map(|i| (i * 2_654_435_761 % 1_000_003) as f64).collect();
            let b = RecordBatch::try_new(
                b.schema(),
                vec![b.column(0).clone(), Arc::new(Float64Array::from(noise))],
            )
            .unwrap();
            let options = WriteOptions {
                row_group_rows: rows as usize / 10,
                metadata: vec![("k".into(), "v".into())],
                ..WriteOptions::default()
            };
            let schema = b.schema();
            let bytes = encode_parquet(&schema, std::slice::from_ref(&b), &options).unwrap();
            assert_eq!(bytes, encode_parquet(&schema, &[b], &options).unwrap());
            assert_eq!(bytes.len() as u64 > SMALL_FILE, rows > 1_000, "{name}: {}", bytes.len());
            loc.put(name, bytes).unwrap();
            let entries: Vec<Entry> =
                loc.list("").unwrap().into_iter().filter(|e| e.path == name).collect();
            let sources = ParquetSource::open_all(loc, &entries).unwrap();
            let source = &sources[0];
            assert_eq!(source.footer.is_some(), rows > 1_000);
            let group = rows / 10;
            assert_eq!(source.num_row_groups(), 10);
            assert_eq!(source.int_range(3, "device_id"), Some((3 * group, 4 * group - 1)));
            assert_eq!(source.int_range(3, "v"), None);
            let read = source.read(&[3, 7], &["v"]).unwrap();
            let got: usize = read.iter().map(|b| b.num_rows()).sum();
            assert_eq!(got as i64, 2 * group);
            assert_eq!(read[0].num_columns(), 1);
            let first = read[0].column(0).as_any().downcast_ref::<Float64Array>().unwrap().value(0);
            assert_eq!(first, (3 * group * 2_654_435_761 % 1_000_003) as f64);
            assert!(matches!(source.read(&[0], &["nope"]), Err(IoError::MissingColumn { .. })));
        }
    }

    /// A footer larger than the first request's prefetch takes a second request; files of one
    /// schema share it.
    #[test]
    fn large_footers_and_shared_schemas() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://footers").unwrap();
        let b = batch((0..10).collect());
        let big = WriteOptions {
            row_group_rows: 5,
            metadata: vec![("padding".into(), "x".repeat(2 * FOOTER_PREFETCH))],
            ..WriteOptions::default()
        };
        let bytes = encode_parquet(&b.schema(), std::slice::from_ref(&b), &big).unwrap();
        loc.put("big.parquet", bytes).unwrap();
        let small = encode_parquet(&b.schema(), &[b], &WriteOptions::default()).unwrap();
        loc.put("small.parquet", small).unwrap();
        let sources = ParquetSource::open_all(&loc, &loc.list("").unwrap()).unwrap();
        // Small files keep no footer; this one is over FOOTER_PREFETCH, under SMALL_FILE.
        assert!(sources[0].footer.is_none() && sources[0].size() > FOOTER_PREFETCH as u64);
        assert_eq!(sources[0].num_row_groups(), 2);
        assert_eq!(sources[0].int_range(1, "device_id"), Some((5, 9)));
        let rows: usize =
            sources[0].read(&[1], &["device_id"]).unwrap().iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 5);
        assert!(Arc::ptr_eq(sources[0].schema(), sources[1].schema()));
        assert_eq!(sources[1].row_group_rows(0), 10);
        // A small file replaced after planning is an error naming it, not a misread.
        let other = encode_parquet(&batch(vec![1]).schema(), &[batch(vec![1])], &big).unwrap();
        loc.put("small.parquet", other).unwrap();
        let err = sources[1].read(&[0], &["v"]).unwrap_err();
        let cause = std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default();
        assert!(err.to_string().contains("small.parquet") && cause.contains("planned"), "{cause}");
    }

    #[test]
    fn truncated_files_are_errors_naming_the_file() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://bad").unwrap();
        let b = batch((0..10).collect());
        let bytes = encode_parquet(&b.schema(), &[b], &WriteOptions::default()).unwrap();
        loc.put("t.parquet", bytes.slice(0..bytes.len() / 2)).unwrap();
        loc.put("x.parquet", Bytes::from_static(b"not parquet at all")).unwrap();
        loc.put("y.parquet", Bytes::from_static(b"PAR1")).unwrap();
        for name in ["t.parquet", "x.parquet", "y.parquet"] {
            let entries: Vec<Entry> =
                loc.list("").unwrap().into_iter().filter(|e| e.path == name).collect();
            let err = ParquetSource::open_all(&loc, &entries).unwrap_err();
            assert!(matches!(err, IoError::Parquet { .. }), "{err:?}");
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(128))]

        /// A damaged Parquet file (bytes flipped, truncated) is an error of that file or reads
        /// some rows; it never panics, whichever read path takes it.
        #[test]
        fn damaged_parquet_is_an_error_never_a_panic(
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..6),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let b = batch((0..2_000).collect());
            let options = WriteOptions { row_group_rows: 500, ..WriteOptions::default() };
            let mut bytes = encode_parquet(&b.schema(), &[b], &options).unwrap().to_vec();
            for (at, value) in flips {
                let i = at % bytes.len();
                bytes[i] = value;
            }
            if cut % 4 == 0 {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            let _ = decode_parquet("fuzz.parquet", Bytes::from(bytes.clone()));
            let storage = Storage::new().unwrap();
            let loc = storage.open("memory://fuzz").unwrap();
            loc.put("f.parquet", Bytes::from(bytes)).unwrap();
            if let Ok(sources) = ParquetSource::open_all(&loc, &loc.list("").unwrap()) {
                for source in sources {
                    let groups: Vec<usize> = (0..source.num_row_groups()).collect();
                    let _ = source.read(&groups, &["device_id", "v"]);
                }
            }
        }
    }
}
