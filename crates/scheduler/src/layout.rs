//! Where a run's objects live under the output location.
//!
//! `OUTPUT/RUN_ID/` holds the run's scored rows (`part-NNNNN.parquet` or `.csv`) and its
//! bookkeeping, every name of which starts with `_` and none of which is Parquet. Readers point
//! at that folder, or glob it (`*.parquet`, `**/*.parquet`): pyarrow and Spark skip `_` names,
//! and a glob finds no Parquet file but the parts, so every reader counts exactly the scored
//! rows. The run's other tables (drift, failures) and its report sit beside it, under
//! `OUTPUT/_runs/RUN_ID/`, where a glob of the run's folder never reaches them and a reader of
//! the output's folders skips them (`_` again).

use batchscore_io::{IoError, Location};

/// The folder under the output that holds every run's other tables and report.
pub const RUN_TABLES: &str = "_runs";

/// The drift table's name in a run's tables folder.
pub const DRIFT_TABLE: &str = "drift.parquet";

/// The folder of run `run_id`'s scored rows and bookkeeping.
pub fn run_dir(output: &Location, run_id: &str) -> Result<Location, IoError> {
    output.join(run_id)
}

/// The folder of run `run_id`'s other tables and report (`OUTPUT/_runs/RUN_ID`).
pub fn tables_dir(output: &Location, run_id: &str) -> Result<Location, IoError> {
    output.join(&tables_path(run_id, ""))
}

/// `name` in run `run_id`'s tables folder, relative to the output location: how manifests
/// record the tables they name.
pub fn tables_path(run_id: &str, name: &str) -> String {
    if name.is_empty() {
        format!("{RUN_TABLES}/{run_id}")
    } else {
        format!("{RUN_TABLES}/{run_id}/{name}")
    }
}

/// Where a table a manifest names is: relative to the output, or (runs of earlier builds,
/// which wrote `drift.parquet` and `_failures/...` inside the run's folder) to the run's
/// folder.
pub fn table_location(
    output: &Location,
    run_id: &str,
    recorded: &str,
) -> Result<(Location, String), IoError> {
    if recorded.starts_with(&format!("{RUN_TABLES}/")) {
        Ok((output.clone(), recorded.to_string()))
    } else {
        Ok((run_dir(output, run_id)?, recorded.to_string()))
    }
}
