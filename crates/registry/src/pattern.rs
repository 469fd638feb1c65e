//! File-name patterns that map exported model files to model keys.
//!
//! A pattern such as `model_{device}_{sensor}` is matched against a file name without its
//! extension; `{device}` and `{sensor}` give the key `DEVICE.SENSOR` (a per-sensor model),
//! `{device}` alone gives `DEVICE`, and `{key}` takes the matched text as the key.

use crate::{ModelKey, RegistryError};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Device,
    Sensor,
    Key,
}

/// A parsed, checked key pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPattern {
    pieces: Vec<Piece>,
    text: String,
}

impl KeyPattern {
    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Parses a pattern: literals and the placeholders `{device}`, `{sensor}`, `{key}`; either
    /// `{key}`, or `{device}` with an optional `{sensor}`, each at most once.
    pub fn parse(pattern: &str) -> Result<Self, RegistryError> {
        let invalid = |reason: &str| RegistryError::InvalidKey {
            key: pattern.to_string(),
            reason: format!("key pattern: {reason}"),
        };
        let mut pieces = Vec::new();
        let mut rest = pattern;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest.find('}').ok_or_else(|| invalid("unclosed `{`"))?;
                    pieces.push(match &rest[1..end] {
                        "device" => Piece::Device,
                        "sensor" => Piece::Sensor,
                        "key" => Piece::Key,
                        _ => return Err(invalid("placeholders are {device}, {sensor} and {key}")),
                    });
                    rest = &rest[end + 1..];
                }
                Some(i) => {
                    pieces.push(Piece::Literal(rest[..i].to_string()));
                    rest = &rest[i..];
                }
                None => {
                    pieces.push(Piece::Literal(rest.to_string()));
                    rest = "";
                }
            }
        }
        let count = |p: &Piece| pieces.iter().filter(|q| *q == p).count();
        let (d, s, k) = (count(&Piece::Device), count(&Piece::Sensor), count(&Piece::Key));
        let ok = (k == 1 && d == 0 && s == 0) || (k == 0 && d == 1 && s <= 1);
        if !ok {
            return Err(invalid(
                "use {key} alone, or {device} with an optional {sensor}, once each",
            ));
        }
        Ok(Self { pieces, text: pattern.to_string() })
    }

    /// The key for a file name without its extension, or `None` if the name does not match.
    pub fn key_for(&self, stem: &str) -> Option<Result<ModelKey, RegistryError>> {
        let mut values = [None, None, None];
        if !matches(&self.pieces, stem, &mut values) {
            return None;
        }
        let [device, sensor, key] = values;
        let key = match (key, device, sensor) {
            (Some(k), _, _) => k.to_string(),
            (None, Some(d), Some(s)) => format!("{d}.{s}"),
            (None, Some(d), None) => d.to_string(),
            _ => return None,
        };
        Some(ModelKey::try_from(key))
    }
}

/// Matches pieces against text, placeholders taking the shortest non-empty text that lets the
/// rest match (backtracking).
fn matches<'t>(pieces: &[Piece], text: &'t str, values: &mut [Option<&'t str>; 3]) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return text.is_empty();
    };
    let slot = match first {
        Piece::Literal(lit) => {
            return text.strip_prefix(lit.as_str()).is_some_and(|t| matches(rest, t, values));
        }
        Piece::Device => 0,
        Piece::Sensor => 1,
        Piece::Key => 2,
    };
    for (end, _) in text.char_indices().skip(1).chain([(text.len(), ' ')]) {
        values[slot] = Some(&text[..end]);
        if matches(rest, &text[end..], values) {
            return true;
        }
    }
    values[slot] = None;
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pattern: &str, stem: &str) -> Option<String> {
        KeyPattern::parse(pattern).unwrap().key_for(stem).map(|k| k.unwrap().to_string())
    }

    #[test]
    fn patterns_map_file_names_to_keys() {
        assert_eq!(key("model_{device}_{sensor}", "model_1_3").as_deref(), Some("1.3"));
        assert_eq!(key("model_{device}_{sensor}", "model_12_temp_a").as_deref(), Some("12.temp_a"));
        assert_eq!(key("{device}", "17").as_deref(), Some("17"));
        assert_eq!(key("{key}", "pump-7").as_deref(), Some("pump-7"));
        assert_eq!(key("dev{device}", "model_1"), None);
        assert!(KeyPattern::parse("{device}{device}").is_err());
        assert!(KeyPattern::parse("{sensor}").is_err());
        assert!(KeyPattern::parse("{oops}").is_err());
        assert!(KeyPattern::parse("{key").is_err());
        assert!(KeyPattern::parse("m_{device}").unwrap().key_for("m_a/b").unwrap().is_err());
    }
}
