//! Scheduler errors: each names the file, column, device or run it is about.

use batchscore_io::IoError;
use batchscore_registry::RegistryError;

/// What can stop a job as a whole (per-device problems are outcomes, not errors).
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A setting is invalid (selection, shard, window, thresholds).
    #[error("invalid setting `{setting}`: {reason}")]
    InvalidSetting { setting: &'static str, reason: String },
    /// The input cannot be used (malformed file, missing column, wrong type, no files).
    #[error("bad input: {0}")]
    Input(#[source] IoError),
    /// The input location holds no Parquet or CSV file.
    #[error("no readings under {url}: no .parquet or .csv files ({other_files} other files)")]
    NoInput { url: String, other_files: usize },
    /// The run id was used before for a different plan.
    #[error(
        "run `{run_id}` at {url} was planned from other inputs or settings; use a new --run-id"
    )]
    RunConflict { run_id: String, url: String },
    /// A manifest or receipt is unreadable.
    #[error("corrupt commit record {url}: {reason}")]
    CorruptRecord { url: String, reason: String },
    /// The worker pool could not be built.
    #[error("cannot start {threads} worker threads: {reason}")]
    ThreadPool { threads: usize, reason: String },
    /// Building a table failed.
    #[error("cannot build the {what} table: {source}")]
    Arrow {
        what: &'static str,
        #[source]
        source: arrow::error::ArrowError,
    },
    /// Storage failed.
    #[error(transparent)]
    Io(IoError),
    /// The model registry failed as a whole (not one model).
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl SchedulerError {
    /// True when retrying later may help (storage unavailable).
    pub fn is_retryable(&self) -> bool {
        match self {
            SchedulerError::Io(e) => e.is_retryable(),
            SchedulerError::Registry(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// Classifies an IO error met while reading input: malformed data is bad input, storage
    /// failures stay storage failures.
    pub(crate) fn reading(e: IoError) -> Self {
        match e {
            IoError::Parquet { .. }
            | IoError::Csv { .. }
            | IoError::MissingColumn { .. }
            | IoError::ColumnType { .. } => SchedulerError::Input(e),
            e => SchedulerError::Io(e),
        }
    }
}

impl From<IoError> for SchedulerError {
    fn from(e: IoError) -> Self {
        SchedulerError::Io(e)
    }
}
