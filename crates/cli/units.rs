//! Bounds on the rows of a work unit (and so of a part file), resolved once for `run` and
//! `aggregate`: flags (and their environment) > `[run]` > defaults.

use crate::config::ConfigFile;
use crate::usage::UsageError;

const DEFAULT_MIN_PART_ROWS: u64 = 100_000;
const DEFAULT_MAX_PART_ROWS: u64 = 1_000_000;

/// Bounds on rows per work unit: flags (and their environment) > `[run]` > defaults. A bound
/// of 0, or a maximum set below a set minimum, is refused; a default bound gives way to the
/// other one set.
pub(crate) fn part_rows(
    min: Option<u64>,
    max: Option<u64>,
    config: &ConfigFile,
) -> Result<(u64, u64), UsageError> {
    let (min, max) = (min.or(config.run.min_part_rows), max.or(config.run.max_part_rows));
    for (name, value) in [("min_part_rows", min), ("max_part_rows", max)] {
        if value == Some(0) {
            return Err(UsageError(format!(
                "{name} is 0: a work unit holds at least one row (`--{}`)",
                name.replace('_', "-")
            )));
        }
    }
    match (min, max) {
        (Some(min), Some(max)) if max < min => {
            Err(UsageError(format!("max_part_rows ({max}) is below min_part_rows ({min})")))
        }
        (Some(min), Some(max)) => Ok((min, max)),
        (Some(min), None) => Ok((min, DEFAULT_MAX_PART_ROWS.max(min))),
        (None, Some(max)) => Ok((DEFAULT_MIN_PART_ROWS.min(max), max)),
        (None, None) => Ok((DEFAULT_MIN_PART_ROWS, DEFAULT_MAX_PART_ROWS)),
    }
}
