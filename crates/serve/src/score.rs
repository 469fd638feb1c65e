//! Real-time scoring in Azure Stream Analytics' Azure ML function contract: the request is
//! `{"data": [row, ...]}` (rows as JSON objects, wide or long), the answer a JSON array with one
//! entry per row, in order. A row that cannot be scored (no model for its device, a missing
//! feature) gets an error entry, never a failed request: Stream Analytics fails its whole job on
//! any status but 200 and 503.
//!
//! Each row is parsed on its own, so a row that is not valid for us (a number beyond `f64`, a key
//! given twice) is that row's error, not the request's.
//!
//! Rows are grouped by model and each group is scored in one call of the same detector code
//! the batch job runs, on the same `f64` values (JSON numbers parse exactly: serde_json's
//! `float_roundtrip`), so scores are bit-identical to `batchscore run`.

use std::collections::HashMap;
use std::sync::Arc;

use batchscore_detectors::Detector;
use batchscore_registry::{Model, ModelKey};
use batchscore_scheduler::{InputColumns, Layout};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::ApiError;
use crate::models::{ModelError, Models};
use crate::rows::row_fields;
use serde_json::value::RawValue;

/// Requests with more rows are scored on the blocking pool rather than on an async worker.
const INLINE_ROWS: usize = 256;

/// One row's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RowResult {
    Scored { score: f64, decision: f64, is_anomaly: bool, model_version: String },
    Failed { error: String, code: &'static str },
}

impl RowResult {
    pub(crate) fn failed(code: &'static str, error: impl Into<String>) -> Self {
        RowResult::Failed { error: error.into(), code }
    }
}

/// How rows name their device, sensor and value: the batch job's column settings.
#[derive(Debug, Clone)]
pub struct RowShape {
    layout: Layout,
    device: Vec<String>,
    sensor: Vec<String>,
    value: Vec<String>,
}

impl RowShape {
    pub fn new(columns: &InputColumns) -> Self {
        let owned = |names: Vec<&str>| names.into_iter().map(String::from).collect();
        RowShape {
            layout: columns.layout,
            device: owned(columns.device_names()),
            sensor: owned(columns.sensor_names()),
            value: owned(columns.value_names()),
        }
    }
}

fn field<'a>(row: &'a Map<String, Value>, names: &[String]) -> Option<(&'a str, &'a Value)> {
    names.iter().find_map(|n| row.get_key_value(n.as_str())).map(|(k, v)| (k.as_str(), v))
}

/// A reading as the batch job reads it: a number, or null (missing) as NaN. Numeric strings
/// are accepted (Stream Analytics' JavaScript UDFs send strings).
fn number(name: &str, value: &Value) -> Result<f64, RowResult> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| RowResult::failed("bad_value", format!("`{name}` is out of range"))),
        Value::Null => Ok(f64::NAN),
        Value::String(s) => s.trim().parse::<f64>().map_err(|_| {
            RowResult::failed("bad_value", format!("`{name}` is not a number: {s:?}"))
        }),
        _ => Err(RowResult::failed("bad_value", format!("`{name}` is not a number"))),
    }
}

fn device_id(name: &str, value: &Value) -> Result<i64, RowResult> {
    let parsed = match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| {
        RowResult::failed("bad_device", format!("`{name}` is not an integer device id"))
    })
}

/// What a row is scored with: its model key and, for long rows, its one value (a wide row's
/// values are read from the row when its model says which features it needs).
struct Parsed {
    key: ModelKey,
    long_value: Option<f64>,
}

fn parse_row(value: &Value, shape: &RowShape) -> Result<Parsed, RowResult> {
    let Value::Object(row) = value else {
        return Err(RowResult::failed("bad_row", "a row must be a JSON object"));
    };
    let (name, device) = field(row, &shape.device).ok_or_else(|| {
        RowResult::failed(
            "bad_row",
            format!("no device field (one of {})", shape.device.join(", ")),
        )
    })?;
    let device = device_id(name, device)?;
    let sensor = field(row, &shape.sensor);
    let value = field(row, &shape.value);
    let long = match shape.layout {
        Layout::Wide => false,
        Layout::Long => true,
        Layout::Auto => sensor.is_some() && value.is_some(),
    };
    if !long {
        return Ok(Parsed { key: ModelKey::device(device), long_value: None });
    }
    let (Some((_, sensor)), Some((value_name, value))) = (sensor, value) else {
        return Err(RowResult::failed(
            "bad_row",
            format!(
                "a long-layout row needs a sensor field ({}) and a value field ({})",
                shape.sensor.join(", "),
                shape.value.join(", ")
            ),
        ));
    };
    let sensor = match sensor {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        _ => return Err(RowResult::failed("bad_row", "the sensor must be a name or an integer")),
    };
    let key = ModelKey::series(device, &sensor)
        .map_err(|e| RowResult::failed("bad_row", e.to_string()))?;
    Ok(Parsed { key, long_value: Some(number(value_name, value)?) })
}

/// Scores the rows of one model: gathers each feature's column, scores them in one call.
fn score_group(
    model: &Model,
    rows: &[Box<RawValue>],
    members: &[(usize, Option<f64>)],
    out: &mut [Option<RowResult>],
) {
    let features = &model.meta.features;
    let mut columns: Vec<Vec<f64>> = vec![Vec::with_capacity(members.len()); features.len()];
    let mut scored_rows = Vec::with_capacity(members.len());
    'rows: for (i, long_value) in members {
        match long_value {
            // A long-layout series is scored on its value alone, by a model of one feature.
            Some(v) if features.len() == 1 => columns[0].push(*v),
            Some(_) => {
                out[*i] = Some(RowResult::failed(
                    "feature_mismatch",
                    format!(
                        "model {} expects {} features; a long-layout row has one value",
                        model.version(),
                        features.len()
                    ),
                ));
                continue;
            }
            None => {
                // Parsed again, one row at a time: no row is held parsed (crate::rows).
                let row = match row_fields(&rows[*i]) {
                    Ok(row) => row,
                    Err(e) => {
                        out[*i] = Some(e);
                        continue;
                    }
                };
                let mut values = Vec::with_capacity(features.len());
                for feature in features {
                    let value = match row.get(feature) {
                        Some(value) => number(feature, value),
                        // Named alone: listing every feature made an answer 11 times its request.
                        None => Err(RowResult::failed(
                            "feature_missing",
                            format!(
                                "the row has no `{feature}` (model {} reads {} features)",
                                model.version(),
                                features.len()
                            ),
                        )),
                    };
                    match value {
                        Ok(v) => values.push(v),
                        Err(e) => {
                            out[*i] = Some(e);
                            continue 'rows;
                        }
                    }
                }
                for (column, v) in columns.iter_mut().zip(values) {
                    column.push(v);
                }
            }
        }
        scored_rows.push(*i);
    }
    if scored_rows.is_empty() {
        return;
    }
    let refs: Vec<&[f64]> = columns.iter().map(Vec::as_slice).collect();
    match model.detector.score(&refs) {
        Ok(scored) => {
            for (k, i) in scored_rows.into_iter().enumerate() {
                out[i] = Some(RowResult::Scored {
                    score: scored.score[k],
                    decision: scored.decision[k],
                    is_anomaly: scored.is_anomaly[k],
                    model_version: model.version().to_string(),
                });
            }
        }
        Err(e) => {
            for i in scored_rows {
                out[i] = Some(RowResult::failed("scoring", e.to_string()));
            }
        }
    }
}

/// Each row's model group and long-layout value, or its error; and the distinct model keys,
/// by group. Rows are parsed once, here.
type Plan = (Vec<Result<(usize, Option<f64>), RowResult>>, Vec<ModelKey>);

fn plan(rows: &[Box<RawValue>], shape: &RowShape) -> Plan {
    let mut groups: HashMap<ModelKey, usize> = HashMap::new();
    let mut keys: Vec<ModelKey> = Vec::new();
    let planned = rows
        .iter()
        .map(|row| {
            let row = row_fields(row)?;
            let Parsed { key, long_value } = parse_row(&row, shape)?;
            let group = *groups.entry(key).or_insert_with_key(|key| {
                keys.push(key.clone());
                keys.len() - 1
            });
            Ok((group, long_value))
        })
        .collect();
    (planned, keys)
}

fn compute(
    rows: &[Box<RawValue>],
    planned: Vec<Result<(usize, Option<f64>), RowResult>>,
    models: &[Result<Arc<Model>, ModelError>],
) -> Vec<RowResult> {
    let mut out: Vec<Option<RowResult>> = vec![None; rows.len()];
    let mut groups: Vec<Vec<(usize, Option<f64>)>> = vec![Vec::new(); models.len()];
    for (i, planned) in planned.into_iter().enumerate() {
        match planned {
            Ok((group, long_value)) => groups[group].push((i, long_value)),
            Err(e) => out[i] = Some(e),
        }
    }
    for (members, model) in groups.iter().zip(models) {
        if members.is_empty() {
            continue;
        }
        let failed = |code: &'static str, reason: &String, out: &mut [Option<RowResult>]| {
            members
                .iter()
                .for_each(|(i, _)| out[*i] = Some(RowResult::failed(code, reason.clone())))
        };
        match model {
            Ok(model) => score_group(model, rows, members, &mut out),
            Err(ModelError::Missing(reason)) => failed("model_missing", reason, &mut out),
            Err(ModelError::Invalid(reason) | ModelError::Unavailable(reason)) => {
                // The reason names the registry's objects and paths: for the log, not the caller.
                tracing::warn!(reason = %reason, rows = members.len(), "a model could not be loaded");
                let said = "the model of this row cannot be loaded; the service's log says why";
                failed("model_invalid", &said.to_string(), &mut out)
            }
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| RowResult::failed("internal", "row not scored")))
        .collect()
}

/// Scores `rows` (each row's JSON text, [`crate::rows`]), in order. Fails as a whole only when
/// the service cannot answer for any row (the registry not open yet, storage unavailable): 503,
/// which callers retry.
pub async fn score_rows(
    models: &Models,
    shape: &RowShape,
    rows: Vec<Box<RawValue>>,
) -> Result<Vec<RowResult>, ApiError> {
    let registry = models.registry().ok_or_else(|| {
        ApiError::unavailable("not_ready", "the model registry is not open yet", 5)
    })?;
    let (planned, keys) = plan(&rows, shape);
    let loaded = models.get_many(&registry, &keys).await;
    if let Some(Err(ModelError::Unavailable(reason))) =
        loaded.iter().find(|m| matches!(m, Err(ModelError::Unavailable(_))))
    {
        return Err(ApiError::unavailable(
            "registry_unavailable",
            format!("models cannot be read now: {reason}"),
            5,
        ));
    }
    if rows.len() <= INLINE_ROWS {
        return Ok(compute(&rows, planned, &loaded));
    }
    tokio::task::spawn_blocking(move || compute(&rows, planned, &loaded)).await.map_err(|e| {
        ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shape(layout: Layout) -> RowShape {
        RowShape::new(&InputColumns { layout, ..InputColumns::default() })
    }

    #[test]
    fn rows_name_their_model() {
        let wide = json!({"device_id": 7, "timestamp": "2026-01-01T00:00:00Z", "temp": 1.5});
        assert_eq!(
            parse_row(&wide, &shape(Layout::Auto)).ok().map(|p| p.key.to_string()),
            Some("7".into())
        );
        let long = json!({"Device": "7", "Tag": 3, "Value": 2.5});
        let parsed = parse_row(&long, &shape(Layout::Auto)).ok().unwrap();
        assert_eq!(parsed.key.to_string(), "7.3");
        assert_eq!(parsed.long_value, Some(2.5));
        let null_value = json!({"device": 7, "sensor": "a", "value": null});
        assert!(
            parse_row(&null_value, &shape(Layout::Long)).ok().unwrap().long_value.unwrap().is_nan()
        );
        for (bad, code) in [
            (json!([7, 1.0]), "bad_row"),
            (json!({"temp": 1.0}), "bad_row"),
            (json!({"device_id": 7.5}), "bad_device"),
            (json!({"device_id": true}), "bad_device"),
            (json!({"device": 7, "sensor": "a"}), "bad_row"),
            (json!({"device": 7, "sensor": "a", "value": "x"}), "bad_value"),
        ] {
            match parse_row(&bad, &shape(Layout::Long)) {
                Err(RowResult::Failed { code: c, .. }) => assert_eq!(c, code, "{bad}"),
                _ => panic!("{bad} parsed"),
            }
        }
    }

    /// Any JSON value as a row: numbers, strings, nulls, booleans, arrays and objects with
    /// the field names rows use, nested.
    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e6f64..1e6).prop_map(|x| json!(x)),
            "[a-z0-9.]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            let key = prop_oneof![
                Just("device_id".to_string()),
                Just("device".to_string()),
                Just("sensor".to_string()),
                Just("value".to_string()),
                Just("temp".to_string()),
                "[a-z]{1,4}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(key, inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever the rows, the answer has one entry per row, in order, and no row makes the
        /// service fail as a whole or claim an internal error.
        #[test]
        fn one_answer_per_row_whatever_the_rows(rows in proptest::collection::vec(json_value(), 0..30)) {
            for layout in [Layout::Auto, Layout::Wide, Layout::Long] {
                let raw: Vec<Box<RawValue>> =
                    rows.iter().map(|r| RawValue::from_string(r.to_string()).unwrap()).collect();
                let (planned, keys) = plan(&raw, &shape(layout));
                let models: Vec<Result<Arc<Model>, ModelError>> =
                    keys.iter().map(|_| Err(ModelError::Missing("none".into()))).collect();
                let answer = compute(&raw, planned, &models);
                proptest::prop_assert_eq!(answer.len(), rows.len());
                for (row, entry) in rows.iter().zip(&answer) {
                    let RowResult::Failed { code, .. } = entry else {
                        return Err(proptest::test_runner::TestCaseError::fail("scored without a model"));
                    };
                    proptest::prop_assert_ne!(*code, "internal", "{}", row);
                }
            }
        }
    }

    #[test]
    fn answers_serialise_as_the_contract_says() {
        let ok = RowResult::Scored {
            score: -0.5,
            decision: 0.25,
            is_anomaly: false,
            model_version: "v".into(),
        };
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            json!({"score": -0.5, "decision": 0.25, "is_anomaly": false, "model_version": "v"})
        );
        let failed = RowResult::failed("model_missing", "no model");
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            json!({"error": "no model", "code": "model_missing"})
        );
    }
}
