//! What a run writes for its scored rows: the scored schema (keys, inputs, scores, provenance),
//! or the reference system's `TS, Device, Tag, Val, Prediction`, as Parquet or CSV parts.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::SchedulerError;
use crate::dataset::{Columns, Shape, UnitTable};

/// Which columns a run writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputProfile {
    /// Key columns, timestamp, inputs, `score`, `decision`, `is_anomaly`, `model_version`,
    /// `run_id`.
    #[default]
    Scored,
    /// The reference system's columns: `TS, Device, Tag, Val, Prediction` (1 = anomaly).
    /// Long layout only.
    Reference,
}

/// How parts are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Parquet,
    /// A header row, then one line per row; timestamps as RFC 3339 (scored) or as the
    /// reference writes them, `2018-08-28 23:00:05.000` (reference).
    Csv,
}

impl OutputFormat {
    pub(crate) fn extension(self) -> &'static str {
        match self {
            OutputFormat::Parquet => "parquet",
            OutputFormat::Csv => "csv",
        }
    }
}

/// The profile and format of a run's parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct OutputSpec {
    pub profile: OutputProfile,
    pub format: OutputFormat,
}

/// A unit's scored rows: which rows of the unit table, their scores, and the model version of
/// each run of rows.
#[derive(Debug, Default)]
pub(crate) struct ScoredRows {
    pub rows: Vec<usize>,
    pub score: Vec<f64>,
    pub decision: Vec<f64>,
    pub is_anomaly: Vec<bool>,
    /// `(model version, rows)` in row order.
    pub versions: Vec<(String, usize)>,
}

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

impl OutputSpec {
    /// Checks the spec against the input's layout before any work starts.
    pub(crate) fn check(&self, columns: &Columns) -> Result<(), SchedulerError> {
        if self.profile == OutputProfile::Reference && !columns.is_long() {
            return Err(SchedulerError::InvalidSetting {
                setting: "profile",
                reason: "the reference profile writes one row per (device, sensor) reading: it \
                         needs input in the long layout (timestamp, device, sensor, value)"
                    .into(),
            });
        }
        Ok(())
    }

    /// The relative path of unit `unit`'s part.
    pub(crate) fn part_path(&self, unit: usize) -> String {
        format!("part-{unit:05}.{}", self.format.extension())
    }

    /// The schema of every part of a run over `columns`.
    pub(crate) fn schema(&self, columns: &Columns) -> SchemaRef {
        let sensor_type = |integer: bool| if integer { DataType::Int64 } else { DataType::Utf8 };
        let fields = match (&self.profile, &columns.shape) {
            (OutputProfile::Reference, Shape::Long { integer_sensors, .. }) => {
                let ts = match self.format {
                    OutputFormat::Parquet => utc_micros(),
                    OutputFormat::Csv => DataType::Utf8,
                };
                vec![
                    Field::new("TS", ts, false),
                    Field::new("Device", DataType::Int64, false),
                    Field::new("Tag", sensor_type(*integer_sensors), false),
                    Field::new("Val", DataType::Float64, true),
                    Field::new("Prediction", DataType::Int64, false),
                ]
            }
            (_, shape) => {
                let mut fields = vec![Field::new(&columns.device, DataType::Int64, false)];
                let values: Vec<&String> = match shape {
                    Shape::Wide { sensors } => {
                        fields.push(Field::new(&columns.timestamp, utc_micros(), false));
                        sensors.iter().collect()
                    }
                    Shape::Long { sensor, value, integer_sensors } => {
                        fields.push(Field::new(sensor, sensor_type(*integer_sensors), false));
                        fields.push(Field::new(&columns.timestamp, utc_micros(), false));
                        vec![value]
                    }
                };
                fields.extend(values.iter().map(|s| Field::new(*s, DataType::Float64, true)));
                fields.extend([
                    Field::new("score", DataType::Float64, false),
                    Field::new("decision", DataType::Float64, false),
                    Field::new("is_anomaly", DataType::Boolean, false),
                    Field::new("model_version", DataType::Utf8, false),
                    Field::new("run_id", DataType::Utf8, false),
                ]);
                fields
            }
        };
        Arc::new(Schema::new(fields))
    }

    /// Assembles the part's table from the unit's rows and their scores.
    pub(crate) fn batch(
        &self,
        columns: &Columns,
        table: &UnitTable,
        scored: ScoredRows,
        run_id: &str,
    ) -> Result<RecordBatch, SchedulerError> {
        let rows = &scored.rows;
        let device: ArrayRef =
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|&r| table.device[r])));
        let timestamp: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                rows.iter().map(|&r| table.timestamp_us[r]),
            )
            .with_timezone("UTC"),
        );
        let values: Vec<ArrayRef> = table
            .values
            .iter()
            .map(|column| {
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|&r| column[r])))
                    as ArrayRef
            })
            .collect();
        let sensor = match &columns.shape {
            Shape::Wide { .. } => None,
            Shape::Long { integer_sensors, .. } => {
                Some(sensor_column(table, rows, *integer_sensors)?)
            }
        };
        let arrays: Vec<ArrayRef> = match (self.profile, sensor) {
            (OutputProfile::Reference, Some(sensor)) => {
                let ts = match self.format {
                    OutputFormat::Parquet => timestamp,
                    OutputFormat::Csv => {
                        reference_times(rows.iter().map(|&r| table.timestamp_us[r]))
                    }
                };
                let prediction = scored.is_anomaly.iter().map(|a| i64::from(*a));
                let mut arrays = vec![ts, device, sensor];
                arrays.extend(values);
                arrays.push(Arc::new(Int64Array::from_iter_values(prediction)));
                arrays
            }
            (_, sensor) => {
                let mut arrays = vec![device];
                arrays.extend(sensor);
                arrays.push(timestamp);
                arrays.extend(values);
                let mut version_column = StringBuilder::with_capacity(rows.len(), rows.len() * 16);
                for (version, n) in &scored.versions {
                    for _ in 0..*n {
                        version_column.append_value(version);
                    }
                }
                arrays.extend([
                    Arc::new(Float64Array::from(scored.score)) as ArrayRef,
                    Arc::new(Float64Array::from(scored.decision)),
                    Arc::new(BooleanArray::from(scored.is_anomaly)),
                    Arc::new(version_column.finish()),
                    Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                        run_id,
                        rows.len(),
                    ))),
                ]);
                arrays
            }
        };
        RecordBatch::try_new(self.schema(columns), arrays)
            .map_err(|source| SchedulerError::Arrow { what: "scored", source })
    }
}

/// Each row's sensor name, as an integer when the input's sensor column holds integers.
fn sensor_column(
    table: &UnitTable,
    rows: &[usize],
    integer: bool,
) -> Result<ArrayRef, SchedulerError> {
    let name = |r: usize| table.sensor_names[table.sensor[r] as usize].as_str();
    if !integer {
        return Ok(Arc::new(StringArray::from_iter_values(rows.iter().map(|&r| name(r)))));
    }
    let parsed: Vec<i64> = rows
        .iter()
        .map(|&r| {
            name(r).parse::<i64>().map_err(|_| SchedulerError::Arrow {
                what: "sensor",
                source: arrow::error::ArrowError::CastError(format!(
                    "sensor `{}` is not an integer, although the input's first rows were",
                    name(r)
                )),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Arc::new(Int64Array::from(parsed)))
}

/// Times as the reference system writes them: `2018-08-28 23:00:05.000` (UTC), with
/// microseconds only when a time has them.
///
/// Written digit by digit: chrono's `format` parses its format string again for every value,
/// which was a fifth of a reference-profile run's CPU (`perf record`, docs/benchmarks.md). The
/// calendar fields still come from chrono.
fn reference_times(micros: impl Iterator<Item = i64>) -> ArrayRef {
    use chrono::{Datelike, Timelike};
    let mut out = StringBuilder::new();
    let mut text = String::with_capacity(32);
    for us in micros {
        text.clear();
        match chrono::DateTime::from_timestamp_micros(us) {
            // Years outside 0..=9999 do not fit the fixed-width form; chrono writes those.
            Some(t) if (0..=9999).contains(&t.year()) => {
                push_digits(&mut text, t.year() as u32, 4);
                text.push('-');
                push_digits(&mut text, t.month(), 2);
                text.push('-');
                push_digits(&mut text, t.day(), 2);
                text.push(' ');
                push_digits(&mut text, t.hour(), 2);
                text.push(':');
                push_digits(&mut text, t.minute(), 2);
                text.push(':');
                push_digits(&mut text, t.second(), 2);
                text.push('.');
                let micro = us.rem_euclid(1_000_000) as u32;
                if micro.is_multiple_of(1000) {
                    push_digits(&mut text, micro / 1000, 3);
                } else {
                    push_digits(&mut text, micro, 6);
                }
            }
            Some(t) if us % 1000 == 0 => {
                text.push_str(&t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            }
            Some(t) => text.push_str(&t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()),
            None => text.push_str(&us.to_string()),
        }
        out.append_value(&text);
    }
    Arc::new(out.finish())
}

/// Appends `value` as exactly `width` decimal digits (zero-padded; `value` has at most `width`).
fn push_digits(text: &mut String, value: u32, width: u32) {
    let mut divisor = 10u32.pow(width - 1);
    while divisor > 0 {
        text.push(char::from(b'0' + (value / divisor % 10) as u8));
        divisor /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// The digit-by-digit form is chrono's, for every time chrono can represent (years
        /// -262143..=262142, leap days, before 1970, microseconds or not).
        #[test]
        fn reference_times_equal_chronos_format(
            us in proptest::prop_oneof![
                -62_135_596_800_000_000i64..253_402_300_800_000_000,
                proptest::num::i64::ANY,
                (-62_135_596_800i64..253_402_300_800).prop_map(|s| s * 1_000_000),
            ]
        ) {
            let times = reference_times(std::iter::once(us));
            let times = times.as_any().downcast_ref::<StringArray>().unwrap();
            let expected = match chrono::DateTime::from_timestamp_micros(us) {
                Some(t) if us % 1000 == 0 => t.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                Some(t) => t.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
                None => us.to_string(),
            };
            proptest::prop_assert_eq!(times.value(0), expected.as_str());
        }
    }

    #[test]
    fn reference_times_match_the_reference_format() {
        let times = reference_times([1_535_497_205_000_000, 1_535_497_205_000_250].into_iter());
        let times = times.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(times.value(0), "2018-08-28 23:00:05.000");
        assert_eq!(times.value(1), "2018-08-28 23:00:05.000250");
    }
}
