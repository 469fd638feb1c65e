//! The usage error: a bad flag, environment variable or config value (exit code 2). Its own
//! module, so that the config file and the settings resolution, which both raise it, do not
//! import each other.

/// A bad flag, environment variable or config value (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
