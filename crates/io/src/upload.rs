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

use crate::parquet_io::writer_properties;
use crate::{IoError, Location, WriteOptions};

/// Blocks of one upload in flight at once: enough to overlap encoding with sending, and memory
/// stays at a few blocks per worker.
const BLOCKS_IN_FLIGHT: usize = 2;

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
        let (_, path) = location.resolve(rel)?;
        Ok(Self {
            location,
            rel,
            path,
            block: location.multipart_part_size,
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
        let rest = self.buffer.split_off(self.block);
        let block = Bytes::from(std::mem::replace(&mut self.buffer, rest));
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
                    Ok(()) => self
                        .location
                        .block_on_uncancelled(async move { upload.finish().await.map(|_| ()) }),
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
        self.buffer.extend_from_slice(buf);
        while self.buffer.len() >= self.block {
            if let Err(e) = self.send_block() {
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

impl Location {
    /// Encodes batches as Parquet straight into the object at `rel` (as `options` say).
    ///
    /// The bytes are those of [`crate::encode_parquet`] for the same input, so a retry
    /// rewrites identical content. The object is visible whole or not at all.
    pub fn write_parquet(
        &self,
        rel: &str,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        options: &WriteOptions,
    ) -> Result<Written, IoError> {
        let encode = |source: parquet::errors::ParquetError| IoError::Encode {
            what: format!("Parquet for {}", self.url_of(rel)),
            source: Box::new(source),
        };
        let sink = ObjectSink::new(self, rel)?;
        let props = writer_properties(options, schema).map_err(encode)?;
        let mut writer = ArrowWriter::try_new(sink, schema.clone(), Some(props)).map_err(encode)?;
        let mut outcome = Ok(());
        for batch in batches {
            outcome = writer.write(batch);
            if outcome.is_err() {
                break;
            }
        }
        // `finish` writes the footer and flushes every byte into the sink.
        let outcome = outcome.and_then(|()| writer.finish());
        let sink = writer.inner_mut();
        if let Err(e) = outcome {
            let failure = sink.failure.take();
            sink.abort();
            return Err(failure.unwrap_or_else(|| encode(e)));
        }
        sink.finish()
    }

    /// Encodes batches as CSV (header row, UTC timestamps as RFC 3339) straight into the
    /// object at `rel`; like [`Location::write_parquet`], visible whole or not at all, and the
    /// bytes are those of [`crate::encode_csv`].
    pub fn write_csv(&self, rel: &str, batches: &[RecordBatch]) -> Result<Written, IoError> {
        let encode = |source: arrow::error::ArrowError| IoError::Encode {
            what: format!("CSV for {}", self.url_of(rel)),
            source: Box::new(source),
        };
        let mut sink = ObjectSink::new(self, rel)?;
        let mut outcome = Ok(());
        {
            let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(&mut sink);
            for batch in batches {
                outcome = crate::parquet_io::utc_as_offset(batch).and_then(|b| writer.write(&b));
                if outcome.is_err() {
                    break;
                }
            }
        }
        if let Err(e) = outcome {
            let failure = sink.failure.take();
            sink.abort();
            return Err(failure.unwrap_or_else(|| encode(e)));
        }
        sink.finish()
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

    #[test]
    fn streamed_parquet_matches_in_memory_encoding_on_every_backend() {
        let (_dir, storage, urls) = crate::backends::all("upload");
        for url in &urls {
            written_equals_encoded(&storage, url);
        }
    }
}
