//! Worker pools: every job runs on a rayon pool it builds for itself (no global pool), named so
//! that a stack dump shows whose threads they are.

use crate::SchedulerError;

/// A pool of `threads` workers named `batchscore-worker-N`.
pub fn worker_pool(threads: usize) -> Result<rayon::ThreadPool, SchedulerError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("batchscore-worker-{i}"))
        .build()
        .map_err(|e| SchedulerError::ThreadPool { threads, reason: e.to_string() })
}
