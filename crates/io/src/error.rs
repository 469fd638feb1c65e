//! Typed IO errors: each names the URL (and column) it is about; and [`ErrorClass`], the one
//! classification every error of the engine maps to (the binary turns it into exit codes).

/// How whoever started a job should meet an error: what every error type of the engine maps
/// to through its `class()` method, and what the binary turns into its exit codes (2, 4, 75,
/// 1). A scheduler retries some classes and not others, so a wrong class is a defect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The call is wrong: a flag, a setting, a URL or credential, a location that does not
    /// exist or cannot be used, a permanent refusal of storage. Fix the call; do not retry.
    Usage,
    /// The data is wrong: a malformed, truncated or inconsistent file, a missing or mistyped
    /// column, a corrupt model or index. Fix the data; do not retry.
    BadInput,
    /// Storage is unavailable for now (5xx, 429, timeouts, dropped connections after the
    /// configured retries). Retry later.
    Unavailable,
    /// The job was stopped on request (a signal): what it committed stays, and running it
    /// again resumes it.
    Interrupted,
    /// A defect of ours.
    Internal,
}

/// The exit code of a job that finished but failed more items than it tolerates (`--max-failed`,
/// `models verify`, `train`): not an error class, since the job itself ran to its end.
pub const EXIT_FAILED_KEYS: u8 = 3;

impl ErrorClass {
    /// The process exit code of this class: the one place it is decided (the binary exits with
    /// it, the HTTP service reports it). An interruption without a known signal gets Ctrl-C's.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorClass::Usage => 2,
            ErrorClass::BadInput => 4,
            ErrorClass::Unavailable => 75,
            ErrorClass::Internal => 1,
            ErrorClass::Interrupted => 130,
        }
    }

    /// The class's name in records and JSON (`_shard_errors/`, the HTTP service).
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Usage => "usage",
            ErrorClass::BadInput => "bad_input",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::Interrupted => "interrupted",
            ErrorClass::Internal => "internal",
        }
    }
}

/// The marker of an operation stopped because its [`crate::Storage`] was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped on request")]
pub struct Cancelled;

/// The store name under which a cancellation travels through object_store's error type (the
/// Parquet reader and streams only carry that type).
const CANCELLED_STORE: &str = "batchscore";

impl From<Cancelled> for object_store::Error {
    fn from(c: Cancelled) -> Self {
        object_store::Error::Generic { store: CANCELLED_STORE, source: Box::new(c) }
    }
}

impl From<Cancelled> for IoError {
    fn from(_: Cancelled) -> Self {
        IoError::Cancelled
    }
}

impl From<Cancelled> for parquet::errors::ParquetError {
    fn from(c: Cancelled) -> Self {
        parquet::errors::ParquetError::External(Box::new(object_store::Error::from(c)))
    }
}

fn is_cancellation(error: &object_store::Error) -> bool {
    matches!(error, object_store::Error::Generic { store, source }
        if *store == CANCELLED_STORE && source.is::<Cancelled>())
}

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
    /// A file changed after it was planned (its version tag differs): the run it belongs to
    /// scores the files as they were.
    #[error(
        "{url} changed after the run was planned (its version tag differs): score it under a new \
         run id"
    )]
    Changed { url: String },
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
    /// A CSV line that cannot be read: the line of the file, and what is wrong with it (the
    /// column named, the value quoted).
    #[error("{url}, line {line}: {message}")]
    CsvLine { url: String, line: u64, message: String },
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
    /// Stopped on request (the storage was cancelled, e.g. on SIGTERM) before it finished.
    #[error("stopped on request")]
    Cancelled,
}

impl IoError {
    /// The class of this error (see [`ErrorClass`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            e if e.is_retryable() => ErrorClass::Unavailable,
            IoError::Parquet { .. }
            | IoError::Csv { .. }
            | IoError::CsvLine { .. }
            | IoError::MissingColumn { .. }
            | IoError::ColumnType { .. } => ErrorClass::BadInput,
            IoError::Encode { .. } => ErrorClass::Internal,
            IoError::Cancelled => ErrorClass::Interrupted,
            // A bad URL or option, a missing object, a permanent refusal (permissions, a local
            // path that is a file or loops): fix the call.
            IoError::InvalidUrl { .. }
            | IoError::InvalidOption { .. }
            | IoError::NotFound { .. }
            | IoError::Changed { .. }
            | IoError::Storage { .. }
            | IoError::Runtime(_) => ErrorClass::Usage,
        }
    }

    /// True for faults worth retrying later (storage unavailable), false for permanent ones
    /// (bad URL, missing object, malformed file, permission denied, a local disk problem).
    pub fn is_retryable(&self) -> bool {
        match self {
            IoError::Storage { source, .. } => is_transient(source),
            IoError::Runtime(_) => true,
            _ => false,
        }
    }

    pub(crate) fn storage(url: impl Into<String>, source: object_store::Error) -> Self {
        let url = url.into();
        match source {
            object_store::Error::NotFound { .. } => IoError::NotFound { url },
            object_store::Error::Precondition { .. } => IoError::Changed { url },
            source if is_cancellation(&source) => IoError::Cancelled,
            source => IoError::Storage { url, source },
        }
    }

    /// A Parquet error of the file at `url`. A storage failure met while the Parquet reader was
    /// fetching bytes arrives wrapped as `ParquetError::External`: it stays a storage error
    /// (retry-worthy or not on its own terms), not a malformed file.
    pub(crate) fn parquet(url: impl Into<String>, source: parquet::errors::ParquetError) -> Self {
        use parquet::errors::ParquetError;
        let url = url.into();
        match source {
            ParquetError::External(e) => match e.downcast::<object_store::Error>() {
                Ok(store_error) => IoError::storage(url, *store_error),
                Err(other) => IoError::Parquet { url, source: ParquetError::External(other) },
            },
            source => IoError::Parquet { url, source },
        }
    }
}

/// Whether an object_store error is a passing fault of a remote service.
///
/// Transient: an HTTP status of 5xx, 408 or 429, or a transport failure (connect, request,
/// timeout, interrupted or truncated response) after object_store's own retries, and running
/// out of file handles. Permanent: everything else local (disk, permissions, symlink loops, a
/// directory where a file should be), any
/// other status, refusals (401/403, preconditions) and whatever cannot be told apart: a
/// scheduler retries transient exits, so a guess of "transient" would retry a permanent
/// problem forever.
fn is_transient(error: &object_store::Error) -> bool {
    use object_store::Error as E;
    match error {
        E::Generic { store, source } => {
            if LOCAL_STORES.contains(store) {
                return out_of_file_handles(source.as_ref());
            }
            let mut text = String::new();
            let mut transport = false;
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
            while let Some(e) = cause {
                text.push_str(&e.to_string());
                text.push('\n');
                if let Some(http) = e.downcast_ref::<object_store::client::HttpError>() {
                    use object_store::client::HttpErrorKind as K;
                    transport |= matches!(
                        http.kind(),
                        K::Connect | K::Request | K::Timeout | K::Interrupted | K::Decode
                    );
                }
                cause = e.source();
            }
            // object_store's retry error, which carries the status, is not nameable outside
            // the crate: the status is read from its message.
            match http_status_in(&text) {
                Some(status) => status >= 500 || status == 408 || status == 429,
                None => transport,
            }
        }
        E::JoinError { .. } => true,
        _ => false,
    }
}

/// Whether a local error is the process or the system running out of file handles (EMFILE,
/// ENFILE): the one local failure that passes once connections or other work close theirs.
/// The service answered such rows `model_invalid`, which Stream Analytics drops.
fn out_of_file_handles(error: &(dyn std::error::Error + 'static)) -> bool {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(ENFILE | EMFILE))
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The `store` names of object_store's local backends, whose errors are passing faults only
/// when file handles ran out.
const LOCAL_STORES: [&str; 2] = ["LocalFileSystem", "InMemory"];

/// The HTTP status in object_store's "Server returned non-2xx status code: 503 ..." messages.
fn http_status_in(text: &str) -> Option<u16> {
    let marker = "status code: ";
    let start = text.find(marker)? + marker.len();
    text.get(start..start + 3)?.parse().ok()
}

/// An error's message and those of its sources, each said once: many errors repeat their
/// source in their own message, so a source already quoted by the line before is left out.
pub fn error_causes(error: &dyn std::error::Error) -> Vec<String> {
    let mut lines = vec![error.to_string()];
    let mut last = lines[0].clone();
    let mut source = error.source();
    while let Some(e) = source {
        let line = e.to_string();
        if !last.contains(&line) {
            lines.push(line.clone());
        }
        last = line;
        source = e.source();
    }
    lines
}

/// An error and its sources on one line (`outer: inner: innermost`), credentials removed: the
/// form of every failure reason in manifests and failures tables.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let text = error_causes(error).join(": ");
    // Storage errors can quote request URLs; SAS signatures in them must not reach manifests.
    crate::redact(&crate::compact_service_errors(&text))
}

#[cfg(test)]
mod tests {
    use object_store::client::{HttpError, HttpErrorKind};

    use super::*;

    fn generic(store: &'static str, source: Box<dyn std::error::Error + Send + Sync>) -> IoError {
        IoError::Storage {
            url: "az://c/p".into(),
            source: object_store::Error::Generic { store, source },
        }
    }

    fn remote(message: &str) -> IoError {
        generic("MicrosoftAzure", message.into())
    }

    fn transport(kind: HttpErrorKind) -> IoError {
        generic("MicrosoftAzure", Box::new(HttpError::new(kind, std::io::Error::other("reset"))))
    }

    #[test]
    fn statuses_decide_when_present() {
        assert!(
            remote("Server returned non-2xx status code: 503 Service Unavailable").is_retryable()
        );
        assert!(remote("Server returned non-2xx status code: 500 Internal").is_retryable());
        assert!(
            remote("Server returned non-2xx status code: 429 Too Many Requests").is_retryable()
        );
        assert!(remote("Server returned non-2xx status code: 408 Request Timeout").is_retryable());
        assert!(!remote("Server returned non-2xx status code: 400 Bad Request: x").is_retryable());
        assert!(
            !remote("Server returned non-2xx status code: 416 Range Not Satisfiable")
                .is_retryable()
        );
    }

    #[test]
    fn transport_failures_are_transient_and_unknown_errors_are_not() {
        for kind in [
            HttpErrorKind::Connect,
            HttpErrorKind::Request,
            HttpErrorKind::Timeout,
            HttpErrorKind::Interrupted,
            HttpErrorKind::Decode,
        ] {
            assert!(transport(kind).is_retryable(), "{kind:?}");
        }
        assert!(!transport(HttpErrorKind::Unknown).is_retryable());
        // No status and no transport failure: a guess of "transient" would make a scheduler
        // retry a permanent problem forever.
        assert!(!remote("error decoding listing XML").is_retryable());
    }

    #[test]
    fn local_and_refused_errors_are_permanent() {
        let local = |e: std::io::Error| generic("LocalFileSystem", Box::new(e));
        assert!(!local(std::io::Error::other("Too many levels of symbolic links")).is_retryable());
        assert!(!local(std::io::Error::from(std::io::ErrorKind::PermissionDenied)).is_retryable());
        assert!(!local(std::io::Error::from(std::io::ErrorKind::TimedOut)).is_retryable());
        // Regression: "Too many open files" while loading a model was a permanent row error;
        // it passes once handles are closed.
        assert!(local(std::io::Error::from_raw_os_error(24)).is_retryable());
        assert!(local(std::io::Error::from_raw_os_error(23)).is_retryable());
        assert!(!generic("InMemory", "out of range".into()).is_retryable());
        assert!(!IoError::NotFound { url: "u".into() }.is_retryable());
        let denied = IoError::Storage {
            url: "u".into(),
            source: object_store::Error::PermissionDenied {
                path: "p".into(),
                source: "403".into(),
            },
        };
        assert!(!denied.is_retryable());
        let precondition = IoError::Storage {
            url: "u".into(),
            source: object_store::Error::Precondition { path: "p".into(), source: "412".into() },
        };
        assert!(!precondition.is_retryable());
    }

    #[test]
    fn every_variant_has_its_class() {
        let s = || "x".to_string();
        let cases = [
            (IoError::InvalidUrl { url: s(), reason: s() }, ErrorClass::Usage),
            (IoError::InvalidOption { key: s(), reason: s() }, ErrorClass::Usage),
            (IoError::NotFound { url: s() }, ErrorClass::Usage),
            (
                remote("Server returned non-2xx status code: 503 Service Unavailable"),
                ErrorClass::Unavailable,
            ),
            (remote("Server returned non-2xx status code: 409 Conflict"), ErrorClass::Usage),
            (
                IoError::Parquet { url: s(), source: parquet::errors::ParquetError::General(s()) },
                ErrorClass::BadInput,
            ),
            (
                IoError::Csv { url: s(), source: arrow::error::ArrowError::CsvError(s()) },
                ErrorClass::BadInput,
            ),
            (IoError::CsvLine { url: s(), line: 3, message: s() }, ErrorClass::BadInput),
            (IoError::MissingColumn { url: s(), column: s() }, ErrorClass::BadInput),
            (
                IoError::ColumnType { url: s(), column: s(), found: s(), expected: s() },
                ErrorClass::BadInput,
            ),
            (IoError::Encode { what: s(), source: "x".into() }, ErrorClass::Internal),
            (IoError::Runtime(std::io::Error::other("x")), ErrorClass::Unavailable),
            (IoError::Cancelled, ErrorClass::Interrupted),
        ];
        for (error, class) in cases {
            assert_eq!(error.class(), class, "{error:?}");
        }
    }

    #[test]
    fn cancellation_survives_every_wrapping() {
        assert_eq!(IoError::from(Cancelled).class(), ErrorClass::Interrupted);
        assert!(matches!(IoError::storage("u", Cancelled.into()), IoError::Cancelled));
        let parquet = parquet::errors::ParquetError::from(Cancelled);
        assert!(matches!(IoError::parquet("u", parquet), IoError::Cancelled));
        // A store's own error named like ours is still a storage error.
        let other = object_store::Error::Generic { store: CANCELLED_STORE, source: "x".into() };
        assert!(matches!(IoError::storage("u", other), IoError::Storage { .. }));
    }

    #[test]
    fn storage_errors_inside_parquet_errors_stay_storage_errors() {
        let outage = object_store::Error::Generic {
            store: "MicrosoftAzure",
            source: "Server returned non-2xx status code: 503 Service Unavailable".into(),
        };
        let e = IoError::parquet(
            "az://c/f.parquet",
            parquet::errors::ParquetError::External(Box::new(outage)),
        );
        assert!(matches!(e, IoError::Storage { .. }), "{e:?}");
        assert!(e.is_retryable());
        let malformed = IoError::parquet(
            "f.parquet",
            parquet::errors::ParquetError::General("bad magic".into()),
        );
        assert!(matches!(malformed, IoError::Parquet { .. }));
        assert!(!malformed.is_retryable());
    }
}
