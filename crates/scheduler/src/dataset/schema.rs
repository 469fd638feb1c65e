//! Schema checks: every file of a dataset must hold the resolved columns with usable types.

use arrow::datatypes::DataType;

use super::{Dataset, InputFile, Shape, column_type_error, missing};
use crate::SchedulerError;

/// Bytes of a CSV file's start decoded again when its sampled device column is not integer.
const CSV_HEAD_CHECK_BYTES: u64 = 64 * 1024;

fn is_number_type(t: &DataType) -> bool {
    t.is_numeric() && !matches!(t, DataType::Decimal32(..) | DataType::Decimal64(..))
}

fn is_sensor_key_type(t: &DataType) -> bool {
    t.is_integer()
        || matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        || matches!(t, DataType::Dictionary(_, v) if matches!(**v, DataType::Utf8 | DataType::LargeUtf8))
}

/// The first column name a schema holds twice (a Parquet file or a CSV header can).
fn duplicated_name(schema: &arrow::datatypes::Schema) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    schema.fields().iter().map(|f| f.name().as_str()).find(|name| !seen.insert(*name))
}

impl Dataset {
    pub(super) fn check_schemas(&mut self) -> Result<(), SchedulerError> {
        let mut integer_sensors = true;
        let c = &self.columns;
        let first_url = self.files.first().map(InputFile::url).unwrap_or_default();
        for (i, file) in self.files.iter().enumerate() {
            let schema = file.schema();
            let url = file.url();
            let inconsistent = |reason: String| SchedulerError::Schema { url: url.clone(), reason };
            if let Some(name) = duplicated_name(schema) {
                return Err(inconsistent(format!("column `{name}` appears more than once")));
            }
            // The first file decides the sensor columns of wide input; a later file with a
            // column the first lacks is as wrong as the other way round (a missing column).
            if let Shape::Wide { sensors } = &c.shape
                && let Some(extra) = schema
                    .fields()
                    .iter()
                    .map(|f| f.name())
                    .find(|n| **n != c.device && **n != c.timestamp && !sensors.contains(n))
            {
                return Err(inconsistent(format!(
                    "column `{extra}` is not in {first_url}, whose columns decide the sensors: \
                     every file of wide input must have the same sensor columns"
                )));
            }
            // CSV types are sampled from the head: only a clear contradiction is an error
            // here; anything else that does not parse fails the read, naming file and line.
            let (csv, sampled_rows) = match file {
                InputFile::Parquet(_) => (false, true),
                InputFile::Csv(c) => (true, c.estimated_rows() > 0),
            };
            let field = |name: &str| schema.field_with_name(name).map(|f| f.data_type());
            let ts = field(&c.timestamp).map_err(|_| missing(url.clone(), &c.timestamp))?;
            let ts_ok = match ts {
                DataType::Timestamp(..) => true,
                // ISO dates without a time sample as dates; numbers are not times.
                _ if csv => !(ts.is_numeric() && sampled_rows),
                _ => false,
            };
            if !ts_ok {
                return Err(column_type_error(url, &c.timestamp, ts, "a timestamp"));
            }
            match field(&c.device) {
                Ok(t) if csv && sampled_rows && !t.is_integer() => {
                    // Decoding the sampled lines as the read would names the line and value.
                    if let InputFile::Csv(source) = file {
                        let head = 0..source.size().min(CSV_HEAD_CHECK_BYTES);
                        source
                            .read(head, &[(c.device.as_str(), DataType::Int64)])
                            .map_err(SchedulerError::reading)?;
                    }
                    return Err(column_type_error(url, &c.device, t, "integer device ids"));
                }
                Ok(t) if !csv && !t.is_integer() => {
                    return Err(column_type_error(url, &c.device, t, "an integer"));
                }
                Ok(_) => {}
                Err(_) if self.hive_device[i].is_some() => {}
                Err(_) => return Err(missing(url, &c.device)),
            }
            let numbers: Vec<&String> = match &c.shape {
                Shape::Wide { sensors } => sensors.iter().collect(),
                Shape::Long { sensor, value, .. } => {
                    let t = field(sensor).map_err(|_| missing(url.clone(), sensor))?;
                    if !csv && !is_sensor_key_type(t) {
                        return Err(column_type_error(url, sensor, t, "integers or text"));
                    }
                    integer_sensors &= t.is_integer();
                    vec![value]
                }
            };
            for name in numbers {
                let t = field(name).map_err(|_| missing(url.clone(), name))?;
                if !csv && !is_number_type(t) {
                    return Err(column_type_error(url, name, t, "a number"));
                }
            }
        }
        if let Shape::Long { integer_sensors: flag, .. } = &mut self.columns.shape {
            *flag = integer_sensors && !self.files.is_empty();
        }
        Ok(())
    }
}
