//! The middleware around the routes: one access-log event and the request metrics per
//! request (outermost), authentication of the protected routes, and the scoring concurrency
//! limit with its 503 and 408 answers.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiError;
use crate::app::Shared;
use crate::auth::Principal;
use crate::metrics::RouteLabels;

/// One access-log event and the request metrics per request. Only the route template, the
/// status, the time and who called are logged: never headers or bodies.
pub(crate) async fn observe(State(state): State<Shared>, request: Request, next: Next) -> Response {
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

pub(crate) async fn authenticate(
    State(state): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
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

/// Every request ends within `request_timeout`, body upload included: 408 after it. A stalled
/// body (a byte every half second) holds no connection, slot or worker longer.
pub(crate) async fn time_limit(
    State(state): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    let limit = state.config.limits.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request took longer than {limit:?} (body upload included)"),
        )
        .into_response(),
    }
}

/// The scoring gauge, held while a request has a slot: dropped with the request when
/// [`time_limit`] ends it.
struct InFlight<'a>(&'a crate::metrics::Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.score_in_flight.dec();
    }
}

/// At most `max_in_flight` scoring requests at once; the next wait up to `queue_wait` and are
/// then answered 503 + `Retry-After` (never 429, which fails a Stream Analytics job). A request
/// holds its slot at most `request_timeout` ([`time_limit`]), so slow or stalled uploads cannot
/// starve the rest.
pub(crate) async fn limit_scoring(
    State(state): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
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
    let _in_flight = InFlight(&state.metrics);
    let response = next.run(request).await;
    drop(permit);
    response
}
