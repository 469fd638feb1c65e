//! Interval aggregation: tumbling windows per device (and sensor) with polars'
//! `group_by_dynamic`, and the long-to-wide pivot into one row per device and window.
//!
//! Windows are aligned to the epoch (plus `offset`), not to the first reading, so the same
//! instant falls in the same window in every unit, shard and run. A window is labelled by its
//! start. Missing readings (null, or NaN in the input) are skipped by every statistic, and
//! `count` counts the readings present. With `dedupe`, a reading that repeats the device,
//! sensor and timestamp of an earlier one is dropped (retransmitted telemetry), keeping the
//! first in input order.

use batchscore_scheduler::{TableLayout, TransformError, UnitTransform};
use polars::prelude::{
    ClosedWindow, DataFrame, DataType, Duration, DynamicGroupOptions, Expr, IntoLazy, Label,
    SortMultipleOptions, StartBy, UniqueKeepStrategy, col, lit,
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

/// A checked aggregation, ready to run on units.
#[derive(Debug, Clone)]
pub struct Aggregation {
    every: Duration,
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
        let offset = duration("offset", &config.offset)?;
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

    /// Aggregates one unit's rows (sorted by device, sensor and time).
    pub fn frame(
        &self,
        frame: DataFrame,
        layout: &TableLayout,
    ) -> Result<DataFrame, FeaturesError> {
        let (device, ts) = (layout.device.as_str(), layout.timestamp.as_str());
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
        let options = DynamicGroupOptions {
            every: self.every,
            period: self.every,
            offset: self.offset,
            label: Label::Left,
            include_boundaries: false,
            closed_window: match self.closed {
                Closed::Left => ClosedWindow::Left,
                Closed::Right => ClosedWindow::Right,
            },
            start_by: StartBy::WindowBound,
            ..Default::default()
        };
        // device, [sensor,] timestamp: the order of scored parts' columns.
        let mut order: Vec<Expr> = group_keys.clone();
        order.push(col(ts));
        let mut columns = order.clone();
        columns.extend(self.value_names(layout).into_iter().map(|n| col(n.as_str())));
        frame
            .group_by_dynamic(col(ts), group_keys, options)
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
}
