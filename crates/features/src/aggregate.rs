//! Interval aggregation: tumbling windows per device (and sensor), and the long-to-wide pivot
//! into one row per device and window.
//!
//! Windows are aligned to the epoch (plus `offset`), not to the first reading, so the same
//! instant falls in the same window in every unit, shard and run; the grid is polars'
//! `group_by_dynamic`'s (calendar months and weeks included). A window is labelled by its
//! start. Each reading's window start is computed from its timestamp and the readings are
//! grouped by it, so the work follows the readings, never the span between them: polars'
//! `group_by_dynamic` walks every window from the first reading to the last, and two readings
//! 600 years apart at `--every 1m` (or 500 readings at `--every 1us`) ran for ever or asked
//! for 240 GB. Missing readings (null, or NaN in the input) are skipped by every statistic, and
//! `count` counts the readings present. With `dedupe`, a reading that repeats the device,
//! sensor and timestamp of an earlier one is dropped (retransmitted telemetry), keeping the
//! first in input order.

use batchscore_scheduler::{TIMESTAMP_RANGE_US, TableLayout, TransformError, UnitTransform};
use polars::prelude::{
    DataFrame, DataType, Duration, Expr, Int64Chunked, IntoLazy, IntoSeries, SortMultipleOptions,
    TimeUnit, UniqueKeepStrategy, col, lit,
};
use serde::{Deserialize, Serialize};

use crate::FeaturesError;
use crate::exchange::{to_arrow, to_polars};

/// A statistic of the readings in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stat {
    /// Readings present (nulls not counted).
    Count,
    Mean,
    /// Sample standard deviation (n − 1), null below two readings.
    Std,
    Min,
    Max,
    /// The first and last reading present, in time order.
    First,
    Last,
}

impl Stat {
    pub const ALL: [Stat; 7] =
        [Stat::Count, Stat::Mean, Stat::Std, Stat::Min, Stat::Max, Stat::First, Stat::Last];

    /// The statistic's name, as in column names and settings.
    pub fn name(self) -> &'static str {
        match self {
            Stat::Count => "count",
            Stat::Mean => "mean",
            Stat::Std => "std",
            Stat::Min => "min",
            Stat::Max => "max",
            Stat::First => "first",
            Stat::Last => "last",
        }
    }

    /// Parses a comma-separated list (`mean,std`), keeping the first of repeated names.
    pub fn parse_list(text: &str) -> Result<Vec<Stat>, FeaturesError> {
        let mut stats = Vec::new();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let stat = Stat::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
                FeaturesError::InvalidSetting {
                    setting: "stats",
                    reason: format!(
                        "unknown statistic `{name}`; known: {}",
                        Stat::ALL.map(Stat::name).join(", ")
                    ),
                }
            })?;
            if !stats.contains(&stat) {
                stats.push(stat);
            }
        }
        Ok(stats)
    }

    fn expr(self, values: Expr) -> Expr {
        match self {
            Stat::Count => values.count().cast(DataType::Int64),
            Stat::Mean => values.mean(),
            Stat::Std => values.std(1),
            Stat::Min => values.min(),
            Stat::Max => values.max(),
            Stat::First => values.drop_nulls().first(),
            Stat::Last => values.drop_nulls().last(),
        }
    }
}

/// Which end of a window belongs to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Closed {
    /// `[start, start + every)`: a reading on a boundary opens the next window.
    #[default]
    Left,
    /// `(start, start + every]`: a reading on a boundary closes the window before it.
    Right,
}

/// The `[aggregate]` settings, as written in a config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregateConfig {
    /// Window length: `5s`, `1m`, `15m`, `1h`, `1d` (polars duration syntax: ns, us, ms, s,
    /// m, h, d, w, mo, y, combinable as `1h30m`).
    pub every: Option<String>,
    /// Shift of the window grid from the epoch (`0s`; may be negative).
    pub offset: String,
    pub closed: Closed,
    pub stats: Vec<Stat>,
    /// Long input: one row per device and window, one column per sensor and statistic.
    pub pivot: bool,
    /// Drop readings that repeat an earlier one's device, sensor and timestamp.
    pub dedupe: bool,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self {
            every: None,
            offset: "0s".into(),
            closed: Closed::Left,
            stats: Stat::ALL.to_vec(),
            pivot: false,
            dedupe: true,
        }
    }
}

/// The column a unit's window starts are computed into before grouping (renamed to the
/// timestamp column's name after).
const WINDOW: &str = "__batchscore_window_start";

/// The longest window: 10,000 years, past the span of every timestamp the engine reads.
const MAX_EVERY_US: i128 = 10_000 * 366 * 86_400 * 1_000_000;

/// A duration's length in microseconds, months counted as 31 days, without overflow (polars'
/// own estimate overflows past 292 years of days).
fn approx_us(d: &Duration) -> i128 {
    const DAY: i128 = 86_400_000_000;
    i128::from(d.months()) * 31 * DAY
        + i128::from(d.weeks()) * 7 * DAY
        + i128::from(d.days()) * DAY
        + i128::from(d.nanoseconds()) / 1000
}

/// A checked aggregation, ready to run on units.
#[derive(Debug, Clone)]
pub struct Aggregation {
    every: Duration,
    /// `offset` backwards.
    offset_back: Duration,
    offset: Duration,
    closed: Closed,
    stats: Vec<Stat>,
    /// The pivot's sensors, in column order.
    pivot: Option<Vec<String>>,
    dedupe: bool,
    described: serde_json::Value,
}

fn duration(setting: &'static str, text: &str) -> Result<Duration, FeaturesError> {
    let invalid = |reason: String| FeaturesError::InvalidSetting { setting, reason };
    let trimmed = text.trim();
    let digits = trimmed.strip_prefix('-').unwrap_or(trimmed);
    // `3i` is polars' "3 rows", which means nothing for windows of time.
    if digits.is_empty()
        || !digits.starts_with(|c: char| c.is_ascii_digit())
        || digits.ends_with('i')
    {
        return Err(invalid(format!(
            "`{text}` is not a duration such as 5s, 15m, 1h, 1d or 1h30m"
        )));
    }
    Duration::try_parse(trimmed).map_err(|e| invalid(format!("`{text}`: {e}")))
}

impl Aggregation {
    /// Checks `config`; `sensors` are the selected sensors, which a pivot needs to name its
    /// columns.
    pub fn new(
        config: &AggregateConfig,
        sensors: Option<&[String]>,
    ) -> Result<Self, FeaturesError> {
        let invalid = |setting, reason: &str| FeaturesError::InvalidSetting {
            setting,
            reason: reason.to_string(),
        };
        let every_text = config.every.as_deref().ok_or_else(|| {
            invalid("every", "set the window length (`--every 5s`, or `every` in [aggregate])")
        })?;
        let every = duration("every", every_text)?;
        if every.negative() || every.is_zero() {
            return Err(invalid("every", "a window lasts longer than nothing"));
        }
        if approx_us(&every) > MAX_EVERY_US {
            return Err(invalid("every", "a window lasts at most 10,000 years"));
        }
        let offset = duration("offset", &config.offset)?;
        let offset_text = config.offset.trim();
        let offset_back = duration(
            "offset",
            &match offset_text.strip_prefix('-') {
                Some(positive) => positive.to_string(),
                None => format!("-{offset_text}"),
            },
        )?;
        // An offset shifts the grid by at most one window: more is the same grid for fixed
        // lengths, and only overflows arithmetic on the readings' times.
        if approx_us(&offset) > approx_us(&every) {
            return Err(invalid(
                "offset",
                &format!("`{}` is longer than a window (`{}`)", config.offset.trim(), every_text),
            ));
        }
        if config.stats.is_empty() {
            return Err(invalid("stats", "name at least one statistic"));
        }
        let mut stats = Vec::new();
        for s in &config.stats {
            if !stats.contains(s) {
                stats.push(*s);
            }
        }
        let pivot = match (config.pivot, sensors) {
            (false, _) => None,
            (true, Some(names)) if !names.is_empty() => Some(names.to_vec()),
            (true, _) => {
                return Err(invalid(
                    "pivot",
                    "a pivot names one column per sensor and statistic, and every part of a \
                     run must have the same columns whichever sensors reported: list the \
                     sensors (`--sensors a,b,c`)",
                ));
            }
        };
        let described = serde_json::json!({
            "every": every_text.trim(),
            "offset": config.offset.trim(),
            "closed": config.closed,
            "stats": stats,
            "pivot": pivot,
            "dedupe": config.dedupe,
        });
        Ok(Self {
            every,
            offset_back,
            offset,
            closed: config.closed,
            stats,
            pivot,
            dedupe: config.dedupe,
            described,
        })
    }

    /// The output columns after the key columns, for input of this layout.
    fn value_names(&self, layout: &TableLayout) -> Vec<String> {
        let stat_names = |prefix: &str| -> Vec<String> {
            self.stats.iter().map(|s| format!("{prefix}_{}", s.name())).collect()
        };
        match (&layout.sensor, &self.pivot) {
            (Some(_), Some(sensors)) => sensors.iter().flat_map(|s| stat_names(s)).collect(),
            (Some(_), None) => self.stats.iter().map(|s| s.name().to_string()).collect(),
            (None, _) => layout.values.iter().flat_map(|v| stat_names(v)).collect(),
        }
    }

    /// The start of the window holding the reading at `t` (µs): `t` moved back by `offset`,
    /// truncated by `every` as polars truncates (epoch-aligned lengths, Monday-aligned weeks,
    /// calendar months), moved forward again. For lengths of fixed size that is
    /// `group_by_dynamic`'s grid. For calendar months with an offset it is the month grid
    /// shifted, a partition of time; `group_by_dynamic` instead adds months to its first
    /// window, so its windows there drift by days and depend on the first reading.
    fn window_start(&self, t: i64) -> Result<i64, FeaturesError> {
        let failed = |e: polars::prelude::PolarsError| FeaturesError::Polars {
            doing: "place a reading in its window",
            source: e,
        };
        if !TIMESTAMP_RANGE_US.contains(&t) {
            // The reader refuses such readings; polars' calendar arithmetic would panic on them.
            return Err(FeaturesError::InvalidSetting {
                setting: "every",
                reason: format!("a reading at {t} µs is outside the years 0001 to 9999"),
            });
        }
        // A right-closed window (s, s + every] holds what [s, s + every) holds a microsecond
        // later.
        let t = match self.closed {
            Closed::Left => t,
            Closed::Right => t - 1,
        };
        let shifted = self.offset_back.add_us(t, None).map_err(failed)?;
        let start = self.every.truncate_us(shifted, None).map_err(failed)?;
        self.offset.add_us(start, None).map_err(failed)
    }

    /// Each row's window start, as a column named [`WINDOW`].
    fn window_column(
        &self,
        frame: &DataFrame,
        ts: &str,
    ) -> Result<polars::prelude::Column, FeaturesError> {
        let read = FeaturesError::polars("read the timestamps of a unit");
        let times = frame
            .column(ts)
            .map_err(&read)?
            .cast(&DataType::Datetime(TimeUnit::Microseconds, None))
            .map_err(&read)?;
        let times = times.datetime().map_err(&read)?;
        let starts: Int64Chunked = times
            .physical()
            .iter()
            .map(|t| t.map(|t| self.window_start(t)).transpose())
            .collect::<Result<_, _>>()?;
        let starts = starts
            .into_datetime(TimeUnit::Microseconds, None)
            .into_series()
            .with_name(WINDOW.into());
        Ok(starts.into())
    }

    /// Aggregates one unit's rows (sorted by device, sensor and time).
    pub fn frame(
        &self,
        frame: DataFrame,
        layout: &TableLayout,
    ) -> Result<DataFrame, FeaturesError> {
        let (device, ts) = (layout.device.as_str(), layout.timestamp.as_str());
        let mut frame = frame;
        let windows = self.window_column(&frame, ts)?;
        frame.with_column(windows).map_err(FeaturesError::polars("aggregate a unit"))?;
        let mut frame = frame.lazy();
        let series_keys: Vec<Expr> = match &layout.sensor {
            Some(sensor) => vec![col(device), col(sensor.as_str())],
            None => vec![col(device)],
        };
        if self.dedupe {
            let mut subset = series_keys.clone();
            subset.push(col(ts));
            frame = frame.unique_stable_generic(Some(subset), UniqueKeepStrategy::First);
        }
        let (group_keys, aggs): (Vec<Expr>, Vec<Expr>) = match (&layout.sensor, &self.pivot) {
            (Some(sensor), Some(sensors)) => {
                // Windows per device over every sensor: the rows must be in time order
                // within each device, not within each series.
                frame = frame
                    .sort([device, ts], SortMultipleOptions::default().with_maintain_order(true));
                let value = col(layout.values[0].as_str());
                let aggs = sensors
                    .iter()
                    .flat_map(|s| {
                        let of_sensor =
                            value.clone().filter(col(sensor.as_str()).eq(lit(s.as_str())));
                        self.stats.iter().map(move |stat| {
                            stat.expr(of_sensor.clone()).alias(format!("{s}_{}", stat.name()))
                        })
                    })
                    .collect();
                (vec![col(device)], aggs)
            }
            (Some(_), None) => {
                let value = col(layout.values[0].as_str());
                let aggs =
                    self.stats.iter().map(|s| s.expr(value.clone()).alias(s.name())).collect();
                (series_keys.clone(), aggs)
            }
            (None, _) => {
                let aggs = layout
                    .values
                    .iter()
                    .flat_map(|v| {
                        self.stats.iter().map(move |s| {
                            s.expr(col(v.as_str())).alias(format!("{v}_{}", s.name()))
                        })
                    })
                    .collect();
                (series_keys.clone(), aggs)
            }
        };
        // device, [sensor,] timestamp: the order of scored parts' columns.
        let mut order: Vec<Expr> = group_keys.clone();
        order.push(col(ts));
        let mut columns = group_keys.clone();
        columns.push(col(WINDOW).alias(ts));
        columns.extend(self.value_names(layout).into_iter().map(|n| col(n.as_str())));
        let mut by = group_keys;
        by.push(col(WINDOW));
        // Rows keep their input (time) order within a group, which `first` and `last` need.
        frame
            .group_by_stable(by)
            .agg(aggs)
            .select(columns)
            .sort_by_exprs(order, SortMultipleOptions::default().with_maintain_order(true))
            .collect()
            .map_err(FeaturesError::polars("aggregate a unit"))
    }
}

impl UnitTransform for Aggregation {
    fn describe(&self) -> serde_json::Value {
        self.described.clone()
    }

    fn output_layout(&self, layout: &TableLayout) -> TableLayout {
        TableLayout {
            device: layout.device.clone(),
            timestamp: layout.timestamp.clone(),
            sensor: if self.pivot.is_some() { None } else { layout.sensor.clone() },
            values: self.value_names(layout),
        }
    }

    fn check(&self, layout: &TableLayout) -> Result<(), String> {
        if self.pivot.is_some() && layout.sensor.is_none() {
            return Err("`pivot` turns long readings (device, sensor, value) wide; this input \
                        is already wide: each sensor column is aggregated as it is"
                .into());
        }
        let mut names = vec![layout.device.clone(), layout.timestamp.clone()];
        if self.pivot.is_none() {
            names.extend(layout.sensor.clone());
        }
        names.extend(self.value_names(layout));
        if layout.values.iter().any(|v| v == WINDOW) {
            return Err(format!("`{WINDOW}` is a column name the aggregation keeps for itself"));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(format!(
                "two output columns would be named `{twice}`: rename the input's columns or \
                 choose other statistics"
            ));
        }
        Ok(())
    }

    fn apply(
        &self,
        batch: arrow::array::RecordBatch,
        layout: &TableLayout,
    ) -> Result<arrow::array::RecordBatch, TransformError> {
        let frame = to_polars(&batch)?;
        drop(batch);
        let mut frame = self.frame(frame, layout)?;
        Ok(to_arrow(&mut frame)?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
        TimestampMicrosecondArray,
    };
    use arrow::datatypes::{
        DataType as ArrowType, Field, Float64Type, Int64Type, Schema, TimeUnit,
    };

    use super::*;

    const S: i64 = 1_000_000;

    fn long_layout() -> TableLayout {
        TableLayout {
            device: "Device".into(),
            timestamp: "TS".into(),
            sensor: Some("Tag".into()),
            values: vec!["Value".into()],
        }
    }

    /// A long unit from `(device, tag, seconds, value)`, in the order given.
    fn long_batch(rows: &[(i64, &str, i64, Option<f64>)]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("Device", ArrowType::Int64, false),
            Field::new("TS", ArrowType::Timestamp(TimeUnit::Microsecond, None), false),
            Field::new("Tag", ArrowType::Utf8, false),
            Field::new("Value", ArrowType::Float64, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.2 * S))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(rows.iter().map(|r| r.3).collect::<Float64Array>()),
            ],
        )
        .unwrap()
    }

    fn config(every: &str, stats: &str) -> AggregateConfig {
        AggregateConfig {
            every: Some(every.into()),
            stats: Stat::parse_list(stats).unwrap(),
            ..Default::default()
        }
    }

    fn floats(batch: &RecordBatch, name: &str) -> Vec<Option<f64>> {
        let column = batch.column_by_name(name).unwrap().as_primitive::<Float64Type>();
        (0..column.len()).map(|i| column.is_valid(i).then(|| column.value(i))).collect()
    }

    fn ints(batch: &RecordBatch, name: &str) -> Vec<i64> {
        batch.column_by_name(name).unwrap().as_primitive::<Int64Type>().values().to_vec()
    }

    fn starts(batch: &RecordBatch) -> Vec<i64> {
        let ts = batch.column_by_name("TS").unwrap();
        ts.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
            .values()
            .iter()
            .map(|t| t / S)
            .collect()
    }

    #[test]
    fn tumbling_windows_per_series_skip_nulls_and_drop_repeated_readings() {
        let batch = long_batch(&[
            (1, "a", 0, Some(1.0)),
            (1, "a", 4, Some(3.0)),
            (1, "a", 4, Some(99.0)), // a repeat of (1, a, 4s): dropped, the first kept
            (1, "a", 5, None),       // a window of nothing but a missing reading
            (1, "a", 12, Some(7.0)),
            (1, "b", 1, Some(2.0)),
            (2, "a", 3, Some(5.0)),
        ]);
        let aggregation =
            Aggregation::new(&config("5s", "count,mean,std,min,max,first,last"), None).unwrap();
        let out = aggregation.apply(batch, &long_layout()).unwrap();
        let names: Vec<String> = out.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(
            names,
            ["Device", "Tag", "TS", "count", "mean", "std", "min", "max", "first", "last"]
        );
        assert_eq!(ints(&out, "Device"), [1, 1, 1, 1, 2]);
        assert_eq!(starts(&out), [0, 5, 10, 0, 0]);
        assert_eq!(ints(&out, "count"), [2, 0, 1, 1, 1]);
        assert_eq!(floats(&out, "mean"), [Some(2.0), None, Some(7.0), Some(2.0), Some(5.0)]);
        assert_eq!(floats(&out, "std")[0], Some(2f64.sqrt()));
        assert_eq!(floats(&out, "std")[2], None, "one reading has no sample deviation");
        assert_eq!(floats(&out, "last"), [Some(3.0), None, Some(7.0), Some(2.0), Some(5.0)]);
        assert_eq!(floats(&out, "first")[0], Some(1.0));
    }

    #[test]
    fn closed_side_and_offset_move_the_boundaries() {
        let rows = [(1, "a", 5, Some(1.0)), (1, "a", 6, Some(2.0)), (1, "a", 10, Some(3.0))];
        let run = |config: AggregateConfig| {
            let out = Aggregation::new(&config, None)
                .unwrap()
                .apply(long_batch(&rows), &long_layout())
                .unwrap();
            (starts(&out), ints(&out, "count"))
        };
        assert_eq!(run(config("5s", "count")), (vec![5, 10], vec![2, 1]));
        let right = AggregateConfig { closed: Closed::Right, ..config("5s", "count") };
        assert_eq!(run(right), (vec![0, 5], vec![1, 2]), "(0, 5] and (5, 10]");
        let shifted = AggregateConfig { offset: "2s".into(), ..config("5s", "count") };
        assert_eq!(run(shifted), (vec![2, 7], vec![2, 1]));
    }

    #[test]
    fn a_pivot_makes_one_row_per_device_and_window_with_a_column_per_sensor() {
        let batch = long_batch(&[
            (1, "a", 0, Some(1.0)),
            (1, "a", 6, Some(3.0)),
            (1, "b", 1, Some(2.0)),
            (1, "b", 2, Some(4.0)),
        ]);
        let sensors = ["a".to_string(), "b".into(), "silent".into()];
        let pivot = AggregateConfig { pivot: true, ..config("5s", "mean,count") };
        let aggregation = Aggregation::new(&pivot, Some(&sensors)).unwrap();
        aggregation.check(&long_layout()).unwrap();
        let out = aggregation.apply(batch, &long_layout()).unwrap();
        let names: Vec<String> = out.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(
            names,
            [
                "Device",
                "TS",
                "a_mean",
                "a_count",
                "b_mean",
                "b_count",
                "silent_mean",
                "silent_count"
            ]
        );
        assert_eq!(starts(&out), [0, 5]);
        assert_eq!(floats(&out, "a_mean"), [Some(1.0), Some(3.0)]);
        assert_eq!(floats(&out, "b_mean"), [Some(3.0), None]);
        assert_eq!(ints(&out, "b_count"), [2, 0]);
        assert_eq!(floats(&out, "silent_mean"), [None, None], "a silent sensor keeps its column");
    }

    #[test]
    fn settings_are_checked_before_any_work() {
        let bad = |c: AggregateConfig, sensors: Option<&[String]>| {
            Aggregation::new(&c, sensors).unwrap_err().to_string()
        };
        assert!(bad(AggregateConfig::default(), None).contains("every"));
        for every in ["0s", "-5s", "5", "3i", "five", ""] {
            assert!(bad(config(every, "mean"), None).contains("every"), "{every}");
        }
        assert!(
            bad(AggregateConfig { stats: vec![], ..config("5s", "mean") }, None).contains("stats")
        );
        let pivot = AggregateConfig { pivot: true, ..config("5s", "mean") };
        assert!(bad(pivot.clone(), None).contains("--sensors"));
        assert!(Stat::parse_list("mean,median").unwrap_err().to_string().contains("median"));
        assert_eq!(Stat::parse_list("mean, mean,std").unwrap(), [Stat::Mean, Stat::Std]);

        let wide = TableLayout {
            device: "device_id".into(),
            timestamp: "timestamp".into(),
            sensor: None,
            values: vec!["t".into(), "t_mean".into()],
        };
        let sensors = ["a".to_string()];
        let pivoting = Aggregation::new(&pivot, Some(&sensors)).unwrap();
        assert!(pivoting.check(&wide).unwrap_err().contains("already wide"));
        // `t_mean_mean` and ... no clash; `t` + `mean` and a sensor `t_mean` + `count` don't
        // clash either; a device column named like an output column does.
        let clash = TableLayout { device: "t_mean".into(), ..wide };
        let plain = Aggregation::new(&config("5s", "mean"), None).unwrap();
        assert!(plain.check(&clash).unwrap_err().contains("t_mean"));
    }

    /// Regression: two readings at the ends of the nanosecond range (1677 and 2262) at
    /// `--every 1m` ran for ever (polars walked 300 million empty windows per series), and
    /// `--every 1us` over 500 readings a minute apart aborted asking for 240 GB. The work now
    /// follows the readings.
    #[test]
    fn work_follows_the_readings_not_the_span_between_them() {
        let far =
            long_batch(&[(1, "a", -9_223_372_036, Some(1.0)), (1, "a", 9_223_372_036, Some(2.0))]);
        let minutes = Aggregation::new(&config("1m", "count,mean"), None).unwrap();
        let out = minutes.apply(far, &long_layout()).unwrap();
        assert_eq!(starts(&out), [-9_223_372_080, 9_223_372_020]);
        assert_eq!(ints(&out, "count"), [1, 1]);

        let rows: Vec<(i64, &str, i64, Option<f64>)> =
            (0..500).map(|i| (1, "a", i * 60, Some(i as f64))).collect();
        let micro = Aggregation::new(&config("1us", "count"), None).unwrap();
        let out = micro.apply(long_batch(&rows), &long_layout()).unwrap();
        assert_eq!(out.num_rows(), 500);
        assert_eq!(starts(&out)[499], 499 * 60);
    }

    #[test]
    fn offsets_past_a_window_and_windows_past_the_readable_years_are_refused() {
        let with_offset = |every: &str, offset: &str| {
            Aggregation::new(
                &AggregateConfig { offset: offset.into(), ..config(every, "mean") },
                None,
            )
        };
        for (every, offset) in [("1m", "1000000d"), ("1m", "-61s"), ("1h", "2h"), ("1d", "25h")] {
            let err = with_offset(every, offset).unwrap_err().to_string();
            assert!(err.contains("offset") && err.contains("longer than a window"), "{err}");
        }
        for (every, offset) in [("1m", "1m"), ("1m", "-1m"), ("1mo", "1d"), ("1d", "-23h")] {
            with_offset(every, offset).unwrap();
        }
        let err = Aggregation::new(&config("20000y", "mean"), None).unwrap_err().to_string();
        assert!(err.contains("10,000 years"), "{err}");
    }

    /// Calendar months shifted by an offset partition time: each reading in the month that
    /// starts at the offset before it, whatever reading came first.
    #[test]
    fn calendar_months_with_an_offset_are_the_shifted_month_grid() {
        let day = 86_400;
        let march_1 = 1_772_323_200; // 2026-03-01T00:00:00Z
        let shifted = AggregateConfig { offset: "1d".into(), ..config("1mo", "count") };
        let months = Aggregation::new(&shifted, None).unwrap();
        let at = |s: i64| months.window_start(s * S).unwrap() / S;
        assert_eq!(at(march_1 + day / 2), march_1 - 27 * day, "Mar 1 12:00 is in [Feb 2, Mar 2)");
        assert_eq!(at(march_1 + day), march_1 + day, "Mar 2 opens [Mar 2, Apr 2)");
        let right = AggregateConfig { closed: Closed::Right, ..config("1mo", "count") };
        let right = Aggregation::new(&right, None).unwrap();
        assert_eq!(
            right.window_start(march_1 * S).unwrap() / S,
            march_1 - 28 * day,
            "(Feb 1, Mar 1]"
        );
    }

    /// A timestamp the reader would refuse never reaches polars' calendar arithmetic (a
    /// microsecond timestamp at i64::MAX made polars panic).
    #[test]
    fn a_timestamp_outside_the_readable_years_is_an_error_not_a_panic() {
        let aggregation = Aggregation::new(&config("1mo", "count"), None).unwrap();
        for t in [i64::MAX, i64::MIN, 253_402_300_800_000_000] {
            let err = aggregation.window_start(t).unwrap_err().to_string();
            assert!(err.contains("0001 to 9999"), "{err}");
        }
    }

    /// The windows are polars' `group_by_dynamic` windows: the grid, the closed side and the
    /// offset, calendar lengths included, over readings whose span it can walk.
    mod same_as_group_by_dynamic {
        use polars::prelude::{
            ClosedWindow, DynamicGroupOptions, IntoColumn, Label, NamedFrom, Series, StartBy,
        };
        use proptest::prelude::*;

        use super::*;

        fn dynamic(aggregation: &Aggregation, times: &[i64]) -> Vec<(i64, u32)> {
            let ts = Series::new("TS".into(), times)
                .cast(&DataType::Datetime(polars::prelude::TimeUnit::Microseconds, None))
                .unwrap();
            let frame = DataFrame::new(times.len(), vec![ts.into_column()]).unwrap();
            let options = DynamicGroupOptions {
                every: aggregation.every,
                period: aggregation.every,
                offset: aggregation.offset,
                label: Label::Left,
                include_boundaries: false,
                closed_window: match aggregation.closed {
                    Closed::Left => ClosedWindow::Left,
                    Closed::Right => ClosedWindow::Right,
                },
                start_by: StartBy::WindowBound,
                ..Default::default()
            };
            let out = frame
                .lazy()
                .group_by_dynamic(col("TS"), [], options)
                .agg([polars::prelude::len().alias("n")])
                .collect()
                .unwrap();
            let starts = out.column("TS").unwrap().datetime().unwrap().physical().clone();
            let counts = out.column("n").unwrap().u32().unwrap().clone();
            starts.into_no_null_iter().zip(counts.into_no_null_iter()).collect()
        }

        fn ours(aggregation: &Aggregation, times: &[i64]) -> Vec<(i64, u32)> {
            let mut counts = std::collections::BTreeMap::new();
            for t in times {
                *counts.entry(aggregation.window_start(*t).unwrap()).or_insert(0u32) += 1;
            }
            counts.into_iter().collect()
        }

        proptest! {
            #[test]
            fn windows_match(
                every in prop::sample::select(vec!["7s", "1m", "15m", "1h", "1d", "1w", "1mo", "3mo"]),
                offset in prop::sample::select(vec!["0s", "3s", "-5s", "1m", "-1h", "1d"]),
                right in any::<bool>(),
                start in -4_000_000_000i64..4_000_000_000,
                gaps in prop::collection::vec(0i64..50_000, 1..40),
            ) {
                let config = AggregateConfig {
                    offset: offset.into(),
                    closed: if right { Closed::Right } else { Closed::Left },
                    ..config(every, "count")
                };
                let Ok(aggregation) = Aggregation::new(&config, None) else {
                    return Ok(()); // an offset longer than the window
                };
                // Calendar months with an offset: group_by_dynamic's windows drift by days
                // (see `window_start`); ours are the shifted month grid.
                prop_assume!(!(every.ends_with("mo") && offset != "0s"));
                let mut t = start * S;
                let times: Vec<i64> = gaps.iter().map(|g| { t += g * S; t }).collect();
                prop_assert_eq!(ours(&aggregation, &times), dynamic(&aggregation, &times));
            }
        }
    }
}
