//! Models and their metadata.

use batchscore_detectors::{
    Detector, DetectorError, IsolationForest, IsolationForestParams, OneClassSvm, Pca, Scaled,
    Scored,
};
use batchscore_drift::DriftReference;
use serde::{Deserialize, Serialize};

use crate::RegistryError;

/// Names one model: a device (`7`), or a (device, sensor) series (`7.pressure`).
///
/// Keys become file names, so they are limited to ASCII letters, digits, `-`, `_`, `.` and `=`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelKey(String);

impl ModelKey {
    /// The key of a device's model.
    pub fn device(device: i64) -> Self {
        Self(device.to_string())
    }

    /// The key of a (device, sensor) series' model: `DEVICE.SENSOR`. Fails when the sensor
    /// name holds characters keys cannot (keys become file names).
    pub fn series(device: i64, sensor: &str) -> Result<Self, RegistryError> {
        Self::try_from(Self::name(device, Some(sensor)))
    }

    /// The name a key of `device` (and `sensor`) has, `DEVICE` or `DEVICE.SENSOR`, whether or
    /// not it is a valid key: the one place the form is written (reports and failure tables
    /// name series whose sensor cannot be a key too).
    pub fn name(device: i64, sensor: Option<&str>) -> String {
        match sensor {
            None => device.to_string(),
            Some(sensor) => format!("{device}.{sensor}"),
        }
    }

    /// The sensor of a series key (`7.pressure` -> `pressure`); `None` for a device key.
    pub fn sensor(&self) -> Option<&str> {
        let (device, sensor) = self.0.split_once('.')?;
        device.parse::<i64>().ok().map(|_| sensor)
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The order scoring meets series in: by device number, then sensor name; keys that name
    /// no device number after those, by text.
    pub fn series_order(&self) -> (Option<i64>, &str) {
        let device = self.0.split_once('.').map_or(self.0.as_str(), |(d, _)| d);
        match device.parse::<i64>() {
            Ok(device) => (Some(device), self.sensor().unwrap_or("")),
            Err(_) => (None, &self.0),
        }
    }
}

impl TryFrom<String> for ModelKey {
    type Error = RegistryError;

    fn try_from(key: String) -> Result<Self, Self::Error> {
        let reason = if key.is_empty() {
            Some("empty")
        } else if key.len() > 128 {
            Some("longer than 128 bytes")
        } else if !key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.=".contains(&b)) {
            Some("only ASCII letters, digits, '-', '_', '.' and '=' are allowed")
        } else if key.starts_with('.') {
            Some("must not start with '.'")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(RegistryError::InvalidKey { key, reason: reason.into() }),
            None => Ok(Self(key)),
        }
    }
}

impl From<ModelKey> for String {
    fn from(key: ModelKey) -> Self {
        key.0
    }
}

impl std::fmt::Display for ModelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Summary of one feature over the training rows, for drift checks and `models show`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSummary {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub std: f64,
    pub p01: f64,
    pub p50: f64,
    pub p99: f64,
}

impl FeatureSummary {
    /// Summarises the finite values of a column; `None` if it has none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        let at = |q: f64| v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
        Some(Self {
            min: v[0],
            max: v[v.len() - 1],
            mean,
            std: var.sqrt(),
            p01: at(0.01),
            p50: at(0.5),
            p99: at(0.99),
        })
    }
}

/// What a model was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    /// Rows used for training.
    pub rows: u64,
    /// First and last training timestamp, microseconds since the Unix epoch (UTC).
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    /// One summary per feature, in feature order (`None` where a feature had no finite value).
    pub summaries: Vec<Option<FeatureSummary>>,
}

/// Everything about a model except its detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub key: ModelKey,
    /// The detector's algorithm (`isolation_forest`).
    pub detector: String,
    /// The hyper-parameters it was trained with, as JSON text (detector-specific).
    pub params: String,
    /// Input columns in the order the detector expects them.
    pub features: Vec<String>,
    pub training: TrainingInfo,
    /// The detector's offset: `decision = score - offset`.
    pub offset: f64,
    /// When the model was created (RFC 3339); not part of the content hash.
    pub created_at: String,
    /// SHA-256 over everything but `created_at` and this field: the model's version.
    pub content_hash: String,
}

/// A detector of any supported family. New variants go at the end: the variant index is part
/// of the stored format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DetectorModel {
    IsolationForest(IsolationForest),
    OneClassSvm(OneClassSvm),
    /// `Pipeline(StandardScaler, IsolationForest)`.
    ScaledIsolationForest(Scaled<IsolationForest>),
    /// `Pipeline(StandardScaler, OneClassSVM)`, the reference system's model.
    ScaledOneClassSvm(Scaled<OneClassSvm>),
    /// PCA reconstruction error.
    Pca(Pca),
    /// PCA reconstruction error of standardised features.
    ScaledPca(Scaled<Pca>),
}

impl DetectorModel {
    fn inner(&self) -> &dyn Detector {
        match self {
            DetectorModel::IsolationForest(d) => d,
            DetectorModel::OneClassSvm(d) => d,
            DetectorModel::ScaledIsolationForest(d) => d,
            DetectorModel::ScaledOneClassSvm(d) => d,
            DetectorModel::Pca(d) => d,
            DetectorModel::ScaledPca(d) => d,
        }
    }
}

impl Detector for DetectorModel {
    fn kind(&self) -> &'static str {
        self.inner().kind()
    }

    fn n_features(&self) -> usize {
        self.inner().n_features()
    }

    fn offset(&self) -> f64 {
        self.inner().offset()
    }

    fn is_anomaly(&self, decision: f64) -> bool {
        self.inner().is_anomaly(decision)
    }

    fn score_samples_into(&self, columns: &[&[f64]], out: &mut [f64]) -> Result<(), DetectorError> {
        self.inner().score_samples_into(columns, out)
    }

    fn score(&self, columns: &[&[f64]]) -> Result<Scored, DetectorError> {
        self.inner().score(columns)
    }
}

/// A model: metadata, detector and (from training) the drift reference. Built by
/// [`Model::new`] or decoded from a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub meta: ModelMeta,
    pub detector: DetectorModel,
    /// Decile bins of the training data per feature; `None` for models imported without
    /// training data (their drift is unknown).
    pub drift: Option<DriftReference>,
}

/// The parts of a model that define its behaviour, hashed to give its version. A model
/// without a drift reference hashes these alone (as before references existed), one with a
/// reference hashes them and the reference.
#[derive(Serialize)]
struct Content<'a> {
    key: &'a ModelKey,
    params: &'a str,
    features: &'a [String],
    training: &'a TrainingInfo,
    detector: &'a DetectorModel,
}

#[derive(Serialize)]
struct ContentWithDrift<'a> {
    content: Content<'a>,
    drift: &'a DriftReference,
}

impl Model {
    /// Assembles a model of an IsolationForest and computes its content hash.
    pub fn isolation_forest(
        key: ModelKey,
        params: &IsolationForestParams,
        features: Vec<String>,
        training: TrainingInfo,
        forest: IsolationForest,
        created_at: String,
    ) -> Result<Self, RegistryError> {
        let params = serde_json::to_string(params)
            .map_err(|e| RegistryError::Encode { key: key.to_string(), reason: e.to_string() })?;
        Self::new(
            key,
            params,
            features,
            training,
            DetectorModel::IsolationForest(forest),
            created_at,
        )
    }

    /// Assembles a model and computes its content hash; checks the feature list.
    pub fn new(
        key: ModelKey,
        params: String,
        features: Vec<String>,
        training: TrainingInfo,
        detector: DetectorModel,
        created_at: String,
    ) -> Result<Self, RegistryError> {
        let content = Content {
            key: &key,
            params: &params,
            features: &features,
            training: &training,
            detector: &detector,
        };
        let content_hash = content_hash(content, None)
            .map_err(|reason| RegistryError::Encode { key: key.to_string(), reason })?;
        let meta = ModelMeta {
            key,
            detector: detector.kind().to_string(),
            params,
            features,
            offset: detector.offset(),
            training,
            created_at,
            content_hash,
        };
        let model = Self { meta, detector, drift: None };
        model
            .check(true)
            .map_err(|reason| RegistryError::Encode { key: model.meta.key.to_string(), reason })?;
        Ok(model)
    }

    /// The model with `reference` as its drift reference (one entry per feature); its content
    /// hash, and so its version, covers the reference.
    pub fn with_drift(mut self, reference: DriftReference) -> Result<Self, RegistryError> {
        let encode =
            |reason: String| RegistryError::Encode { key: self.meta.key.to_string(), reason };
        reference.check(self.meta.features.len()).map_err(encode)?;
        self.meta.content_hash = content_hash(self.content(), Some(&reference)).map_err(encode)?;
        self.drift = Some(reference);
        Ok(self)
    }

    fn content(&self) -> Content<'_> {
        Content {
            key: &self.meta.key,
            params: &self.meta.params,
            features: &self.meta.features,
            training: &self.meta.training,
            detector: &self.detector,
        }
    }

    /// The model's version: the first 16 hex digits of its content hash.
    pub fn version(&self) -> &str {
        let hash = &self.meta.content_hash;
        &hash[..hash.len().min(16)]
    }

    /// Consistency of metadata and detector (used after decoding too); `with_hash` also
    /// recomputes the content hash, which re-encodes the whole model.
    pub(crate) fn check(&self, with_hash: bool) -> Result<(), String> {
        let n = self.detector.n_features();
        if self.meta.features.len() != n {
            return Err(format!(
                "{} feature names for a detector of {n} features",
                self.meta.features.len()
            ));
        }
        let mut names: Vec<&String> = self.meta.features.iter().collect();
        names.sort();
        names.dedup();
        if names.len() != n || names.iter().any(|f| f.is_empty()) {
            return Err("feature names must be unique and non-empty".into());
        }
        if self.meta.detector != self.detector.kind() {
            return Err(format!(
                "metadata says `{}`, payload holds `{}`",
                self.meta.detector,
                self.detector.kind()
            ));
        }
        if self.meta.offset.to_bits() != self.detector.offset().to_bits() {
            return Err("metadata offset differs from the detector's".into());
        }
        if self.meta.training.summaries.len() != n {
            return Err("one training summary per feature expected".into());
        }
        if let Some(drift) = &self.drift {
            drift.check(n)?;
        }
        if !with_hash {
            return Ok(());
        }
        let expected = content_hash(self.content(), self.drift.as_ref())?;
        if expected != self.meta.content_hash {
            return Err("content hash does not match the content".into());
        }
        Ok(())
    }
}

fn content_hash(content: Content<'_>, drift: Option<&DriftReference>) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    let config = bincode::config::standard();
    let bytes = match drift {
        None => bincode::serde::encode_to_vec(&content, config),
        Some(drift) => bincode::serde::encode_to_vec(&ContentWithDrift { content, drift }, config),
    }
    .map_err(|e| e.to_string())?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_file_safe() {
        assert!(ModelKey::try_from("17".to_string()).is_ok());
        assert!(ModelKey::try_from("device=17.temperature".to_string()).is_ok());
        for bad in ["", "a/b", "..", ".hidden", "a b", "ü"] {
            assert!(ModelKey::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn summaries_ignore_non_finite_values() {
        let s = FeatureSummary::of(&[1.0, f64::NAN, 3.0, f64::INFINITY, 2.0]).unwrap();
        assert_eq!((s.min, s.max, s.mean, s.p50), (1.0, 3.0, 2.0, 2.0));
        assert_eq!(FeatureSummary::of(&[f64::NAN]), None);
    }
}
