//! Progress reporting, passed in by the caller so the library never prints.

/// Receives progress events from a running job; implementations must be cheap and thread-safe.
pub trait Progress: Send + Sync {
    /// The plan is known: this many units, rows and devices will be processed by this shard.
    fn start(&self, _units: usize, _rows: u64) {}
    /// A unit finished (`skipped` when it was already committed by an earlier attempt).
    fn unit_done(&self, _rows: u64, _devices: usize, _skipped: bool) {}
    /// The job is done.
    fn finish(&self) {}
}

/// Ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
