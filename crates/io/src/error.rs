//! Typed IO errors: each names the URL (and column) it is about.

/// What can go wrong reading or writing storage and files.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The URL could not be parsed or names a scheme this build does not support.
    #[error("invalid storage URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A storage option (credential, retry or upload setting) is unknown or out of range.
    #[error("invalid storage option `{key}`: {reason}")]
    InvalidOption { key: String, reason: String },
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
    /// A CSV file cannot be read: no header, a line with the wrong number of fields, or a
    /// value that does not parse as its column's type.
    #[error("cannot read CSV file {url}")]
    Csv {
        url: String,
        #[source]
        source: arrow::error::ArrowError,
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
            // Remote backends report exhausted retries (5xx, 429, timeouts, resets) here, but
            // also other 4xx answers, and the local store its disk and permission problems:
            // those are permanent. object_store's retry error is not nameable outside the
            // crate, so the status it carries is read from its message.
            let mut text = String::new();
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
            while let Some(e) = cause {
                text.push_str(&e.to_string());
                text.push('\n');
                cause = e.source();
            }
            if text.to_ascii_lowercase().contains("permission denied") {
                return false;
            }
            match http_status_in(&text) {
                Some(status) => status >= 500 || status == 408 || status == 429,
                None => true,
            }
        }
        E::JoinError { .. } => true,
        _ => false,
    }
}

/// The HTTP status in object_store's "Server returned non-2xx status code: 503 ..." messages.
fn http_status_in(text: &str) -> Option<u16> {
    let marker = "status code: ";
    let start = text.find(marker)? + marker.len();
    text.get(start..start + 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(message: &str) -> IoError {
        IoError::Storage {
            url: "az://c/p".into(),
            source: object_store::Error::Generic {
                store: "MicrosoftAzure",
                source: message.into(),
            },
        }
    }

    #[test]
    fn retryable_faults_are_told_from_permanent_ones() {
        assert!(
            generic("Server returned non-2xx status code: 503 Service Unavailable").is_retryable()
        );
        assert!(
            generic("Server returned non-2xx status code: 429 Too Many Requests").is_retryable()
        );
        assert!(generic("error sending request: connection reset").is_retryable());
        assert!(!generic("Server returned non-2xx status code: 400 Bad Request: x").is_retryable());
        assert!(!generic("Permission denied (os error 13)").is_retryable());
        assert!(!IoError::NotFound { url: "u".into() }.is_retryable());
        let denied = IoError::Storage {
            url: "u".into(),
            source: object_store::Error::PermissionDenied {
                path: "p".into(),
                source: "403".into(),
            },
        };
        assert!(!denied.is_retryable());
    }
}
