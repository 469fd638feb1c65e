//! The rows of a `POST /v1/score` request, read within bounds.
//!
//! The body's `data` array is read row by row into each row's JSON text, and reading stops at
//! `--max-rows` + 1 rows: nothing is built for rows past the limit. Each row is parsed on its
//! own when it is used (planning, then scoring), into a flat JSON object: at most
//! [`MAX_ROW_FIELDS`] fields, keys and strings of at most [`MAX_TEXT_BYTES`] bytes, values that
//! are numbers, strings, booleans or null, each key once. A row outside those bounds, or with a
//! number beyond `f64`, is that row's error; no row is held parsed longer than its use. A
//! request's memory is then its body, its rows' text (about the body again) and one parsed row:
//! parsing the whole body into JSON values first took about 90 times its size.

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::score::RowResult;

/// Fields a row may have: a device's sensors and its keys, with room to spare.
pub const MAX_ROW_FIELDS: usize = 256;
/// Bytes of a field name or a string value.
pub const MAX_TEXT_BYTES: usize = 256;

/// Why a body is not a list of rows.
#[derive(Debug)]
pub enum BodyError {
    /// More rows than `max_rows`.
    TooManyRows,
    Json(serde_json::Error),
}

const TOO_MANY: &str = "\u{0}too many rows";

/// Reads `{"data": [row, ...]}` into each row's JSON text, refusing more than `max_rows` rows
/// before building anything for them.
pub fn request_rows(body: &[u8], max_rows: usize) -> Result<Vec<Box<RawValue>>, BodyError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let rows = Body { max_rows }.deserialize(&mut deserializer).and_then(|rows| {
        deserializer.end()?;
        Ok(rows)
    });
    rows.map_err(|e| match e.to_string().contains(TOO_MANY) {
        true => BodyError::TooManyRows,
        false => BodyError::Json(e),
    })
}

struct Body {
    max_rows: usize,
}

impl<'de> DeserializeSeed<'de> for Body {
    type Value = Vec<Box<RawValue>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Body {
    type Value = Vec<Box<RawValue>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("{\"data\": [rows]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut rows = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "data" {
                return Err(A::Error::unknown_field(&key, &["data"]));
            }
            if rows.is_some() {
                return Err(A::Error::duplicate_field("data"));
            }
            rows = Some(map.next_value_seed(Rows { max_rows: self.max_rows })?);
        }
        rows.ok_or_else(|| A::Error::missing_field("data"))
    }
}

struct Rows {
    max_rows: usize,
}

impl<'de> DeserializeSeed<'de> for Rows {
    type Value = Vec<Box<RawValue>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Rows {
    type Value = Vec<Box<RawValue>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of rows")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut rows = Vec::new();
        while let Some(row) = seq.next_element::<Box<RawValue>>()? {
            if rows.len() == self.max_rows {
                return Err(A::Error::custom(TOO_MANY));
            }
            rows.push(row);
        }
        Ok(rows)
    }
}

/// A row's fields: a flat JSON object within the bounds above, each key once.
pub fn row_fields(raw: &RawValue) -> Result<Value, RowResult> {
    serde_json::from_str::<Fields>(raw.get()).map(|f| Value::Object(f.0)).map_err(|e| {
        let text = e.to_string();
        let code = if text.contains("out of range") { "bad_value" } else { "bad_row" };
        RowResult::failed(code, format!("the row cannot be read: {text}"))
    })
}

struct Fields(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a row: a JSON object of fields")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.len() > MAX_TEXT_BYTES {
                return Err(A::Error::custom(format!(
                    "a field name is longer than {MAX_TEXT_BYTES} bytes"
                )));
            }
            if fields.len() == MAX_ROW_FIELDS {
                return Err(A::Error::custom(format!("more than {MAX_ROW_FIELDS} fields")));
            }
            let Scalar(value) = map.next_value()?;
            if fields.contains_key(&key) {
                return Err(A::Error::custom(format!("the key `{key}` appears twice")));
            }
            fields.insert(key, value);
        }
        Ok(Fields(fields))
    }
}

/// A field's value: a number, a string, a boolean or null.
struct Scalar(Value);

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor).map(Scalar)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number, a string, true, false or null")
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
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        if v.len() > MAX_TEXT_BYTES {
            return Err(E::custom(format!("a string is longer than {MAX_TEXT_BYTES} bytes")));
        }
        Ok(Value::String(v.to_string()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(row: &str) -> Option<&'static str> {
        let raw = RawValue::from_string(row.to_string()).ok()?;
        match row_fields(&raw) {
            Ok(_) => None,
            Err(RowResult::Failed { code, .. }) => Some(code),
            Err(_) => Some("?"),
        }
    }

    /// Regression: one `1e400` in one row failed the whole request with 400 (Stream Analytics
    /// fails its job on it), and a key given twice kept its last value without a word.
    #[test]
    fn a_row_that_cannot_be_read_is_that_rows_error() {
        let body = br#"{"data": [{"device_id": 1, "temp": 1e400}, {"device_id": 2, "temp": 1.5},
            {"device_id": 3, "temp": 1, "temp": 2}, [1, 2], {"device_id": 4, "t": -1e-400}]}"#;
        let rows = request_rows(body, 10).unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(
            row_fields(&rows[1]).ok(),
            Some(serde_json::json!({"device_id": 2, "temp": 1.5}))
        );
        let codes: Vec<Option<&str>> = rows.iter().map(|r| code(r.get())).collect();
        assert_eq!(codes, [Some("bad_value"), None, Some("bad_row"), Some("bad_row"), None]);
    }

    /// Regression: a 4 MiB body of tiny objects took about 90 times its size, parsed whole
    /// before any bound; the same inside one row was answered 200.
    #[test]
    fn rows_are_bounded_while_they_are_read() {
        let many = format!("{{\"data\": [{}{{}}]}}", "{},".repeat(1_000_000));
        assert!(matches!(request_rows(many.as_bytes(), 10_000), Err(BodyError::TooManyRows)));
        let wide: String = (0..300).map(|i| format!("\"f{i}\": {i}")).collect::<Vec<_>>().join(",");
        assert_eq!(code(&format!("{{{wide}}}")), Some("bad_row"));
        assert_eq!(code(&format!("{{\"s\": \"{}\"}}", "x".repeat(300))), Some("bad_row"));
        assert_eq!(code(&format!("{{\"{}\": 1}}", "k".repeat(300))), Some("bad_row"));
        assert_eq!(code(r#"{"device_id": 1, "nested": {"a": [1, 2, 3]}}"#), Some("bad_row"));
        assert_eq!(code(r#"{"device_id": 1, "ok": "yes", "n": null, "b": true}"#), None);
        assert!(matches!(request_rows(br#"{"data": 5}"#, 10), Err(BodyError::Json(_))));
        assert!(matches!(request_rows(br#"{"rows": []}"#, 10), Err(BodyError::Json(_))));
        assert!(matches!(request_rows(br#"{"data": []} x"#, 10), Err(BodyError::Json(_))));
    }
}
