//! The route handlers: parse the request, hand the work to [`crate::runs`] or
//! [`crate::score`] (blocking work on tokio's blocking pool), and shape the answer: Logic Apps'
//! 202 + absolute `Location` + `Retry-After`, Stream Analytics' JSON array, metrics text.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::de::DeserializeOwned;
use url::Url;

use crate::ApiError;
use crate::app::{AppState, Peer, Shared};
use crate::rows::{BodyError, request_rows};
use crate::runs::{RunRequest, RunView};
use crate::score::{RowResult, score_rows};

pub(crate) async fn ready(State(state): State<Shared>) -> Response {
    match state.models.registry() {
        Some(registry) => {
            Json(serde_json::json!({"status": "ready", "models": registry.len()})).into_response()
        }
        None => ApiError::unavailable("not_ready", "the model registry is not open yet", 5)
            .into_response(),
    }
}

pub(crate) async fn metrics(State(state): State<Shared>) -> Response {
    state.runs.update_metrics();
    let text = state.metrics.render();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response()
}

/// Parses a JSON object body; an empty (or blank) body is whatever `empty` says.
fn parse_body<T: DeserializeOwned>(
    body: &Bytes,
    empty: impl FnOnce() -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    if body.trim_ascii_start().is_empty() {
        return empty();
    }
    require_object(body)?;
    serde_json::from_slice(body).map_err(|e| ApiError::from_json(&e))
}

/// Any JSON but an object is 400 (`[]` would fill a struct's fields by position, and start a
/// run of every device). Malformed JSON says where; well-formed JSON of another kind says what
/// it must be.
fn require_object(body: &[u8]) -> Result<(), ApiError> {
    if body.trim_ascii_start().starts_with(b"{") {
        return Ok(());
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|e| ApiError::from_json(&e))?;
    Err(ApiError::bad_request("malformed_json", "the request body must be a JSON object"))
}

/// The body, or 413 when it is over the limit.
fn body_or_limit(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {limit} bytes"),
        ),
        status => ApiError::new(status, "bad_body", e.body_text()),
    })
}

/// Runs blocking work (storage) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
    })
}

pub(crate) async fn start_run(
    State(state): State<Shared>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_limit(body, state.config.limits.max_body_bytes)?;
    let request: RunRequest = parse_body(&body, || Ok(RunRequest::default()))?;
    let runs = state.runs.clone();
    let view = blocking(move || {
        let run_id = runs.submit(request)?;
        runs.view(&run_id).map(|view| (run_id, view))
    })
    .await?;
    let (run_id, view) = view;
    // The start always answers 202 with the status URL, whatever the run's state: Logic Apps
    // then polls it and ends on its 200 or error status.
    let location = location(&state, &headers, peer.map(|p| p.0), &run_id)?;
    Ok(accepted(&state, location, view.body))
}

pub(crate) async fn run_status(
    State(state): State<Shared>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let runs = state.runs.clone();
    let lookup = id.clone();
    let RunView { status, body } = blocking(move || runs.view(&lookup)).await?;
    if status == StatusCode::ACCEPTED {
        let location = location(&state, &headers, peer.map(|p| p.0), &id)?;
        return Ok(accepted(&state, location, body));
    }
    Ok((status, Json(body)).into_response())
}

fn accepted(state: &AppState, location: String, body: serde_json::Value) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(header::RETRY_AFTER, HeaderValue::from(state.config.limits.poll_after_seconds));
    response
}

/// The absolute status URL of a run (Logic Apps requires an absolute `Location`).
fn location(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<Peer>,
    run_id: &str,
) -> Result<String, ApiError> {
    let path = format!("v1/runs/{run_id}");
    if let Some(base) = &state.config.public_url {
        let base = if base.path().ends_with('/') {
            base.clone()
        } else {
            Url::parse(&format!("{base}/")).unwrap_or_else(|_| base.clone())
        };
        return base.join(&path).map(String::from).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        });
    }
    // Forwarded headers come from a client as easily as from a proxy: believed only from a
    // trusted one.
    let trusted = peer.is_some_and(|p| state.config.trusted_proxies.contains(&p.0.ip()));
    if !trusted {
        return Ok(format!("http://{}/{path}", state.local_addr));
    }
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or(v).trim().to_string())
    };
    let scheme = match text("x-forwarded-proto").as_deref() {
        Some("https") => "https",
        _ => "http",
    };
    // A forwarded host that is not a host name falls back to the address listened on.
    let host_name = |h: &String| {
        !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    };
    let host =
        text("x-forwarded-host").filter(host_name).unwrap_or_else(|| state.local_addr.to_string());
    Ok(format!("{scheme}://{host}/{path}"))
}

pub(crate) async fn score(
    State(state): State<Shared>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Vec<RowResult>>, ApiError> {
    let limits = &state.config.limits;
    let body = body_or_limit(body, limits.max_body_bytes)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "empty_body",
            "the request has no body; send {\"data\": [rows]}",
        ));
    }
    require_object(&body)?;
    let rows = match request_rows(&body, limits.max_rows) {
        Ok(rows) => rows,
        Err(BodyError::TooManyRows) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_rows",
                format!(
                    "more than {} rows in one request; at most {} (lower the caller's batch size)",
                    limits.max_rows, limits.max_rows
                ),
            ));
        }
        Err(BodyError::Json(e)) => return Err(ApiError::from_json(&e)),
    };
    drop(body);
    let results = score_rows(&state.models, &state.shape, rows).await?;
    let errors = results.iter().filter(|r| matches!(r, RowResult::Failed { .. })).count() as u64;
    state.metrics.rows_scored.inc_by(results.len() as u64 - errors);
    state.metrics.row_errors.inc_by(errors);
    Ok(Json(results))
}
