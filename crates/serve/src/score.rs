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
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ApiError;
use crate::models::{ModelError, Models};

/// Requests with more rows are scored on the blocking pool rather than on an async worker.
const INLINE_ROWS: usize = 256;

/// The request body: each row kept as its JSON text, parsed on its own ([`parse_rows`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    pub data: Vec<Box<serde_json::value::RawValue>>,
}

/// A JSON value whose objects name each key once: serde_json's `Value` keeps the last of
/// repeated keys, which would score a row on a value its sender may not have meant.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some((key, Strict(value))) = map.next_entry::<String, Strict>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("the key `{key}` appears twice")));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Parses each row of a request on its own: a row's number beyond `f64` or repeated key is
/// that row's error.
pub fn parse_rows(rows: Vec<Box<serde_json::value::RawValue>>) -> Vec<Result<Value, RowResult>> {
    rows.into_iter()
        .map(|raw| {
            serde_json::from_str::<Strict>(raw.get()).map(|s| s.0).map_err(|e| {
                let text = e.to_string();
                let code = if text.contains("out of range") { "bad_value" } else { "bad_row" };
                RowResult::failed(code, format!("the row cannot be read: {text}"))
            })
        })
        .collect()
}

/// One row's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RowResult {
    Scored { score: f64, decision: f64, is_anomaly: bool, model_version: String },
    Failed { error: String, code: &'static str },
}

impl RowResult {
    fn failed(code: &'static str, error: impl Into<String>) -> Self {
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
    rows: &[Value],
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
                let mut values = Vec::with_capacity(features.len());
                for feature in features {
                    let value = match rows[*i].get(feature) {
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

fn plan(rows: &[Result<Value, RowResult>], shape: &RowShape) -> Plan {
    let mut groups: HashMap<ModelKey, usize> = HashMap::new();
    let mut keys: Vec<ModelKey> = Vec::new();
    let planned = rows
        .iter()
        .map(|row| {
            let row = row.as_ref().map_err(Clone::clone)?;
            let Parsed { key, long_value } = parse_row(row, shape)?;
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
    rows: &[Value],
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

/// Scores `rows` (each parsed, or its error), in order. Fails as a whole only when the service
/// cannot answer for any row (the registry not open yet, storage unavailable): 503, which
/// callers retry.
pub async fn score_rows(
    models: &Models,
    shape: &RowShape,
    rows: Vec<Result<Value, RowResult>>,
) -> Result<Vec<RowResult>, ApiError> {
    let registry = models.registry().ok_or_else(|| {
        ApiError::unavailable("not_ready", "the model registry is not open yet", 5)
    })?;
    let (planned, keys) = plan(&rows, shape);
    // Rows that did not parse already have their answer in `planned`.
    let rows: Vec<Value> = rows.into_iter().map(Result::unwrap_or_default).collect();
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
                let parsed: Vec<Result<Value, RowResult>> = rows.iter().cloned().map(Ok).collect();
                let (planned, keys) = plan(&parsed, &shape(layout));
                let models: Vec<Result<Arc<Model>, ModelError>> =
                    keys.iter().map(|_| Err(ModelError::Missing("none".into()))).collect();
                let answer = compute(&rows, planned, &models);
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

    /// Regression: one `1e400` in one row failed the whole request with 400 (Stream Analytics
    /// fails its job on it), and a key given twice kept its last value without a word.
    #[test]
    fn a_row_that_cannot_be_read_is_that_rows_error() {
        let body = r#"{"data": [{"device_id": 1, "temp": 1e400}, {"device_id": 2, "temp": 1.5},
            {"device_id": 3, "temp": 1, "temp": 2}, [1, 2], {"device_id": 4, "t": -1e-400}]}"#;
        let request: ScoreRequest = serde_json::from_str(body).unwrap();
        let rows = parse_rows(request.data);
        assert_eq!(rows.len(), 5);
        let code = |i: usize| match &rows[i] {
            Err(RowResult::Failed { code, error }) => Some((*code, error.clone())),
            _ => None,
        };
        let (first, error) = code(0).unwrap();
        assert_eq!(first, "bad_value", "{error}");
        assert_eq!(rows[1].as_ref().ok(), Some(&json!({"device_id": 2, "temp": 1.5})));
        let (third, error) = code(2).unwrap();
        assert!(third == "bad_row" && error.contains("`temp` appears twice"), "{error}");
        assert!(rows[3].is_ok(), "not an object: parse_row says so, as before");
        assert!(rows[4].is_ok(), "an underflow is 0, as in the batch job's readers");
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
