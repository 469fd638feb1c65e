//! Azure Batch: the job schedule (or one-off job) that runs a batchscore run as shard tasks on
//! an existing pool, and the job manager's side of it, which fixes the run's window from the
//! job's creation time and adds the shard tasks through the Batch REST API with an Entra token.
//!
//! Batch retires the job-scoped token (`AZ_BATCH_AUTHENTICATION_TOKEN`, 30 September 2024), so
//! the job manager signs in as the pool's user-assigned managed identity (holding "Azure Batch
//! Job Submitter") through [`Credential`], the same chain storage uses. Nothing here is run by
//! a shell: command lines are `/bin/sh -c` with the run's flags as separate words.

mod client;
mod error;
mod jobs;
mod token;
mod window;

pub use client::{AddReport, BatchClient, ClientOptions, JobInfo, MAX_TASKS_PER_CALL};
pub use error::BatchError;
pub use jobs::{
    AppPackage, JobSchedule, OneOffJob, TaskTemplate, iso_duration, shard_task, shard_task_id,
};
pub use token::{AccessToken, Credential};
pub use window::Cadence;

/// The Batch data-plane API version sent with every request. `2025-06-01` is the version the
/// Azure SDKs name (`KnownVersions.V20250601` of `@azure/batch`) and the stable folder of the
/// REST specification; it dropped the `.NN.0` suffix older versions carried
/// (`2024-07-01.20.0`), which accounts still accept if a region lags (`--api-version`).
pub const API_VERSION: &str = "2025-06-01";

/// The Entra resource (audience) of the Batch service.
pub const BATCH_RESOURCE: &str = "https://batch.core.windows.net/";
