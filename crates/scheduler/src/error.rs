//! Scheduler errors: each names the file, column, device or run it is about.

use batchscore_io::{ErrorClass, IoError};
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
    /// A file's schema contradicts itself or the dataset (a duplicated column, a sensor
    /// column other files lack).
    #[error("{url}: {reason}")]
    Schema { url: String, reason: String },
    /// A value that cannot be taken as it is: a device id beyond the 64-bit signed range, a
    /// row whose device contradicts its hive partition.
    #[error("{url}: column `{column}` holds {value}: {reason}")]
    InvalidValue { url: String, column: String, value: String, reason: String },
    /// Nothing at all exists under the input location: a wrong or missing `--input`.
    #[error("nothing under {url}: the input location does not exist or is empty (check --input)")]
    InputMissing { url: String },
    /// The input location holds files, but no Parquet or CSV file.
    #[error("no readings under {url}: no .parquet or .csv files ({other_files} other files)")]
    NoInput { url: String, other_files: usize },
    /// The run id was used before for a different plan.
    #[error(
        "run `{run_id}` at {url} was planned from other inputs or settings ({changes}); use a \
         new --run-id"
    )]
    RunConflict { run_id: String, url: String, changes: String },
    /// No run of this id under the output location (no `_plan.json`).
    #[error(
        "no run `{run_id}` at {url} (no _plan.json: a wrong --output or --run-id, or no shard has started)"
    )]
    RunNotFound { run_id: String, url: String },
    /// The run has not completed (no `_SUCCESS`): what needs a whole run must wait.
    #[error(
        "run `{run_id}` at {url} is not complete (no _SUCCESS yet): `batchscore status` tells which shards are missing"
    )]
    RunIncomplete { run_id: String, url: String },
    /// A shard of the run was started with another shard count than the run was planned for.
    #[error(
        "run `{run_id}` at {url} is planned for {planned} shards, this shard says {given}: \
         use --shard-count {planned}, or a new --run-id"
    )]
    ShardCountConflict { run_id: String, url: String, planned: u32, given: u32 },
    /// The run was stopped on request (a signal) after committing some of its units.
    #[error(
        "run `{run_id}` stopped with {committed} of this shard's {units} units committed; \
         run the same command again (same run id) to resume"
    )]
    Interrupted { run_id: String, committed: usize, units: usize },
    /// Training was stopped on request before its index was written.
    #[error(
        "training stopped before its index was written: the registry is as it was; run the \
         same command again"
    )]
    TrainingStopped,
    /// A commit record could not be encoded (a defect).
    #[error("cannot encode the {what}: {reason}")]
    Encode { what: &'static str, reason: String },
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
    /// A unit's transform (interval aggregation) failed.
    #[error("cannot transform unit {unit}: {source}")]
    Transform {
        unit: usize,
        #[source]
        source: crate::TransformError,
    },
    /// Storage failed.
    #[error(transparent)]
    Io(IoError),
    /// The model registry failed as a whole (not one model).
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl SchedulerError {
    /// The class of this error (see [`ErrorClass`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            SchedulerError::InvalidSetting { .. }
            | SchedulerError::RunConflict { .. }
            | SchedulerError::ShardCountConflict { .. }
            | SchedulerError::RunNotFound { .. }
            | SchedulerError::RunIncomplete { .. }
            | SchedulerError::InputMissing { .. } => ErrorClass::Usage,
            SchedulerError::Input(_)
            | SchedulerError::Schema { .. }
            | SchedulerError::InvalidValue { .. }
            | SchedulerError::NoInput { .. }
            | SchedulerError::CorruptRecord { .. } => ErrorClass::BadInput,
            SchedulerError::Interrupted { .. } | SchedulerError::TrainingStopped => {
                ErrorClass::Interrupted
            }
            SchedulerError::Io(e) => e.class(),
            SchedulerError::Registry(e) => e.class(),
            SchedulerError::ThreadPool { .. }
            | SchedulerError::Arrow { .. }
            | SchedulerError::Transform { .. }
            | SchedulerError::Encode { .. } => ErrorClass::Internal,
        }
    }

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
            | IoError::CsvLine { .. }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_class() {
        let s = || "x".to_string();
        let missing = || IoError::MissingColumn { url: s(), column: s() };
        let cases = [
            (SchedulerError::InvalidSetting { setting: "x", reason: s() }, ErrorClass::Usage),
            (SchedulerError::Input(missing()), ErrorClass::BadInput),
            (SchedulerError::InputMissing { url: s() }, ErrorClass::Usage),
            (SchedulerError::Schema { url: s(), reason: s() }, ErrorClass::BadInput),
            (
                SchedulerError::InvalidValue { url: s(), column: s(), value: s(), reason: s() },
                ErrorClass::BadInput,
            ),
            (SchedulerError::NoInput { url: s(), other_files: 3 }, ErrorClass::BadInput),
            (
                SchedulerError::RunConflict { run_id: s(), url: s(), changes: s() },
                ErrorClass::Usage,
            ),
            (SchedulerError::CorruptRecord { url: s(), reason: s() }, ErrorClass::BadInput),
            (
                SchedulerError::ShardCountConflict { run_id: s(), url: s(), planned: 1, given: 2 },
                ErrorClass::Usage,
            ),
            (SchedulerError::Encode { what: "x", reason: s() }, ErrorClass::Internal),
            (
                SchedulerError::Interrupted { run_id: s(), committed: 1, units: 2 },
                ErrorClass::Interrupted,
            ),
            (SchedulerError::Io(IoError::Cancelled), ErrorClass::Interrupted),
            (SchedulerError::TrainingStopped, ErrorClass::Interrupted),
            (SchedulerError::RunNotFound { run_id: s(), url: s() }, ErrorClass::Usage),
            (SchedulerError::RunIncomplete { run_id: s(), url: s() }, ErrorClass::Usage),
            (SchedulerError::ThreadPool { threads: 2, reason: s() }, ErrorClass::Internal),
            (
                SchedulerError::Arrow {
                    what: "x",
                    source: arrow::error::ArrowError::ComputeError(s()),
                },
                ErrorClass::Internal,
            ),
            (SchedulerError::Io(IoError::NotFound { url: s() }), ErrorClass::Usage),
            (SchedulerError::Transform { unit: 1, source: s().into() }, ErrorClass::Internal),
            (
                SchedulerError::Registry(RegistryError::CorruptIndex { url: s(), reason: s() }),
                ErrorClass::BadInput,
            ),
        ];
        for (error, class) in cases {
            assert_eq!(error.class(), class, "{error:?}");
        }
        // Storage faults met while reading input stay storage faults.
        assert!(matches!(
            SchedulerError::reading(IoError::NotFound { url: s() }),
            SchedulerError::Io(_)
        ));
        assert!(matches!(SchedulerError::reading(missing()), SchedulerError::Input(_)));
    }
}
