//! Errors of the table work: each names the setting, table or file it is about.

use batchscore_io::{ErrorClass, IoError};
use batchscore_scheduler::SchedulerError;

/// What can go wrong aggregating, exchanging tables or building a report.
#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    /// A setting is invalid (a window length, a statistic, a pivot without sensors).
    #[error("invalid setting `{setting}`: {reason}")]
    InvalidSetting { setting: &'static str, reason: String },
    /// Arrow IPC bytes could not be written or read on the arrow-rs side.
    #[error("cannot exchange the {what} table with polars: {source}")]
    Arrow {
        what: &'static str,
        #[source]
        source: arrow::error::ArrowError,
    },
    /// polars refused or failed an operation.
    #[error("polars failed to {doing}: {source}")]
    Polars {
        doing: &'static str,
        #[source]
        source: polars::prelude::PolarsError,
    },
    /// A run's records could not be read or are not what a report needs.
    #[error(transparent)]
    Run(#[from] SchedulerError),
    /// Storage failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A chart could not be drawn.
    #[error("cannot draw the {chart} chart: {reason}")]
    Chart { chart: &'static str, reason: String },
    /// A run's table holds something a report cannot use.
    #[error("{url}: {reason}")]
    Table { url: String, reason: String },
}

impl FeaturesError {
    /// The class of this error (see [`ErrorClass`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            FeaturesError::InvalidSetting { .. } => ErrorClass::Usage,
            FeaturesError::Table { .. } => ErrorClass::BadInput,
            FeaturesError::Arrow { .. }
            | FeaturesError::Polars { .. }
            | FeaturesError::Chart { .. } => ErrorClass::Internal,
            FeaturesError::Run(e) => e.class(),
            FeaturesError::Io(e) => e.class(),
        }
    }

    pub(crate) fn polars(doing: &'static str) -> impl Fn(polars::prelude::PolarsError) -> Self {
        move |source| FeaturesError::Polars { doing, source }
    }
}
