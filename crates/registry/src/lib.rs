//! The model registry: one model per model key, in a versioned, checksummed file format.
//!
//! A model file is a small header (magic, format version, payload length, XXH3 of the payload)
//! around a bincode payload holding the model's metadata and its detector. Decoding checks every
//! byte of that and then validates the detector's structure, so a truncated, corrupted or hostile
//! file is a [`RegistryError`], never a panic. An `index.json` at the registry root lists every
//! model with its size and SHA-256, so opening a registry of any size is one read. Models
//! exported from scikit-learn (`scripts/export_sklearn.py`) come in through [`import_sklearn`].

mod error;
mod format;
mod import;
mod index;
mod model;
mod pattern;
mod sklearn;

pub use batchscore_drift::{DriftReference, FeatureBins};
use batchscore_io::error_causes;
pub use error::RegistryError;
pub use format::{FORMAT_VERSION, MAGIC};
pub use import::{ImportFile, ImportPlan, PACK_MODELS, write_models};
pub use index::{EncodedModel, IndexEntry, Registry};
pub use model::{DetectorModel, FeatureSummary, Model, ModelKey, ModelMeta, TrainingInfo};
pub use pattern::KeyPattern;
pub use sklearn::{INTERCHANGE_FORMAT, INTERCHANGE_VERSION, import_sklearn};
