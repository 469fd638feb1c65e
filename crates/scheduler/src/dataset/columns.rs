//! Column names: the configured layout and names ([`InputColumns`]), and the columns a
//! dataset resolves them to from its first file ([`Columns`]): which column is the device, the
//! timestamp, and which hold the readings (one per sensor, or a sensor and a value column).

use std::cmp::Ordering;

use arrow::datatypes::Schema;
use batchscore_io::hive_value;
use serde::{Deserialize, Serialize};

use super::{InputFile, missing};
use crate::SchedulerError;

/// How readings are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Long when the input has a sensor and a value column, else wide.
    #[default]
    Auto,
    /// `device, timestamp, <sensor columns...>`: one model per device.
    Wide,
    /// `timestamp, device, sensor, value`: one model per (device, sensor).
    Long,
}

/// The input's layout and key column names, as configured. A name left unset is looked up
/// among common spellings, the reference system's (`TS, Device, Tag, Value`) included.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputColumns {
    pub layout: Layout,
    pub device: Option<String>,
    pub timestamp: Option<String>,
    /// Long layout: the column naming each reading's sensor (integers or text).
    pub sensor: Option<String>,
    /// Long layout: the column holding each reading's value.
    pub value: Option<String>,
}

const DEVICE_NAMES: &[&str] = &["device_id", "device", "Device"];
const TIMESTAMP_NAMES: &[&str] = &["timestamp", "TS"];
const SENSOR_NAMES: &[&str] = &["sensor", "Tag"];
const VALUE_NAMES: &[&str] = &["value", "Value"];

impl InputColumns {
    /// The names a device id may go by (the configured one, else the usual spellings): what
    /// the HTTP service looks for in a JSON row.
    pub fn device_names(&self) -> Vec<&str> {
        Self::candidates(&self.device, DEVICE_NAMES)
    }

    /// The names of a long-layout row's sensor field.
    pub fn sensor_names(&self) -> Vec<&str> {
        Self::candidates(&self.sensor, SENSOR_NAMES)
    }

    /// The names of a long-layout row's value field.
    pub fn value_names(&self) -> Vec<&str> {
        Self::candidates(&self.value, VALUE_NAMES)
    }

    /// The names a column may have: the configured one, else the usual spellings.
    pub(super) fn candidates<'a>(
        configured: &'a Option<String>,
        usual: &'a [&'a str],
    ) -> Vec<&'a str> {
        match configured {
            Some(name) => vec![name.as_str()],
            None => usual.to_vec(),
        }
    }

    /// The device id of a file under a hive partition (`device_id=7/...`), and the key used.
    pub(super) fn hive_device<'a, 'p>(&'a self, path: &'p str) -> Option<(&'a str, &'p str)> {
        Self::candidates(&self.device, DEVICE_NAMES)
            .into_iter()
            .find_map(|key| hive_value(path, key).map(|v| (key, v)))
    }
}

/// The input's columns as found in its first file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Columns {
    pub device: String,
    pub timestamp: String,
    pub shape: Shape,
}

/// What the non-key columns hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Shape {
    /// One column per sensor, in the first file's order.
    Wide { sensors: Vec<String> },
    /// A sensor column and a value column; `integer_sensors` when every file's sensor column
    /// holds integers (output keeps them as integers).
    Long { sensor: String, value: String, integer_sensors: bool },
}

impl Columns {
    pub fn is_long(&self) -> bool {
        matches!(self.shape, Shape::Long { .. })
    }
}

/// Series in output order: by device, then sensor ([`sensor_order`]), device series first.
pub(crate) fn series_order(
    (device_a, sensor_a): (i64, Option<&str>),
    (device_b, sensor_b): (i64, Option<&str>),
) -> Ordering {
    device_a.cmp(&device_b).then_with(|| match (sensor_a, sensor_b) {
        (Some(x), Some(y)) => sensor_order(x, y),
        (x, y) => x.cmp(&y),
    })
}

/// Sensor names in a readable order: integers by value first, then text.
pub fn sensor_order(a: &str, b: &str) -> Ordering {
    match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// The columns of a dataset whose every file was pruned away: nothing is read, so the
/// configured (or usual) names stand.
pub(super) fn fallback_columns(config: &InputColumns, hive_key: Option<&str>) -> Columns {
    let first = |configured: &Option<String>, usual: &[&str]| {
        configured.clone().unwrap_or_else(|| usual[0].to_string())
    };
    let shape = match config.layout {
        Layout::Long => Shape::Long {
            sensor: first(&config.sensor, SENSOR_NAMES),
            value: first(&config.value, VALUE_NAMES),
            integer_sensors: false,
        },
        Layout::Wide | Layout::Auto => Shape::Wide { sensors: Vec::new() },
    };
    Columns {
        device: config
            .device
            .clone()
            .or(hive_key.map(String::from))
            .unwrap_or_else(|| DEVICE_NAMES[0].into()),
        timestamp: first(&config.timestamp, TIMESTAMP_NAMES),
        shape,
    }
}

/// Finds the key columns in the first file and decides the layout.
pub(super) fn resolve(
    config: &InputColumns,
    first: Option<&InputFile>,
    hive_key: Option<&str>,
) -> Result<Columns, SchedulerError> {
    let Some(file) = first else {
        return Ok(fallback_columns(config, hive_key));
    };
    let schema: &Schema = file.schema();
    let url = file.url();
    let find = |configured: &Option<String>, usual: &[&str]| {
        InputColumns::candidates(configured, usual)
            .into_iter()
            .find(|n| schema.field_with_name(n).is_ok())
            .map(String::from)
    };
    let first_name = |configured: &Option<String>, usual: &[&str]| {
        configured.clone().unwrap_or_else(|| usual[0].to_string())
    };
    let timestamp = find(&config.timestamp, TIMESTAMP_NAMES)
        .ok_or_else(|| missing(url.clone(), &first_name(&config.timestamp, TIMESTAMP_NAMES)))?;
    let device = match (find(&config.device, DEVICE_NAMES), hive_key) {
        (Some(name), _) => name,
        (None, Some(key)) => key.to_string(),
        (None, None) => return Err(missing(url, &first_name(&config.device, DEVICE_NAMES))),
    };
    let sensor = find(&config.sensor, SENSOR_NAMES);
    let value = find(&config.value, VALUE_NAMES);
    let long = match config.layout {
        Layout::Long => true,
        Layout::Wide => false,
        Layout::Auto => sensor.is_some() && value.is_some(),
    };
    let shape = if long {
        Shape::Long {
            sensor: sensor
                .ok_or_else(|| missing(url.clone(), &first_name(&config.sensor, SENSOR_NAMES)))?,
            value: value
                .ok_or_else(|| missing(url.clone(), &first_name(&config.value, VALUE_NAMES)))?,
            integer_sensors: false,
        }
    } else {
        let sensors: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| *n != device && *n != timestamp)
            .collect();
        if sensors.is_empty() {
            return Err(missing(url, "<any sensor column>"));
        }
        Shape::Wide { sensors }
    };
    Ok(Columns { device, timestamp, shape })
}
