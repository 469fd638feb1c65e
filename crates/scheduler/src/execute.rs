//! Running a shard's units on the job's worker pool: each unit is committed, or found committed
//! by an earlier attempt; an interruption stops the units not yet started. Shared by scoring and
//! transform jobs.

use rayon::prelude::*;

use batchscore_io::ErrorClass;

use crate::commit::{Committed, Receipt, RunCommit};
use crate::{Plan, Progress, SchedulerError, Shard};

/// What this shard's units committed.
pub(crate) struct Executed {
    pub receipts: Vec<Receipt>,
    pub units: usize,
    pub skipped: usize,
    pub rows_scored_now: u64,
}

/// Commits one unit, or finds it committed by an earlier attempt.
pub(crate) type ProcessUnit<'a> =
    dyn Fn(&crate::Unit) -> Result<(Receipt, Committed), SchedulerError> + Sync + 'a;

/// Runs this shard's units of `plan` on a pool of `threads` workers.
pub(crate) fn execute(
    (threads, shard): (usize, Shard),
    commit: &RunCommit,
    plan: &Plan,
    progress: &dyn Progress,
    process: &ProcessUnit<'_>,
) -> Result<Executed, SchedulerError> {
    let mine = plan.shard_units(shard);
    let my_rows: u64 = mine.iter().map(|&u| plan.units[u].rows).sum();
    progress.start(mine.len(), my_rows);
    let pool = crate::worker_pool(threads)?;
    let results: Vec<Result<(Receipt, Committed), SchedulerError>> = pool.install(|| {
        mine.par_iter()
            .map(|&u| {
                let result = process(&plan.units[u]);
                if let Ok((receipt, committed)) = &result {
                    let rows = receipt.part.as_ref().map_or(0, |p| p.rows);
                    let earlier = *committed == Committed::Earlier;
                    progress.unit_done(rows, receipt.devices.len(), earlier);
                }
                result
            })
            .collect()
    });
    progress.finish();
    let mut executed =
        Executed { receipts: Vec::new(), units: mine.len(), skipped: 0, rows_scored_now: 0 };
    if results.iter().any(|r| r.as_ref().is_err_and(|e| e.class() == ErrorClass::Interrupted)) {
        return Err(SchedulerError::Interrupted {
            run_id: commit.run_id().to_string(),
            committed: results.iter().filter(|r| r.is_ok()).count(),
            units: mine.len(),
        });
    }
    for result in results {
        let (receipt, committed) = result?;
        match committed {
            Committed::Earlier => executed.skipped += 1,
            Committed::Now => {
                executed.rows_scored_now += receipt.part.as_ref().map_or(0, |p| p.rows);
            }
        }
        executed.receipts.push(receipt);
    }
    Ok(executed)
}
