//! Running batchscore on the batch engines its users already have, without replacing them:
//! one `batchscore run` per shard, as the engine's own construct. [`azure`] writes Azure Batch
//! job schedules and is the job manager that adds their shard tasks; [`template`] writes a
//! ready job for Kubernetes (Indexed Job), Slurm (job array) and AWS Batch (array job). Each
//! shard finds its index (and, where the engine has one, the count) in the environment the
//! engine gives it, and the command line pins what every shard must agree on: the run id, the
//! window and the shard count.

pub mod azure;
mod template;

pub use template::{Engine, JobSpec, PERMANENT_EXIT_CODES, TemplateError, template};
