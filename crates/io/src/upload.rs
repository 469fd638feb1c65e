//! Streaming writes: encode straight into an object, visible whole or not at all.
//!
//! Small objects go up in one PUT. Once an object outgrows one block, it becomes a multipart
//! upload (Azure block blob, S3 multipart, a staged file renamed on completion locally): blocks
//! are sent while encoding goes on, a bounded number in flight, and the object appears only when
//! the upload completes. A failed upload is aborted, so no partial object is ever visible.

use std::io::Write;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use parquet::arrow::ArrowWriter;
use sha2::{Digest, Sha256};

use crate::encode::{utc_as_offset, writer_properties};
use crate::{IoError, Location, WriteOptions};

/// Blocks of one upload in flight at once: enough to overlap encoding with sending, and memory
/// stays at a few blocks per worker.
const BLOCKS_IN_FLIGHT: usize = 2;
/// Block size on local disk, whatever `multipart_part_size` says: a block there is a write to
/// the staged file, not a request, so a large one only costs memory (16 MiB blocks were a
/// third of a worker's memory, docs/benchmarks.md "Flat memory").
const LOCAL_BLOCK: usize = 1 << 20;

/// What a streamed write stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Size of the object in bytes.
    pub bytes: u64,
    /// SHA-256 of the object, hex.
    pub sha256: String,
    /// True when it went up as a multipart upload.
    pub multipart: bool,
}

/// A `Write` into one object: buffers up to a block, then streams blocks as a multipart upload.
struct ObjectSink<'a> {
    location: &'a Location,
    rel: &'a str,
    path: Path,
    block: usize,
    buffer: Vec<u8>,
    upload: Option<WriteMultipart>,
    hasher: Sha256,
    len: u64,
    /// The storage error behind a failed `write`, kept with its URL and source.
    failure: Option<IoError>,
}

impl<'a> ObjectSink<'a> {
    fn new(location: &'a Location, rel: &'a str) -> Result<Self, IoError> {
        location.check_writable(rel)?;
        let (_, path) = location.resolve(rel)?;
        Ok(Self {
            location,
            rel,
            path,
            block: match location.local {
                true => location.multipart_part_size.min(LOCAL_BLOCK),
                false => location.multipart_part_size,
            },
            buffer: Vec::new(),
            upload: None,
            hasher: Sha256::new(),
            len: 0,
            failure: None,
        })
    }

    fn storage_error(&self, e: object_store::Error) -> IoError {
        IoError::storage(self.location.url_of(self.rel), e)
    }

    /// Sends the first full block of the buffer, starting the multipart upload if needed.
    fn send_block(&mut self) -> Result<(), IoError> {
        let block = Bytes::from(std::mem::take(&mut self.buffer));
        let (store, _) = self.location.resolve(self.rel)?;
        let path = self.path.clone();
        let mut upload = match self.upload.take() {
            Some(upload) => upload,
            None => {
                let upload = self
                    .location
                    .block_on(async move { store.put_multipart(&path).await })
                    .map_err(|e| self.storage_error(e))?;
                WriteMultipart::new_with_chunk_size(upload, self.block)
            }
        };
        // `put` starts the block's upload on the runtime, so it must run inside it.
        let sent = self.location.block_on(async {
            upload.put(block);
            upload.wait_for_capacity(BLOCKS_IN_FLIGHT).await
        });
        match sent {
            Ok(()) => {
                self.upload = Some(upload);
                Ok(())
            }
            Err(e) => {
                // Also on cancellation: an upload stopped half-way leaves no blocks behind.
                let _ = self.location.block_on_uncancelled(upload.abort());
                Err(self.storage_error(e))
            }
        }
    }

    /// Completes the object: one PUT if it stayed small, else the last block and the commit.
    fn finish(&mut self) -> Result<Written, IoError> {
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let multipart = self.upload.is_some();
        let rest = Bytes::from(std::mem::take(&mut self.buffer));
        let result = match self.upload.take() {
            None => {
                let (store, path) = self.location.resolve(self.rel)?;
                self.location
                    .block_on(async move { store.put(&path, PutPayload::from(rest)).await })
                    .map(|_| ())
            }
            Some(mut upload) => {
                // The last blocks go up cancellably (a cancelled upload is aborted); the commit
                // of the block list, one short request, is not interrupted half-way.
                let sent = self.location.block_on(async {
                    if !rest.is_empty() {
                        upload.put(rest);
                    }
                    upload.wait_for_capacity(0).await
                });
                match sent {
                    Ok(()) => {
                        let done = self
                            .location
                            .block_on_uncancelled(async move { upload.finish().await.map(|_| ()) });
                        match done {
                            Err(e) if !self.landed(&sha256) => Err(e),
                            _ => Ok(()),
                        }
                    }
                    Err(e) => {
                        let _ = self.location.block_on_uncancelled(upload.abort());
                        Err(e)
                    }
                }
            }
        };
        result.map_err(|e| self.storage_error(e))?;
        Ok(Written { bytes: self.len, sha256, multipart })
    }

    /// Whether the object now holds exactly the bytes written (SHA-256 `sha256`). A completion
    /// whose answer was lost is retried by the client and then refused (Azure answers
    /// InvalidBlockList: the blocks were committed by the first try), although the object is
    /// in place; reading it back tells. Only on that failure, so the cost is rare.
    fn landed(&self, sha256: &str) -> bool {
        let found = self.location.get(self.rel);
        let landed = found
            .is_ok_and(|b| b.len() as u64 == self.len && hex::encode(Sha256::digest(&b)) == sha256);
        if landed {
            tracing::info!(url = %self.location.url_of(self.rel), "upload completed; its answer was lost");
        }
        landed
    }

    /// Gives up: aborts a started multipart upload so its blocks do not linger.
    fn abort(&mut self) {
        if let Some(upload) = self.upload.take() {
            let _ = self.location.block_on_uncancelled(upload.abort());
        }
    }
}

impl Write for ObjectSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        let mut rest = buf;
        while !rest.is_empty() {
            let take = (self.block - self.buffer.len()).min(rest.len());
            let needed = self.buffer.len() + take;
            if needed > self.buffer.capacity() {
                // Grow by doubling, but never past a block: a buffer that doubled past it
                // held twice the memory the block size promises.
                let target = (self.buffer.capacity() * 2).max(needed).min(self.block);
                self.buffer.reserve_exact(target - self.buffer.len());
            }
            self.buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buffer.len() == self.block
                && let Err(e) = self.send_block()
            {
                let message = e.to_string();
                self.failure = Some(e);
                return Err(std::io::Error::other(message));
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ObjectSink<'_> {
    /// A sink dropped before [`ObjectSink::finish`] (an error, a panic, a cancelled unit)
    /// aborts its multipart upload, so no staged blocks linger.
    fn drop(&mut self) {
        self.abort();
    }
}

/// The encoder of an [`ObjectWriter`].
enum Encoder<'a> {
    Parquet(Box<ArrowWriter<ObjectSink<'a>>>),
    /// CSV is encoded a batch at a time into a buffer (the header before the first): the
    /// sink stays reachable for its storage error and its completion.
    Csv {
        sink: Box<ObjectSink<'a>>,
        header: bool,
    },
}

/// An object being encoded batch by batch (Parquet or CSV) and streamed up as it grows: memory
/// holds the encoder's current row group and a few blocks, not the object. The object appears
/// at [`ObjectWriter::finish`], whole; dropped unfinished, it never appears.
pub struct ObjectWriter<'a> {
    location: &'a Location,
    rel: &'a str,
    encoder: Encoder<'a>,
}

impl std::fmt::Debug for ObjectWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWriter").field("url", &self.location.url_of(self.rel)).finish()
    }
}

impl ObjectWriter<'_> {
    fn encode_error(&self, source: Box<dyn std::error::Error + Send + Sync>) -> IoError {
        let kind = match self.encoder {
            Encoder::Parquet(_) => "Parquet",
            Encoder::Csv { .. } => "CSV",
        };
        IoError::Encode { what: format!("{kind} for {}", self.location.url_of(self.rel)), source }
    }

    /// The storage error behind a failed encoder call, if a block upload failed; else the
    /// encoder's own error.
    fn failure(&mut self, source: Box<dyn std::error::Error + Send + Sync>) -> IoError {
        let sink = match &mut self.encoder {
            Encoder::Parquet(w) => w.inner_mut(),
            Encoder::Csv { sink, .. } => sink.as_mut(),
        };
        match sink.failure.take() {
            Some(failure) => failure,
            None => self.encode_error(source),
        }
    }

    /// Appends a batch (of the schema the writer was made with).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), IoError> {
        let outcome = match &mut self.encoder {
            Encoder::Parquet(w) => w.write(batch).map_err(|e| Box::new(e) as _),
            Encoder::Csv { sink, header } => {
                let mut buffer = Vec::new();
                let encoded = utc_as_offset(batch).and_then(|b| {
                    arrow::csv::WriterBuilder::new()
                        .with_header(*header)
                        .build(&mut buffer)
                        .write(&b)
                });
                *header = false;
                match encoded {
                    Ok(()) => sink.write_all(&buffer).map_err(|e| Box::new(e) as _),
                    Err(e) => Err(Box::new(e) as _),
                }
            }
        };
        outcome.map_err(|e| self.failure(e))
    }

    /// Completes the encoding and the object; returns its size and SHA-256.
    pub fn finish(mut self) -> Result<Written, IoError> {
        // `finish` writes the footer and flushes every byte into the sink.
        let outcome = match &mut self.encoder {
            Encoder::Parquet(w) => w.finish().map(|_| ()).map_err(|e| Box::new(e) as _),
            Encoder::Csv { .. } => Ok(()),
        };
        if let Err(e) = outcome {
            return Err(self.failure(e));
        }
        match &mut self.encoder {
            Encoder::Parquet(w) => w.inner_mut().finish(),
            Encoder::Csv { sink, .. } => sink.finish(),
        }
    }
}

impl Location {
    /// A Parquet object at `rel` (encoded as `options` say), written batch by batch.
    ///
    /// For the same rows in the same batches, the bytes are those of
    /// [`crate::encode_parquet`], so a retry rewrites identical content.
    pub fn parquet_writer<'a>(
        &'a self,
        rel: &'a str,
        schema: &SchemaRef,
        options: &WriteOptions,
    ) -> Result<ObjectWriter<'a>, IoError> {
        let encode = |source: parquet::errors::ParquetError| IoError::Encode {
            what: format!("Parquet for {}", self.url_of(rel)),
            source: Box::new(source),
        };
        let sink = ObjectSink::new(self, rel)?;
        let props = writer_properties(options, schema).map_err(encode)?;
        let writer = ArrowWriter::try_new(sink, schema.clone(), Some(props)).map_err(encode)?;
        Ok(ObjectWriter { location: self, rel, encoder: Encoder::Parquet(Box::new(writer)) })
    }

    /// A CSV object at `rel` (header row, UTC timestamps as RFC 3339), written batch by batch;
    /// the bytes are those of [`crate::encode_csv`] for the same batches.
    pub fn csv_writer<'a>(&'a self, rel: &'a str) -> Result<ObjectWriter<'a>, IoError> {
        let sink = ObjectSink::new(self, rel)?;
        Ok(ObjectWriter {
            location: self,
            rel,
            encoder: Encoder::Csv { sink: Box::new(sink), header: true },
        })
    }

    /// Encodes batches as Parquet straight into the object at `rel` (as `options` say); the
    /// object is visible whole or not at all.
    pub fn write_parquet(
        &self,
        rel: &str,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        options: &WriteOptions,
    ) -> Result<Written, IoError> {
        let mut writer = self.parquet_writer(rel, schema, options)?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()
    }

    /// Encodes batches as CSV straight into the object at `rel`; like
    /// [`Location::write_parquet`], visible whole or not at all.
    pub fn write_csv(&self, rel: &str, batches: &[RecordBatch]) -> Result<Written, IoError> {
        let mut writer = self.csv_writer(rel)?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::{Storage, encode_parquet};

    fn batch(rows: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("device_id", DataType::Int64, false),
            Field::new("v", DataType::Float64, false),
        ]));
        // Values that compress poorly, so the file spans several blocks.
        let values: Vec<f64> = (0..rows).map(|i| ((i * 7919) % 10007) as f64 / 3.0).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows)),
                Arc::new(Float64Array::from(values)),
            ],
        )
        .unwrap()
    }

    fn written_equals_encoded(storage: &Storage, url: &str) {
        let loc = storage.open(url).unwrap();
        let b = batch(200_000);
        let options = WriteOptions { row_group_rows: 50_000, ..WriteOptions::default() };
        let expected = encode_parquet(&b.schema(), std::slice::from_ref(&b), &options).unwrap();
        let written = loc
            .write_parquet("big.parquet", &b.schema(), std::slice::from_ref(&b), &options)
            .unwrap();
        assert!(written.multipart, "{} bytes should need several blocks", expected.len());
        assert_eq!(written.bytes, expected.len() as u64);
        assert_eq!(written.sha256, hex::encode(Sha256::digest(&expected)));
        assert_eq!(loc.get("big.parquet").unwrap(), expected);
        let small = batch(10);
        let written =
            loc.write_parquet("small.parquet", &small.schema(), &[small], &options).unwrap();
        assert!(!written.multipart);
        // Only the two finished objects are visible: no staged blocks or temporary files.
        let names: Vec<String> = loc.list("").unwrap().into_iter().map(|e| e.path).collect();
        assert_eq!(names, vec!["big.parquet", "small.parquet"]);
    }

    /// Batches written one at a time make the bytes of their in-memory encoding; a writer
    /// dropped before it finishes leaves nothing behind.
    fn streamed_batches(storage: &Storage, url: &str) {
        let loc = storage.open(url).unwrap();
        let whole = batch(200_000);
        let batches: Vec<RecordBatch> =
            [0, 70_001, 150_000].iter().map(|&o| whole.slice(o, 50_000)).collect();
        let options = WriteOptions { row_group_rows: 64 * 1024, ..WriteOptions::default() };
        let mut writer = loc.parquet_writer("batches.parquet", &whole.schema(), &options).unwrap();
        for b in &batches {
            writer.write(b).unwrap();
        }
        let written = writer.finish().unwrap();
        let expected = encode_parquet(&whole.schema(), &batches, &options).unwrap();
        assert_eq!(written.sha256, hex::encode(Sha256::digest(&expected)));
        assert_eq!(loc.get("batches.parquet").unwrap(), expected);

        let mut writer = loc.csv_writer("batches.csv").unwrap();
        for b in &batches {
            writer.write(b).unwrap();
        }
        writer.finish().unwrap();
        assert_eq!(loc.get("batches.csv").unwrap(), crate::encode_csv(&batches).unwrap());

        // Past a block: the upload is under way when the writer is dropped.
        let mut writer = loc.parquet_writer("dropped.parquet", &whole.schema(), &options).unwrap();
        for b in &batches {
            writer.write(b).unwrap();
        }
        drop(writer);
        let mut writer = loc.csv_writer("dropped.csv").unwrap();
        writer.write(&batches[0]).unwrap();
        drop(writer);
        let names: Vec<String> = loc.list("").unwrap().into_iter().map(|e| e.path).collect();
        assert_eq!(names, vec!["batches.csv", "batches.parquet"]);
    }

    #[test]
    fn batches_stream_into_one_object_or_none_on_every_backend() {
        let (_dir, storage, urls) = crate::backends::all("stream");
        for url in &urls {
            streamed_batches(&storage, url);
        }
    }

    #[test]
    fn streamed_parquet_matches_in_memory_encoding_on_every_backend() {
        let (_dir, storage, urls) = crate::backends::all("upload");
        for url in &urls {
            written_equals_encoded(&storage, url);
        }
    }
}
