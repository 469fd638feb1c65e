//! Tables between arrow-rs and polars, as Arrow IPC bytes.
//!
//! polars 0.55 and arrow-rs 59 share no types, no maintained crate bridges these two versions,
//! and the C Data Interface would need `unsafe`, which the workspace forbids. The IPC file
//! format is the interface both sides implement in full; a batch crosses as one in-memory
//! buffer, without compression (docs/benchmarks.md measures what a crossing costs).

use std::io::Cursor;

use arrow::array::RecordBatch;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use polars::prelude::{CompatLevel, DataFrame, IpcReader, IpcWriter, SerReader, SerWriter};

use crate::FeaturesError;

/// An arrow-rs batch as a polars frame.
pub fn to_polars(batch: &RecordBatch) -> Result<DataFrame, FeaturesError> {
    let arrow = |source| FeaturesError::Arrow { what: "input", source };
    let mut bytes = Vec::new();
    let mut writer = FileWriter::try_new(&mut bytes, &batch.schema()).map_err(arrow)?;
    writer.write(batch).map_err(arrow)?;
    writer.finish().map_err(arrow)?;
    drop(writer);
    IpcReader::new(Cursor::new(bytes)).finish().map_err(FeaturesError::polars("read Arrow IPC"))
}

/// A polars frame as one arrow-rs batch (chunks concatenated).
pub fn to_arrow(frame: &mut DataFrame) -> Result<RecordBatch, FeaturesError> {
    let arrow = |source| FeaturesError::Arrow { what: "result", source };
    let mut bytes = Vec::new();
    // The oldest level writes plain (large) strings rather than views: what every reader of
    // the written Parquet knows.
    IpcWriter::new(&mut bytes)
        .with_compat_level(CompatLevel::oldest())
        .finish(frame)
        .map_err(FeaturesError::polars("write Arrow IPC"))?;
    let reader = FileReader::try_new(Cursor::new(bytes), None).map_err(arrow)?;
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(arrow)?;
    arrow::compute::concat_batches(&schema, &batches).map_err(arrow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    #[test]
    fn a_batch_survives_the_round_trip_with_nulls_and_timestamps() {
        let schema = Schema::new(vec![
            Field::new("device", DataType::Int64, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), false),
            Field::new("sensor", DataType::Utf8, false),
            Field::new("value", DataType::Float64, true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(TimestampMicrosecondArray::from(vec![-5, 1_700_000_000_000_001])),
                Arc::new(StringArray::from(vec!["a", "é"])),
                Arc::new(Float64Array::from(vec![Some(0.1), None])),
            ],
        )
        .unwrap();
        let mut frame = to_polars(&batch).unwrap();
        assert_eq!(frame.height(), 2);
        let back = to_arrow(&mut frame).unwrap();
        assert_eq!(back.num_rows(), 2);
        assert_eq!(back.column(1).data_type(), batch.column(1).data_type());
        let text = arrow::compute::cast(back.column(2), &DataType::Utf8).unwrap();
        assert_eq!(text.as_ref(), batch.column(2).as_ref());
        assert_eq!(back.column(0).as_ref(), batch.column(0).as_ref());
        assert_eq!(back.column(3).as_ref(), batch.column(3).as_ref());
        assert!(back.column(3).is_null(1));
    }
}
