//! Typed IO errors: each names the URL (and column) it is about.

/// What can go wrong reading or writing storage and files.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The URL could not be parsed or names a scheme this build does not support.
    #[error("invalid storage URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A required object does not exist.
    #[error("not found: {url}")]
    NotFound { url: String },
    /// The storage backend failed.
    #[error("storage error at {url}")]
    Storage {
        url: String,
        #[source]
        source: object_store::Error,
    },
    /// A file is not valid Parquet (truncated, corrupt, or another format).
    #[error("cannot read Parquet file {url}")]
    Parquet {
        url: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A file lacks a column the job needs.
    #[error("{url}: missing column `{column}`")]
    MissingColumn { url: String, column: String },
    /// A column has a type the job cannot use.
    #[error("{url}: column `{column}` has type {found}, expected {expected}")]
    ColumnType { url: String, column: String, found: String, expected: String },
    /// Encoding a file failed.
    #[error("cannot encode {what}")]
    Encode {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The runtime that drives storage could not start.
    #[error("cannot start the storage runtime")]
    Runtime(#[source] std::io::Error),
}

impl IoError {
    /// True for faults worth retrying later (storage unavailable), false for permanent ones
    /// (bad URL, missing object, malformed file, permission denied).
    pub fn is_retryable(&self) -> bool {
        match self {
            IoError::Storage { source, .. } => is_retryable_store_error(source),
            IoError::Runtime(_) => true,
            _ => false,
        }
    }

    pub(crate) fn storage(url: impl Into<String>, source: object_store::Error) -> Self {
        let url = url.into();
        match source {
            object_store::Error::NotFound { .. } => IoError::NotFound { url },
            source => IoError::Storage { url, source },
        }
    }
}

fn is_retryable_store_error(error: &object_store::Error) -> bool {
    use object_store::Error as E;
    match error {
        E::Generic { source, .. } => {
            // The local store reports disk and permission problems as generic errors; those are
            // permanent. Remote backends report exhausted retries and unavailability here.
            !source.to_string().to_ascii_lowercase().contains("permission denied")
        }
        E::JoinError { .. } => true,
        _ => false,
    }
}
