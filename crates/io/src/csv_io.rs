//! CSV input: the header and a sampled schema from the head of each file, then decoding of
//! byte-range chunks with the column types the caller needs.
//!
//! CSV has no footer and no statistics. A large file is split into chunks of bytes so that
//! several workers can read it and none holds it whole: a chunk owns the lines that *start*
//! inside it (as Hadoop and Spark split text files), so every line belongs to exactly one
//! chunk whatever the chunk size. This requires that records do not span lines (no line breaks
//! inside quoted fields). Row counts are estimates from the head until a chunk is read. Column types are the caller's to choose (a sampled type can
//! be wrong: a value column whose first rows are whole numbers samples as an integer); the
//! sampled schema only says which columns exist and what their first values look like.

use std::io::Cursor;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::csv::ReaderBuilder;
use arrow::csv::reader::Format;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use futures::{StreamExt, TryStreamExt};

use crate::{Entry, IoError, Location};

/// Bytes read from the head of each file to find its header and sample its types.
const HEAD_BYTES: u64 = 64 * 1024;
/// How many heads are fetched at once when opening many files.
const HEAD_CONCURRENCY: usize = 16;
/// Rows per decoded batch.
const READ_BATCH_ROWS: usize = 64 * 1024;
/// Bytes read past a chunk's end to finish its last line; grows for longer lines.
const LINE_SLACK: u64 = 64 * 1024;

/// A CSV object with a header row, whose head has been read.
#[derive(Debug, Clone)]
pub struct CsvSource {
    location: Location,
    path: String,
    size: u64,
    /// Column names from the header, with types sampled from the rows in the head.
    sampled: SchemaRef,
    /// Data rows in the head, and the bytes they and the header took.
    head_rows: u64,
    head_bytes: u64,
    /// True when the head was the whole file, so `head_rows` is exact.
    whole: bool,
}

fn csv_error(url: &str, source: arrow::error::ArrowError) -> IoError {
    IoError::Csv { url: url.to_string(), source }
}

impl CsvSource {
    /// Reads the head of each of `entries` below `location`, a bounded number at a time.
    pub fn open_all(location: &Location, entries: &[Entry]) -> Result<Vec<CsvSource>, IoError> {
        let heads = entries.iter().map(|entry| {
            let location = location.clone();
            let entry = entry.clone();
            async move {
                let url = location.url_of(&entry.path);
                let (store, path) = location.resolve(&entry.path)?;
                let end = entry.size.min(HEAD_BYTES);
                let head = if end == 0 {
                    bytes::Bytes::new()
                } else {
                    crate::location::get_range_if(&store, &path, 0..end, entry.e_tag.as_deref())
                        .await
                        .map_err(|e| IoError::storage(url.clone(), e))?
                };
                Self::from_head(location, entry, &head)
            }
        });
        location.block_on(
            futures::stream::iter(heads).buffered(HEAD_CONCURRENCY).try_collect::<Vec<_>>(),
        )
    }

    fn from_head(location: Location, entry: Entry, head: &[u8]) -> Result<Self, IoError> {
        let url = location.url_of(&entry.path);
        let whole = head.len() as u64 == entry.size;
        // Sample whole lines only: the last line of a partial head is cut off.
        let lines = match (whole, head.iter().rposition(|b| *b == b'\n')) {
            (true, _) => head,
            (false, Some(end)) => &head[..=end],
            (false, None) => {
                return Err(IoError::Csv {
                    url,
                    source: arrow::error::ArrowError::CsvError(format!(
                        "no line break in the first {HEAD_BYTES} bytes: not a CSV file with a header row"
                    )),
                });
            }
        };
        if lines.iter().all(u8::is_ascii_whitespace) {
            return Err(IoError::Csv {
                url,
                source: arrow::error::ArrowError::CsvError("empty file: no header row".into()),
            });
        }
        let (sampled, head_rows) = Format::default()
            .with_header(true)
            .infer_schema(Cursor::new(lines), None)
            .map_err(|e| {
                // The head starts the file: its lines are the file's.
                let header = lines.split(|b| *b == b'\n').next().unwrap_or_default();
                let names: Vec<String> = String::from_utf8_lossy(header)
                    .trim_end()
                    .split(',')
                    .map(String::from)
                    .collect();
                match crate::csv_errors::locate(&e, &names) {
                    Some((line, message)) => IoError::CsvLine { url: url.clone(), line, message },
                    None => csv_error(&url, e),
                }
            })?;
        Ok(Self {
            location,
            path: entry.path,
            size: entry.size,
            sampled: Arc::new(sampled),
            head_rows: head_rows as u64,
            head_bytes: lines.len() as u64,
            whole,
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

    /// The header's columns, with types sampled from the head's rows (`Utf8` where no row
    /// had a value). A guide for checks and defaults, not the types the file is read with.
    pub fn sampled_schema(&self) -> &SchemaRef {
        &self.sampled
    }

    /// Data rows: exact for a file that fit in its head, else extrapolated from the head's
    /// rows per byte. Deterministic for a given file, so plans built on it are too.
    pub fn estimated_rows(&self) -> u64 {
        if self.whole || self.head_bytes == 0 {
            return self.head_rows;
        }
        let per_byte = self.head_rows as f64 / self.head_bytes as f64;
        (per_byte * self.size as f64).ceil() as u64
    }

    /// Byte ranges of about `chunk_bytes` that cover the file, for [`CsvSource::read`].
    pub fn chunks(&self, chunk_bytes: u64) -> Vec<Range<u64>> {
        let step = chunk_bytes.max(1);
        (0..self.size.div_ceil(step)).map(|i| i * step..((i + 1) * step).min(self.size)).collect()
    }

    /// Reads the lines that start inside `range` (the header excepted), keeping the named
    /// columns, each decoded as the given type. `0..size` reads the whole file.
    ///
    /// Empty fields are nulls. A value that does not parse as its column's type is an error
    /// naming the file, the column and the line.
    pub fn read(
        &self,
        range: Range<u64>,
        columns: &[(&str, DataType)],
    ) -> Result<Vec<RecordBatch>, IoError> {
        let url = self.url();
        // Every column of the header is declared (as text unless asked for), so the decoder
        // checks the field count of each line; the projection keeps only the asked ones.
        let mut fields: Vec<Field> = self
            .sampled
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), DataType::Utf8, true))
            .collect();
        let mut projection = Vec::with_capacity(columns.len());
        for (name, data_type) in columns {
            let index = self.sampled.index_of(name).map_err(|_| IoError::MissingColumn {
                url: url.clone(),
                column: (*name).to_string(),
            })?;
            fields[index] = Field::new(*name, data_type.clone(), true);
            projection.push(index);
        }
        let (start, bytes) = self.owned_lines(range.clone())?;
        if bytes.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = fields.iter().map(|f| f.name().clone()).collect();
        let reader = ReaderBuilder::new(Arc::new(Schema::new(fields)))
            // Only the chunk at the start of the file holds the header line.
            .with_header(range.start == 0)
            .with_projection(projection)
            .with_batch_size(READ_BATCH_ROWS)
            .build(Cursor::new(bytes))
            .map_err(|e| csv_error(&url, e))?;
        reader.collect::<Result<Vec<_>, _>>().map_err(|e| self.located(e, start, &names))
    }

    /// A decoding error of the chunk starting at byte `start`, with the file's line number and
    /// the column's name when arrow's message gives them.
    fn located(&self, error: arrow::error::ArrowError, start: u64, names: &[String]) -> IoError {
        let url = self.url();
        let Some((line_in_chunk, message)) = crate::csv_errors::locate(&error, names) else {
            return csv_error(&url, error);
        };
        match self.lines_before(start) {
            Ok(before) => IoError::CsvLine { url, line: before + line_in_chunk, message },
            Err(e) => {
                tracing::debug!(error = %e, "cannot count the lines before a CSV chunk");
                IoError::CsvLine {
                    url,
                    line: line_in_chunk,
                    message: format!("{message} (counting from the line at byte {start})"),
                }
            }
        }
    }

    /// Line breaks in the first `offset` bytes of the file, read in bounded pieces (only on
    /// the error path: a chunk knows its byte offset, not its line number).
    fn lines_before(&self, offset: u64) -> Result<u64, IoError> {
        const PIECE: u64 = 16 << 20;
        let mut lines = 0;
        let mut at = 0;
        while at < offset {
            let end = (at + PIECE).min(offset);
            let piece = self.location.get_range(&self.path, at..end)?;
            lines += piece.iter().filter(|b| **b == b'\n').count() as u64;
            at = end;
        }
        Ok(lines)
    }

    /// The bytes of the lines that start inside `range`: from the first line start at or
    /// after `range.start` through the end of the line holding byte `range.end - 1`.
    /// Returns the byte offset of the first owned line with the bytes.
    fn owned_lines(&self, range: Range<u64>) -> Result<(u64, bytes::Bytes), IoError> {
        let end = range.end.min(self.size);
        if range.start >= end {
            return Ok((range.start, bytes::Bytes::new()));
        }
        // One byte before the range tells whether a line starts exactly at its start.
        let from = range.start.saturating_sub(1);
        let mut slack = LINE_SLACK;
        loop {
            let to = end.saturating_add(slack).min(self.size);
            let bytes = self.location.get_range(&self.path, from..to)?;
            let inside = (end - from) as usize;
            let first = if range.start == 0 {
                0
            } else {
                match bytes[..inside].iter().position(|b| *b == b'\n') {
                    Some(i) if i + 1 < inside => i + 1,
                    // No line starts inside the range: the line that covers it belongs to
                    // an earlier chunk.
                    _ => return Ok((range.start, bytes::Bytes::new())),
                }
            };
            let start = from + first as u64;
            let last_byte = inside - 1;
            match bytes[last_byte..].iter().position(|b| *b == b'\n') {
                Some(i) => return Ok((start, bytes.slice(first..last_byte + i + 1))),
                None if to == self.size => return Ok((start, bytes.slice(first..))),
                // The last line runs past the slack: read further.
                None => slack = slack.saturating_mul(4),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Storage;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType};

    /// The `Value` column of the lines a range owns.
    fn values_of(source: &CsvSource, range: Range<u64>) -> Vec<f64> {
        source
            .read(range, &[("Value", DataType::Float64)])
            .unwrap()
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Float64Type>().values().to_vec())
            .collect()
    }

    const REFERENCE: &str = "TS,Device,Tag,Value\n\
        2018-08-28 23:00:05.000,1,1,10.16\n\
        2018-08-28 23:00:10.000,1,2,\n\
        2018-08-28 23:00:15.000,2,1,7\n";

    #[test]
    fn reads_the_reference_layout_with_the_callers_types() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://csv/read").unwrap();
        loc.put("a.csv", bytes::Bytes::from_static(REFERENCE.as_bytes())).unwrap();
        let entries = loc.list("").unwrap();
        let sources = CsvSource::open_all(&loc, &entries).unwrap();
        let source = &sources[0];
        assert_eq!(source.estimated_rows(), 3);
        let sampled = source.sampled_schema();
        assert_eq!(sampled.field(2).data_type(), &DataType::Int64, "integer tags sample as such");
        let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
        let whole = 0..source.size();
        let batches = source
            .read(whole, &[("Value", DataType::Float64), ("TS", ts), ("Device", DataType::Int64)])
            .unwrap();
        let b = &batches[0];
        assert_eq!(b.num_columns(), 3);
        let values = b.column(0).as_primitive::<Float64Type>();
        assert_eq!(values.value(0), 10.16);
        assert!(values.is_null(1), "an empty field is missing");
        assert_eq!(values.value(2), 7.0);
        let ts = b.column(1).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.value(0), 1_535_497_205_000_000, "naive times are UTC");
        assert_eq!(b.column(2).as_primitive::<Int64Type>().value(2), 2);
    }

    #[test]
    fn bad_values_and_missing_columns_name_the_file() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://csv/bad").unwrap();
        loc.put("b.csv", bytes::Bytes::from_static(b"TS,Device,Tag,Value\n2018-08-28,x,1,2\n"))
            .unwrap();
        loc.put("empty.csv", bytes::Bytes::new()).unwrap();
        let entries = loc.list("").unwrap();
        let err = CsvSource::open_all(&loc, &entries[1..]).unwrap_err();
        assert!(err.to_string().contains("empty.csv"), "{err}");
        let source = CsvSource::open_all(&loc, &entries[..1]).unwrap().remove(0);
        let whole = 0..source.size();
        let err = source.read(whole.clone(), &[("Device", DataType::Int64)]).unwrap_err();
        assert!(err.to_string().contains("b.csv"), "{err}");
        assert!(err.to_string().contains("line 2: value 'x' of column `Device`"), "{err}");
        let err = source.read(whole, &[("Sensor", DataType::Utf8)]).unwrap_err();
        assert!(matches!(err, IoError::MissingColumn { ref column, .. } if column == "Sensor"));
    }

    /// Regression: errors counted lines from the start of the chunk being decoded and named
    /// columns by a 0-based index.
    #[test]
    fn errors_in_later_chunks_name_the_files_line_and_the_column() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://csv/lines").unwrap();
        let mut text = String::from("TS,Device,Tag,Value\n");
        for i in 2..=5000 {
            let value = if i == 800 { "oops".to_string() } else { i.to_string() };
            text.push_str(&format!("2018-08-28 23:00:05.000,1,1,{value}\n"));
        }
        // Line 4000, past the sampled head, has a field too few.
        text = text.replace("2018-08-28 23:00:05.000,1,1,4000\n", "2018-08-28 23:00:05.000,1,1\n");
        loc.put("big.csv", bytes::Bytes::from(text.clone())).unwrap();
        let source = CsvSource::open_all(&loc, &loc.list("").unwrap()).unwrap().remove(0);
        let columns = [("Value", DataType::Float64)];
        // A chunk that starts mid-file, in line 700 or so.
        let start = text.match_indices('\n').nth(700).map(|(i, _)| i as u64 - 5).unwrap();
        // Chunks that end before line 4000 (arrow checks record shapes before values).
        let cut = text.match_indices('\n').nth(2000).map(|(i, _)| i as u64).unwrap();
        for range in [0..cut, start..cut] {
            let err = source.read(range.clone(), &columns).unwrap_err();
            assert_eq!(
                err.to_string(),
                "memory://csv/lines/big.csv, line 800: value 'oops' of column `Value` is not a Float64",
                "{range:?}"
            );
        }
        let after = text.match_indices('\n').nth(3500).map(|(i, _)| i as u64 + 1).unwrap();
        let err = source.read(after..source.size(), &columns).unwrap_err();
        assert_eq!(
            err.to_string(),
            "memory://csv/lines/big.csv, line 4000: 3 fields where the header has 4"
        );
    }

    #[test]
    fn estimates_rows_of_large_files_from_the_head() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://csv/big").unwrap();
        let mut text = String::from("TS,Device,Tag,Value\n");
        for i in 0..20_000 {
            text.push_str(&format!("2018-08-28 23:00:05.000,{},{},{}.25\n", i % 3, i % 5, i));
        }
        loc.put("big.csv", bytes::Bytes::from(text)).unwrap();
        let source = CsvSource::open_all(&loc, &loc.list("").unwrap()).unwrap().remove(0);
        let estimate = source.estimated_rows();
        assert!((19_000..21_000).contains(&estimate), "{estimate}");
        let values = |range: Range<u64>| values_of(&source, range);
        let whole = values(0..source.size());
        assert_eq!(whole.len(), 20_000);
        let chunked: Vec<f64> = source.chunks(100_000).into_iter().flat_map(&values).collect();
        assert_eq!(chunked, whole);
    }

    #[test]
    fn chunks_of_any_size_own_every_line_once() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://csv/chunks").unwrap();
        let mut text = String::from("TS,Device,Tag,Value\n");
        for i in 0..200 {
            // Lines of varying length, some longer than the smaller chunks.
            text.push_str(&format!("2018-08-28 23:00:05.000,{},{},{i}.{}\n", i % 3, i % 5, i * i));
        }
        loc.put("c.csv", bytes::Bytes::from(text)).unwrap();
        let source = CsvSource::open_all(&loc, &loc.list("").unwrap()).unwrap().remove(0);
        let values = |range: Range<u64>| values_of(&source, range);
        let whole = values(0..source.size());
        assert_eq!(whole.len(), 200);
        // Including chunks that start or end exactly at a line break, and lines longer than
        // a chunk.
        for chunk_bytes in [1, 2, 3, 5, 8, 13, 21, 34, 36, 38, 40, 42, 44, 55, 89, 1000, 1 << 20] {
            let chunked: Vec<f64> =
                source.chunks(chunk_bytes).into_iter().flat_map(&values).collect();
            assert_eq!(chunked, whole, "chunks of {chunk_bytes} bytes");
        }
    }

    #[test]
    fn a_file_without_a_final_line_break_reads_to_its_end() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://csv/tail").unwrap();
        loc.put("t.csv", bytes::Bytes::from_static(b"a,b\n1,2\n3,4")).unwrap();
        let source = CsvSource::open_all(&loc, &loc.list("").unwrap()).unwrap().remove(0);
        for chunk_bytes in 1..=12 {
            let rows: Vec<i64> = source
                .chunks(chunk_bytes)
                .into_iter()
                .flat_map(|r| source.read(r, &[("b", DataType::Int64)]).unwrap())
                .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
                .collect();
            assert_eq!(rows, vec![2, 4], "chunks of {chunk_bytes} bytes");
        }
    }

    /// Bytes that look like CSV often enough to reach the decoder: separators, quotes, line
    /// breaks, digits, dates and junk.
    fn csv_bytes() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let token = prop_oneof![
            Just(b",".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\"".to_vec()),
            Just(b"TS,Device,Tag,Value\n".to_vec()),
            Just(b"2018-08-28 23:00:05.000".to_vec()),
            "[0-9]{1,25}".prop_map(String::into_bytes),
            "-?[0-9]{0,5}\\.[0-9]{0,5}(e[-+]?[0-9]{1,4})?".prop_map(String::into_bytes),
            any::<Vec<u8>>(),
        ];
        proptest::collection::vec(token, 0..60).prop_map(|t| t.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(256))]

        /// Any bytes in a `.csv` file: an error naming the file, or rows; never a panic, for
        /// whole reads and chunked ones, whatever types the caller asks for.
        #[test]
        fn arbitrary_csv_is_an_error_or_rows_never_a_panic(bytes in csv_bytes(), cut in proptest::prelude::any::<u16>()) {
            let storage = Storage::new().unwrap();
            let loc = storage.open("memory://csvfuzz").unwrap();
            loc.put("f.csv", bytes::Bytes::from(bytes)).unwrap();
            let Ok(mut sources) = CsvSource::open_all(&loc, &loc.list("").unwrap()) else {
                return Ok(());
            };
            let source = sources.remove(0);
            let names: Vec<String> =
                source.sampled_schema().fields().iter().map(|f| f.name().clone()).collect();
            let types = [
                DataType::Int64,
                DataType::Float64,
                DataType::Utf8,
                DataType::Timestamp(TimeUnit::Microsecond, None),
            ];
            let columns: Vec<(&str, DataType)> = names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), types[i % types.len()].clone()))
                .collect();
            let size = source.size();
            let cut = u64::from(cut) % (size + 1);
            for range in [0..size, 0..cut, cut..size] {
                if let Err(e) = source.read(range, &columns) {
                    proptest::prop_assert!(e.to_string().contains("f.csv"), "{e}");
                }
            }
        }
    }
}
