//! `batchscore serve`: one long-running HTTP service over the same registry and engine as the
//! batch job, for the two callers the batch path cannot serve.
//!
//! - **Triggered runs** for Azure Logic Apps' asynchronous pattern: `POST /v1/runs` answers
//!   `202 Accepted` with an absolute `Location` and `Retry-After`; `GET /v1/runs/{id}` answers
//!   202 while the run is queued or running, 200 with its summary when it completed, an error
//!   status with the exit-code class when it failed. Starting a run is idempotent (the same
//!   request names the same run id) and its state lives in the output storage, so a retried
//!   POST or a restarted server never runs it twice ([`runs`]).
//! - **Real-time scoring** for Azure Stream Analytics' Azure ML function: `POST /v1/score` takes
//!   `{"data": [row, ...]}` and answers a JSON array in the same order, with scores bit-identical
//!   to the batch job's; models come through a cache bounded in bytes that follows the registry
//!   index ([`models`], [`score`]).
//!
//! Around both: API keys and Entra ID tokens ([`auth`]), bounded bodies, rows and concurrency
//! with 503 + `Retry-After` on overload, `/healthz`, `/readyz`, Prometheus `/metrics`
//! ([`metrics`]), one access-log event per request, and a graceful stop ([`app`]).
//! The crate owns no global state: the binary builds the runtime, the storage and the settings
//! and hands them in.

pub mod app;
pub mod auth;
mod connection;
mod error;
mod handlers;
pub mod metrics;
mod middleware;
pub mod models;
pub mod rows;
pub mod runs;
pub mod score;

pub use app::{Limits, ServeConfig, Server, Sources};
pub use auth::{ApiKeys, Authenticator, JwtSettings};
pub use error::{ApiError, ServeError};
pub use runs::{LaunchError, RunLauncher, RunRequest};
