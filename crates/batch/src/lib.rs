//! Running batchscore on the batch engines its users already have, without replacing them:
//! one `batchscore run` per shard, as the engine's own array construct. [`template`] writes a
//! ready job for Kubernetes (Indexed Job), Slurm (job array) and AWS Batch (array job); each
//! shard finds its index (and, where the engine has one, the count) in the environment the
//! engine gives it, and the command line pins what every shard must agree on: the run id, the
//! window and the shard count.

mod template;

pub use template::{Engine, JobSpec, TemplateError, template};
