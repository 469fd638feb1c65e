//! What can go wrong talking to Azure Batch and Entra ID, each error carrying the job, task or
//! URL it is about, and its [`ErrorClass`]: a job manager exits 75 for what a retry can fix, so
//! Batch retries it, and 2 for what it cannot.

use batchscore_io::ErrorClass;

/// An error of the Azure Batch job manager or its templates.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A setting or flag that cannot work (fix the call).
    #[error("{0}")]
    Invalid(String),
    /// A variable Batch sets on its nodes is missing: not running as a Batch task.
    #[error(
        "{name} is not set: `batch fan-out` runs as the job manager task of an Azure Batch job \
         (which sets it); to run it elsewhere, set it by hand"
    )]
    MissingEnv { name: &'static str },
    /// No Entra token for the Batch resource.
    #[error("cannot get a token for Azure Batch from {source_name}: {reason}")]
    Token { source_name: String, reason: String, transient: bool },
    /// The service answered with an error status.
    #[error("{method} {url}: HTTP {status}{code}: {message}", code = code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Status { method: &'static str, url: String, status: u16, code: Option<String>, message: String },
    /// No answer: connection refused or reset, timeout.
    #[error("{method} {url}: {reason}")]
    Transport { method: &'static str, url: String, reason: String },
    /// An answer that is not what the API documents.
    #[error("{url}: unexpected answer: {reason}")]
    Response { url: String, reason: String },
    /// Tasks Batch refused (`clienterror` other than "task exists"): resending them unchanged
    /// cannot help.
    #[error(
        "Azure Batch refused {} task(s) of job {job}: {}",
        refused.len(),
        refused.iter().take(5).map(|(id, why)| format!("{id}: {why}")).collect::<Vec<_>>().join("; ")
    )]
    Refused { job: String, refused: Vec<(String, String)> },
    /// Tasks still answered `servererror` after every resend.
    #[error("Azure Batch kept answering servererror for {} task(s) of job {job} (first: {}) after {attempts} attempts", ids.len(), ids.first().map(String::as_str).unwrap_or(""))]
    ServerErrors { job: String, ids: Vec<String>, attempts: u32 },
}

impl BatchError {
    /// How the binary should exit on this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            BatchError::Invalid(_) | BatchError::MissingEnv { .. } | BatchError::Refused { .. } => {
                ErrorClass::Usage
            }
            BatchError::Token { transient: true, .. }
            | BatchError::Transport { .. }
            | BatchError::ServerErrors { .. } => ErrorClass::Unavailable,
            BatchError::Token { transient: false, .. } => ErrorClass::Usage,
            BatchError::Status { status, .. } if is_transient_status(*status) => {
                ErrorClass::Unavailable
            }
            // 400, 401, 403 (the identity lacks "Azure Batch Job Submitter"), 404 (no such job):
            // the same request fails the same way.
            BatchError::Status { .. } => ErrorClass::Usage,
            BatchError::Response { .. } => ErrorClass::Unavailable,
        }
    }
}

/// Statuses a later attempt may get past: timeouts, throttling, server faults.
pub(crate) fn is_transient_status(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let status = |status| BatchError::Status {
            method: "POST",
            url: "u".into(),
            status,
            code: None,
            message: String::new(),
        };
        assert_eq!(status(503).class(), ErrorClass::Unavailable);
        assert_eq!(status(429).class(), ErrorClass::Unavailable);
        assert_eq!(status(403).class(), ErrorClass::Usage);
        assert_eq!(status(404).class(), ErrorClass::Usage);
        assert_eq!(BatchError::MissingEnv { name: "X" }.class(), ErrorClass::Usage);
        let refused =
            BatchError::Refused { job: "j".into(), refused: vec![("t".into(), "bad".into())] };
        assert_eq!(refused.class(), ErrorClass::Usage);
        assert!(refused.to_string().contains("t: bad"));
        let token = |transient| BatchError::Token {
            source_name: "IMDS".into(),
            reason: "r".into(),
            transient,
        };
        assert_eq!(token(true).class(), ErrorClass::Unavailable);
        assert_eq!(token(false).class(), ErrorClass::Usage);
        let transport =
            BatchError::Transport { method: "GET", url: "u".into(), reason: "refused".into() };
        assert_eq!(transport.class(), ErrorClass::Unavailable);
    }
}
