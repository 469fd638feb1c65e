//! The HTTP service: routes, the middleware around them (access log and metrics, auth, the
//! scoring concurrency limit), and the server's lifecycle from binding to a graceful stop.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /healthz` | no | live: the process answers |
//! | `GET /readyz` | no | ready: the registry index is open |
//! | `GET /metrics` | yes | Prometheus (OpenMetrics) text |
//! | `POST /v1/runs` | yes | start a run: 202 + `Location` + `Retry-After` |
//! | `GET /v1/runs/{id}` | yes | 202 while queued or running, 200 done, 500 failed, 404 unknown |
//! | `POST /v1/score` | yes | `{"data": [rows]}` → JSON array of results |
//!
//! Handlers stay thin: parsing and answers here, the work in [`crate::runs`] and
//! [`crate::score`]. Everything blocking (storage) runs on tokio's blocking pool.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use batchscore_io::Location;
use batchscore_scheduler::InputColumns;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use url::Url;

use crate::auth::{Authenticator, Principal};
use crate::metrics::{Metrics, RouteLabels};
use crate::models::Models;
use crate::runs::{RunLauncher, RunRequest, RunView, Runs};
use crate::score::{RowResult, RowShape, ScoreRequest, score_rows};
use crate::{ApiError, ServeError};

/// Bounds on what one request, and all of them together, may take.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Most rows in one scoring request (Stream Analytics batches up to 10,000 events).
    pub max_rows: usize,
    /// Scoring requests served at once; more wait up to `queue_wait`, then get 503.
    pub max_in_flight: usize,
    pub queue_wait: Duration,
    /// Longest a scoring request may hold its slot, body upload included: a client that
    /// sends its body slowly (or stops) gets 408 and the slot goes to the next.
    pub request_timeout: Duration,
    /// Runs waiting for a worker before `POST /v1/runs` answers 503.
    pub max_queued_runs: usize,
    /// Runs executed at once.
    pub run_workers: usize,
    /// `Retry-After` of 202 answers, in seconds (Logic Apps polls every 20 s without it).
    pub poll_after_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Limits {
            max_body_bytes: 4 << 20,
            max_rows: 10_000,
            max_in_flight: 16 * cores,
            queue_wait: Duration::from_millis(100),
            request_timeout: Duration::from_secs(30),
            max_queued_runs: 100,
            run_workers: 1,
            poll_after_seconds: 20,
        }
    }
}

/// The service's settings (the binary resolves them; see `batchscore serve --help`).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// The URL callers reach the service at (behind a proxy or ingress); `Location` headers
    /// are built on it. Without it, from the request's `Host` (and `X-Forwarded-Proto`).
    pub public_url: Option<Url>,
    pub limits: Limits,
    /// Bytes of model files the cache may hold.
    pub cache_bytes: u64,
    /// How often the registry index is read again.
    pub registry_refresh: Duration,
    /// Reported as `batchscore_build_info{version}`.
    pub version: String,
}

/// What the handlers share.
#[derive(Debug)]
struct AppState {
    config: ServeConfig,
    auth: Authenticator,
    models: Arc<Models>,
    runs: Arc<Runs>,
    metrics: Arc<Metrics>,
    shape: Arc<RowShape>,
    score_slots: Semaphore,
}

type Shared = Arc<AppState>;

/// A bound, ready-to-run service.
#[derive(Debug)]
pub struct Server {
    state: Shared,
    listener: tokio::net::TcpListener,
}

/// What the service serves from.
#[derive(Debug)]
pub struct Sources {
    /// The registry, opened on a storage that shutdown does not cancel (requests in flight
    /// finish).
    pub registry: Location,
    /// Where runs write (for request records and run state).
    pub output: Location,
    /// The input's column names, which scoring rows use too.
    pub columns: InputColumns,
    pub launcher: Arc<dyn RunLauncher>,
}

impl Server {
    /// Checks the settings, opens the registry and binds the socket.
    pub async fn bind(
        config: ServeConfig,
        auth: Authenticator,
        sources: Sources,
    ) -> Result<Self, ServeError> {
        if auth.is_open() && !config.listen.ip().is_loopback() {
            return Err(ServeError::Config {
                setting: "listen",
                reason: format!(
                    "{} is reachable beyond this machine and no API key or token issuer is configured: \
                     set BATCHSCORE_API_KEYS (or --api-keys-file) or --entra-tenant/--jwt-jwks-url, or listen on 127.0.0.1",
                    config.listen
                ),
            });
        }
        let metrics = Arc::new(Metrics::new(&config.version));
        let (registry, cache_bytes, m) = (sources.registry, config.cache_bytes, metrics.clone());
        let models = tokio::task::spawn_blocking(move || Models::open(registry, cache_bytes, m))
            .await
            .map_err(|e| ServeError::Serve(std::io::Error::other(e)))??;
        let runs = Arc::new(Runs::new(
            sources.launcher,
            sources.output,
            metrics.clone(),
            config.limits.max_queued_runs,
        ));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind { addr: config.listen.to_string(), source })?;
        let state = Arc::new(AppState {
            score_slots: Semaphore::new(config.limits.max_in_flight.max(1)),
            shape: Arc::new(RowShape::new(&sources.columns)),
            config,
            auth,
            models: Arc::new(models),
            runs,
            metrics,
        });
        Ok(Server { state, listener })
    }

    /// The address actually bound (port 0 picks a free one).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting, finishes the requests in
    /// flight, and waits for the run workers (whose runs the caller interrupts by cancelling
    /// the runs' storage: committed units stay, and the run resumes when asked for again).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Server { state, listener } = self;
        let workers =
            state.runs.start_workers(state.config.limits.run_workers).map_err(ServeError::Serve)?;
        let refresh =
            tokio::spawn(state.models.clone().refresh_loop(state.config.registry_refresh));
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(listen = %addr, "serving");
        }
        let served =
            axum::serve(listener, router(state.clone())).with_graceful_shutdown(shutdown).await;
        refresh.abort();
        state.runs.stop();
        tracing::info!("stopped accepting; waiting for the run workers");
        let _ =
            tokio::task::spawn_blocking(move || workers.into_iter().for_each(|w| drop(w.join())))
                .await;
        served.map_err(ServeError::Serve)
    }
}

fn router(state: Shared) -> Router {
    let scoring = Router::new()
        .route("/v1/score", post(score))
        .route_layer(middleware::from_fn_with_state(state.clone(), limit_scoring));
    let protected = Router::new()
        .route("/v1/runs", post(start_run))
        .route("/v1/runs/{id}", get(run_status))
        .route("/metrics", get(metrics))
        .merge(scoring)
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "live"})) }))
        .route("/readyz", get(ready))
        .merge(protected)
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// One access-log event and the request metrics per request. Only the route template, the
/// status, the time and who called are logged: never headers or bodies.
async fn observe(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route =
        request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = request.method().clone();
    let response = next.run(request).await;
    let elapsed = start.elapsed();
    let status = response.status().as_u16();
    state.metrics.observe(&route, method.as_str(), status, elapsed.as_secs_f64());
    let principal = response.extensions().get::<Principal>().map(ToString::to_string);
    tracing::info!(
        target: "batchscore::access",
        method = %method, route, status, micros = elapsed.as_micros() as u64,
        principal = principal.as_deref().unwrap_or("-"),
    );
    response
}

async fn authenticate(State(state): State<Shared>, request: Request, next: Next) -> Response {
    match state.auth.check(request.headers().get(header::AUTHORIZATION)).await {
        Ok(principal) => {
            let mut response = next.run(request).await;
            response.extensions_mut().insert(principal);
            response
        }
        Err(e) => {
            if e.status == StatusCode::UNAUTHORIZED {
                state.metrics.auth_failures.inc();
            }
            e.into_response()
        }
    }
}

/// At most `max_in_flight` scoring requests at once; the next wait up to `queue_wait` and are
/// then answered 503 + `Retry-After` (never 429, which fails a Stream Analytics job). A request
/// holds its slot at most `request_timeout`, so slow or stalled uploads cannot starve the rest.
async fn limit_scoring(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let limits = &state.config.limits;
    let permit = match tokio::time::timeout(limits.queue_wait, state.score_slots.acquire()).await {
        Ok(Ok(permit)) => permit,
        _ => {
            state
                .metrics
                .overload_rejections
                .get_or_create(&RouteLabels { route: "/v1/score".into() })
                .inc();
            return ApiError::unavailable(
                "overloaded",
                "the service is at its scoring limit; retry shortly",
                1,
            )
            .into_response();
        }
    };
    state.metrics.score_in_flight.inc();
    let response = match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request took longer than {:?} (body upload included)",
                limits.request_timeout
            ),
        )
        .into_response(),
    };
    state.metrics.score_in_flight.dec();
    drop(permit);
    response
}

async fn ready(State(state): State<Shared>) -> Response {
    match state.models.registry() {
        Some(registry) => {
            Json(serde_json::json!({"status": "ready", "models": registry.len()})).into_response()
        }
        None => ApiError::unavailable("not_ready", "the model registry is not open yet", 5)
            .into_response(),
    }
}

async fn metrics(State(state): State<Shared>) -> Response {
    state.runs.update_metrics();
    let text = state.metrics.render();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response()
}

/// Parses a JSON body; an empty body is the type's default when `empty_ok`.
fn parse_body<T: DeserializeOwned + Default>(body: &Bytes, empty_ok: bool) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if empty_ok {
            Ok(T::default())
        } else {
            Err(ApiError::bad_request("empty_body", "the request has no body"))
        };
    }
    serde_json::from_slice(body).map_err(|e| ApiError::from_json(&e))
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

async fn start_run(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_limit(body, state.config.limits.max_body_bytes)?;
    let request: RunRequest = parse_body(&body, true)?;
    let runs = state.runs.clone();
    let view = blocking(move || {
        let run_id = runs.submit(request)?;
        runs.view(&run_id).map(|view| (run_id, view))
    })
    .await?;
    let (run_id, view) = view;
    // The start always answers 202 with the status URL, whatever the run's state: Logic Apps
    // then polls it and ends on its 200 or error status.
    let location = location(&state, &headers, &run_id)?;
    Ok(accepted(&state, location, view.body))
}

async fn run_status(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let runs = state.runs.clone();
    let lookup = id.clone();
    let RunView { status, body } = blocking(move || runs.view(&lookup)).await?;
    if status == StatusCode::ACCEPTED {
        let location = location(&state, &headers, &id)?;
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
fn location(state: &AppState, headers: &HeaderMap, run_id: &str) -> Result<String, ApiError> {
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
    let host = text("x-forwarded-host")
        .or_else(|| text("host"))
        .filter(|h| {
            !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .unwrap_or_else(|| state.config.listen.to_string());
    Ok(format!("{scheme}://{host}/{path}"))
}

async fn score(
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
    let request: ScoreRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::from_json(&e))?;
    if request.data.len() > limits.max_rows {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_rows",
            format!(
                "{} rows in one request; at most {} (lower the caller's batch size)",
                request.data.len(),
                limits.max_rows
            ),
        ));
    }
    let results = score_rows(&state.models, state.shape.clone(), request.data).await?;
    let errors = results.iter().filter(|r| matches!(r, RowResult::Failed { .. })).count() as u64;
    state.metrics.rows_scored.inc_by(results.len() as u64 - errors);
    state.metrics.row_errors.inc_by(errors);
    Ok(Json(results))
}
