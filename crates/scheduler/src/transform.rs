//! Per-unit transforms of readings, such as interval aggregation, supplied by a crate this one
//! does not depend on (the table engine that does the work is heavy to build, and the scoring
//! path must not pay for it).
//!
//! A transform sees one unit's rows as one Arrow batch whose columns a [`TableLayout`] names,
//! sorted by device, sensor and time, and returns the rows to write. Units of a transformed job
//! hold whole devices (see [`crate::Plan`]), so a transform that groups by device sees every
//! row of each device it is given.

use std::fmt::Debug;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit, TimestampMicrosecondType};
use serde::Serialize;

use crate::SchedulerError;
use crate::dataset::{Columns, Shape, UnitTable};

/// Which columns of a unit's batch hold what. Names are the input's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableLayout {
    /// `Int64`, never null.
    pub device: String,
    /// `Timestamp(Microsecond, None)` holding UTC instants, never null.
    pub timestamp: String,
    /// Long layout: the sensor column (`Utf8`, never null).
    pub sensor: Option<String>,
    /// `Float64` readings, null where missing: one per sensor (wide) or the value column (long).
    pub values: Vec<String>,
}

impl TableLayout {
    pub(crate) fn of(columns: &Columns) -> Self {
        let (sensor, values) = match &columns.shape {
            Shape::Wide { sensors } => (None, sensors.clone()),
            Shape::Long { sensor, value, .. } => (Some(sensor.clone()), vec![value.clone()]),
        };
        Self {
            device: columns.device.clone(),
            timestamp: columns.timestamp.clone(),
            sensor,
            values,
        }
    }
}

/// The error a transform returns; the job adds the unit it failed on.
pub type TransformError = Box<dyn std::error::Error + Send + Sync>;

/// A per-unit transform of readings into the rows a job writes.
pub trait UnitTransform: Send + Sync + Debug {
    /// The settings that decide the output: they enter the run's fingerprint (so a changed
    /// setting cannot reuse a run id) and its manifest.
    fn describe(&self) -> serde_json::Value;

    /// Refuses input this transform cannot handle, before any work starts.
    fn check(&self, layout: &TableLayout) -> Result<(), String>;

    /// The layout of the rows `apply` returns for input of `layout` (after `check`): what a
    /// run scores when the transform runs before scoring.
    fn output_layout(&self, layout: &TableLayout) -> TableLayout;

    /// Transforms one unit's rows (sorted by device, sensor and time). Timestamps in the
    /// result are UTC instants; the job marks them so.
    fn apply(
        &self,
        batch: RecordBatch,
        layout: &TableLayout,
    ) -> Result<RecordBatch, TransformError>;
}

/// Runs `transform.apply` on a thread of its own and waits for it.
///
/// A transform may wait on a rayon pool of its own (polars does). A worker of the job's pool
/// that waits inside another pool's `install` keeps busy meanwhile: rayon runs further units of
/// the job on it, nested on its stack, each waiting in turn, so every unit of a job could be in
/// memory at once (10 M readings took 300 MB per worker instead of a unit's worth). A plain
/// thread's `join` blocks without taking other work.
pub(crate) fn apply_apart(
    transform: &dyn UnitTransform,
    batch: RecordBatch,
    layout: &TableLayout,
) -> Result<RecordBatch, TransformError> {
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("batchscore-transform".into())
            .spawn_scoped(scope, || transform.apply(batch, layout))?;
        worker.join().unwrap_or_else(|_| Err("the transform panicked".into()))
    })
}

/// The columns a run scores after `transform`: wide when its output has no sensor column;
/// long only with exactly one value column (what a (device, sensor) model scores).
pub(crate) fn scored_columns(
    input: &Columns,
    transform: &dyn UnitTransform,
) -> Result<Columns, SchedulerError> {
    let layout = TableLayout::of(input);
    transform
        .check(&layout)
        .map_err(|reason| SchedulerError::InvalidSetting { setting: "aggregate", reason })?;
    let out = transform.output_layout(&layout);
    let shape = match (&out.sensor, &input.shape) {
        (None, _) => Shape::Wide { sensors: out.values.clone() },
        (Some(sensor), Shape::Long { integer_sensors, .. }) if out.values.len() == 1 => {
            Shape::Long {
                sensor: sensor.clone(),
                value: out.values[0].clone(),
                integer_sensors: *integer_sensors,
            }
        }
        (Some(_), _) => {
            return Err(SchedulerError::InvalidSetting {
                setting: "aggregate",
                reason: format!(
                    "scoring aggregated long readings needs one value per (device, sensor) and \
                     window, or a pivot to one row per device: this aggregation gives {} \
                     ({}); set one statistic (`stats = [\"mean\"]`) or `pivot = true`",
                    out.values.len(),
                    out.values.join(", ")
                ),
            });
        }
    };
    Ok(Columns { device: out.device, timestamp: out.timestamp, shape })
}

/// A shared transform, as specs carry it.
pub type Transform = Arc<dyn UnitTransform>;

/// One unit's rows as the batch a transform takes.
pub(crate) fn unit_batch(
    table: &UnitTable,
    layout: &TableLayout,
) -> Result<RecordBatch, SchedulerError> {
    let arrow = |source| SchedulerError::Arrow { what: "unit", source };
    let mut fields = vec![
        Field::new(&layout.device, DataType::Int64, false),
        Field::new(&layout.timestamp, DataType::Timestamp(TimeUnit::Microsecond, None), false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(table.device.clone())),
        Arc::new(TimestampMicrosecondArray::from(table.timestamp_us.clone())),
    ];
    if let Some(sensor) = &layout.sensor {
        fields.push(Field::new(sensor, DataType::Utf8, false));
        let names = table
            .sensor
            .iter()
            .map(|&s| table.sensor_names.get(s as usize).map(String::as_str).unwrap_or_default());
        columns.push(Arc::new(StringArray::from_iter_values(names)));
    }
    for (name, values) in layout.values.iter().zip(&table.values) {
        fields.push(Field::new(name, DataType::Float64, true));
        // Missing readings are NaN in the unit table and null to the transform, whose
        // statistics skip nulls.
        let column: Float64Array = values.iter().map(|v| (!v.is_nan()).then_some(*v)).collect();
        columns.push(Arc::new(column));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(arrow)
}

/// A transform's result as written: timestamps marked UTC (as every part's are), integer
/// sensor names back to integers.
pub(crate) fn finish_batch(
    batch: RecordBatch,
    layout: &TableLayout,
    integer_sensors: bool,
) -> Result<RecordBatch, SchedulerError> {
    let arrow = |source| SchedulerError::Arrow { what: "transformed unit", source };
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if let DataType::Timestamp(..) = field.data_type() {
            // Marking instants UTC is a change of metadata, not a conversion.
            let micros =
                arrow::compute::cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))
                    .map_err(arrow)?;
            let utc =
                micros.as_primitive::<TimestampMicrosecondType>().clone().with_timezone("UTC");
            fields.push(field.as_ref().clone().with_data_type(utc.data_type().clone()));
            columns.push(Arc::new(utc) as ArrayRef);
            continue;
        }
        let to = match field.data_type() {
            DataType::LargeUtf8 | DataType::Utf8View
                if integer_sensors && Some(field.name()) == layout.sensor.as_ref() =>
            {
                Some(DataType::Int64)
            }
            DataType::Utf8 if integer_sensors && Some(field.name()) == layout.sensor.as_ref() => {
                Some(DataType::Int64)
            }
            DataType::LargeUtf8 | DataType::Utf8View => Some(DataType::Utf8),
            _ => None,
        };
        match to {
            Some(to) => {
                columns.push(arrow::compute::cast(column, &to).map_err(arrow)?);
                fields.push(field.as_ref().clone().with_data_type(to));
            }
            None => {
                columns.push(column.clone());
                fields.push(field.as_ref().clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(arrow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Series;
    use arrow::datatypes::Int64Type;

    #[test]
    fn a_unit_crosses_with_nulls_for_missing_readings_and_comes_back_marked_utc() {
        let table = UnitTable {
            device: vec![1, 1],
            timestamp_us: vec![5, 6],
            sensor: vec![0, 1],
            sensor_names: vec!["10".into(), "2".into()],
            values: vec![vec![1.5, f64::NAN]],
            runs: vec![Series { device: 1, sensor: Some(0), rows: 0..2 }],
        };
        let layout = TableLayout {
            device: "Device".into(),
            timestamp: "TS".into(),
            sensor: Some("Tag".into()),
            values: vec!["Value".into()],
        };
        let batch = unit_batch(&table, &layout).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let values = batch.column_by_name("Value").unwrap();
        assert_eq!((values.null_count(), values.is_null(1)), (1, true));
        let back = finish_batch(batch, &layout, true).unwrap();
        let tags = back.column_by_name("Tag").unwrap().as_primitive::<Int64Type>();
        assert_eq!(tags.values().to_vec(), vec![10, 2]);
        assert_eq!(
            back.schema().field_with_name("TS").unwrap().data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
    }
}
