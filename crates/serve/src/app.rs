//! The HTTP service: its settings, its shared state, the router that puts routes and
//! middleware together ([`crate::middleware`], [`crate::handlers`]), and the server's lifecycle
//! from binding to a graceful stop.
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
//! Handlers stay thin: parsing and answers in `handlers`, the work in [`crate::runs`] and
//! [`crate::score`]. Everything blocking (storage) runs on tokio's blocking pool.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::{Json, Router};
use batchscore_io::Location;
use batchscore_scheduler::InputColumns;
use tokio::sync::Semaphore;
use url::Url;

use crate::auth::Authenticator;
use crate::handlers::{metrics, ready, run_status, score, start_run};
use crate::metrics::Metrics;
use crate::middleware::{authenticate, limit_scoring, observe, time_limit};
use crate::models::Models;
use crate::runs::{RunLauncher, Runs};
use crate::score::RowShape;
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
    /// Longest any request may take, body upload included: a client that sends its body
    /// slowly (or stops) gets 408, and a scoring slot it held goes to the next.
    pub request_timeout: Duration,
    /// Longest a client may take to send a request head, and longest a connection may stay
    /// silent with no request in flight (idle keep-alive, nothing sent at all): then it is
    /// closed.
    pub header_timeout: Duration,
    /// Connections open at once; the next are closed at once.
    pub max_connections: usize,
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
            header_timeout: Duration::from_secs(30),
            max_connections: 1024,
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
    /// are built on it. Required to listen beyond loopback. Without it, on the address listened
    /// on, or on `X-Forwarded-Host`/`-Proto` of a request from a trusted proxy.
    pub public_url: Option<Url>,
    /// Peers whose `X-Forwarded-Host` and `X-Forwarded-Proto` are believed (a reverse proxy on
    /// this host); any other client's are ignored, so no request can send pollers elsewhere.
    pub trusted_proxies: Vec<std::net::IpAddr>,
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
pub(crate) struct AppState {
    /// The address bound (the configured one may say port 0).
    pub(crate) local_addr: SocketAddr,
    pub(crate) config: ServeConfig,
    pub(crate) auth: Authenticator,
    pub(crate) models: Arc<Models>,
    pub(crate) runs: Arc<Runs>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shape: RowShape,
    pub(crate) score_slots: Semaphore,
}

pub(crate) type Shared = Arc<AppState>;

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
        if config.public_url.is_none() && !config.listen.ip().is_loopback() {
            return Err(ServeError::Config {
                setting: "public-url",
                reason: format!(
                    "{} is reachable beyond this machine: set --public-url, the URL callers reach \
                     the service at (status URLs are built on it, never on a request's Host)",
                    config.listen
                ),
            });
        }
        let mut config = config;
        config.limits.max_connections =
            crate::connection::fit_open_files(config.limits.max_connections);
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
        let local_addr = listener.local_addr().map_err(ServeError::Serve)?;
        let state = Arc::new(AppState {
            local_addr,
            score_slots: Semaphore::new(config.limits.max_in_flight.max(1)),
            shape: RowShape::new(&sources.columns),
            config,
            auth,
            models: Arc::new(models),
            runs,
            metrics,
        });
        Ok(Server { state, listener })
    }

    /// The address actually bound (port 0 picks a free one).
    pub fn local_addr(&self) -> SocketAddr {
        self.state.local_addr
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
        accept_loop(listener, router(state.clone()), &state.config.limits, shutdown).await;
        refresh.abort();
        state.runs.stop();
        tracing::info!("stopped accepting; waiting for the run workers");
        let _ =
            tokio::task::spawn_blocking(move || workers.into_iter().for_each(|w| drop(w.join())))
                .await;
        Ok(())
    }
}

/// Accepts connections until `shutdown`, then lets the requests in flight finish (at most
/// [`DRAIN`]). Hand-rolled rather than `axum::serve` for the bounds it does not set: at most
/// `max_connections` are open (the next are closed at once), and each is closed once its client
/// leaves it idle for `header_timeout` ([`crate::connection`]).
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let builder = Arc::new(crate::connection::builder(limits.header_timeout));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut refused = Refused::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            refused.one(limits.max_connections);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (builder, app, watcher) = (builder.clone(), app.clone(), graceful.watcher());
        let idle = limits.header_timeout;
        tokio::spawn(async move {
            crate::connection::serve(stream, peer, app, builder, watcher, idle).await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after {DRAIN:?}; stopping anyway");
    }
}

/// Connections refused for the cap, logged at most once a second (2,000 refusals wrote 2,000
/// lines in 1.6 s).
#[derive(Debug, Default)]
struct Refused {
    since_logged: u64,
    logged_at: Option<tokio::time::Instant>,
}

impl Refused {
    fn one(&mut self, limit: usize) {
        self.since_logged += 1;
        let now = tokio::time::Instant::now();
        if self.logged_at.is_none_or(|at| now - at >= Duration::from_secs(1)) {
            tracing::warn!(
                limit,
                refused = self.since_logged,
                "connections refused: too many open"
            );
            self.since_logged = 0;
            self.logged_at = Some(now);
        }
    }
}

/// The address a request came from (its TCP peer).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

/// How long a stop waits for the requests in flight.
const DRAIN: Duration = Duration::from_secs(30);

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
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the route does not answer this method",
            )
        })
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}
