//! Storage for batchscore: every location is a URL behind one object-store layer.
//!
//! [`Storage`] turns URLs (plain paths, `file://`, `memory://`, Azure Blob / ADLS Gen2, S3, GCS)
//! and [`StorageOptions`] (credentials, retries, limits) into [`Location`]s over
//! `object_store` backends and owns the small async runtime that drives them, so the rest of the
//! engine stays synchronous and runs on rayon. On top of it sit Parquet footers and row-group
//! reads with projection and statistics ([`ParquetSource`]), CSV input ([`CsvSource`]), Parquet
//! and CSV encoding, the create-only writes the commit protocol is built on
//! ([`Location::put_if_absent`]), and streamed multipart uploads that make a large part visible
//! whole or not at all ([`Location::write_parquet`], [`Location::write_csv`]).

mod csv_errors;
mod csv_io;
mod encode;
mod error;
mod hive;
mod location;
mod options;
mod parquet_io;
mod staging;
mod upload;

pub use csv_io::CsvSource;
pub use encode::{ParquetCodec, ParquetStatistics, WriteOptions, encode_csv, encode_parquet};
pub use error::{Cancelled, EXIT_FAILED_KEYS, ErrorClass, IoError, error_causes, error_chain};
pub use hive::hive_value;
pub use location::{Canceller, Entry, Location, Storage};
pub use options::{
    AzureIdentity, DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_MULTIPART_PART_SIZE, RetrySettings,
    StorageOptions, compact_service_errors, redact,
};
pub use parquet_io::{ParquetSource, decode_parquet};
pub use upload::{ObjectWriter, Written};

/// Every backend available here, for tests that must hold on all of them.
#[cfg(test)]
pub(crate) mod backends {
    use crate::{Storage, StorageOptions};

    /// One location per backend: local disk, memory, and Azurite when the test command runs
    /// it (`scripts/test.sh` sets `BATCHSCORE_TEST_AZURITE=1`; then it is required). Each
    /// location is new and empty; multipart uploads start at 256 KiB.
    pub(crate) fn all(name: &str) -> (tempfile::TempDir, Storage, Vec<String>) {
        let mut options = StorageOptions::default();
        options.set_multipart_part_size(256 * 1024).unwrap();
        let azurite = std::env::var("BATCHSCORE_TEST_AZURITE").is_ok_and(|v| v == "1");
        if azurite {
            options.set("azure_storage_use_emulator", "true").unwrap();
        }
        let storage = Storage::with_options(options).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let unique = format!("{name}-{}-{nanos}", std::process::id());
        let mut urls =
            vec![dir.path().join(&unique).display().to_string(), format!("memory://{unique}")];
        if azurite {
            urls.push(format!("az://batchscore-test/{unique}"));
        } else {
            eprintln!("Azurite not running: {name} covers local and memory only");
        }
        (dir, storage, urls)
    }
}
