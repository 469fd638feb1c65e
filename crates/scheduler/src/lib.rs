//! Planning and execution of batchscore jobs: which devices, which row groups, which worker.
//!
//! A job scans its input once (one listing, one footer read per file that partition pruning
//! keeps), prunes row groups by device and time statistics, and groups row groups into work
//! units in device order, so that every byte of input belongs to exactly one unit. The plan
//! depends only on the input, the selection and the window, never on threads or shards; shards
//! take a deterministic, row-balanced subset of it.
//! Units run on a rayon pool owned by the job. Each unit writes one Parquet part and a receipt;
//! a shard manifest and `_SUCCESS` are written create-only, which makes reruns exactly-once.

mod aggregate;
mod commit;
mod dataset;
mod drift;
mod error;
mod execute;
mod fingerprint;
mod layout;
mod output;
mod plan;
mod pool;
mod progress;
mod run;
mod run_unit;
mod score;
mod select;
mod status;
mod stored;
mod train;
mod transform;

pub use aggregate::{TransformSpec, transform};
pub use batchscore_io::{error_causes, error_chain};
pub use commit::Totals;
pub use commit::{DeviceOutcome, DeviceStatus, Manifest, PartInfo, ShardError};
pub use dataset::{InputColumns, Layout, TIMESTAMP_RANGE_US, sensor_order};
pub use drift::DriftSummary;
pub use error::SchedulerError;
pub use layout::{DRIFT_TABLE, RUN_TABLES, run_dir, table_location, tables_dir, tables_path};
pub use output::{OutputFormat, OutputProfile, OutputSpec};
pub use plan::{Plan, Unit};
pub use pool::worker_pool;
pub use progress::{NoProgress, Progress};
pub use run::{
    DEFAULT_CHUNK_ROWS, PlanSummary, RunReport, RunSpec, StoredPlanCheck, StoredRun, check_run_id,
    check_stored_plan, dry_run, run, store_plan,
};
pub use select::{DeviceSelection, MaxFailed, SensorSelection, Shard, TimeWindow};
pub use status::{RunState, RunStatus, ShardState, completed_run, status};
pub use train::{TrainParams, TrainReport, TrainSpec, train};
pub use transform::{TableLayout, Transform, TransformError, UnitTransform};
