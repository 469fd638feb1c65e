//! Storage for batchscore: every location is a URL behind one object-store layer.
//!
//! [`Storage`] turns URLs (plain paths, `file://`, `memory://`) into [`Location`]s over
//! `object_store` backends and owns the small async runtime that drives them, so the rest of the
//! engine stays synchronous and runs on rayon. On top of it sit Parquet footers and row-group
//! reads with projection and statistics ([`ParquetSource`]), Parquet and CSV encoding, and the
//! create-only writes the commit protocol is built on ([`Location::put_if_absent`]).

mod error;
mod hive;
mod location;
mod parquet_io;

pub use error::IoError;
pub use hive::hive_value;
pub use location::{Entry, Location, Storage};
pub use parquet_io::{ParquetSource, WriteOptions, decode_parquet, encode_csv, encode_parquet};
