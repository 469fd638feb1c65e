//! The service's two kinds of error: [`ServeError`], which stops it from starting (and maps to
//! the binary's exit codes through [`ServeError::class`]), and [`ApiError`], one failed request,
//! rendered as a JSON body with a status chosen for the callers (Logic Apps and Stream
//! Analytics read the status, people read the body).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use batchscore_io::ErrorClass;
use batchscore_registry::RegistryError;
use serde_json::json;

/// Why the service could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting is wrong (bind address, keys, token settings).
    #[error("invalid setting `{setting}`: {reason}")]
    Config { setting: &'static str, reason: String },
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The registry could not be opened at start.
    #[error("cannot open the model registry")]
    Registry(#[from] RegistryError),
    /// The server's socket failed while serving.
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

impl ServeError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ServeError::Config { .. } | ServeError::Bind { .. } => ErrorClass::Usage,
            ServeError::Registry(e) => e.class(),
            ServeError::Serve(_) => ErrorClass::Unavailable,
        }
    }
}

/// One failed request: a status, a stable machine-readable code and a message for people.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds to wait before retrying (overload, a key set that could not be fetched).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 503 + `Retry-After`: the one status Stream Analytics retries (any other non-200 fails
    /// its job) and one Logic Apps retries too.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A request body that is not the JSON expected: 400 naming what is wrong and where.
    pub fn from_json(error: &serde_json::Error) -> Self {
        // serde_json's message names the line and column already.
        Self::bad_request("malformed_json", format!("the request body is not valid: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
