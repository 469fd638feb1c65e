//! Registry errors, each naming the model key or file it is about.

use batchscore_io::{ErrorClass, IoError};

/// What can go wrong reading or writing models.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry has no model for this key.
    #[error("no model for key `{key}` in registry {registry}")]
    NoModel { key: String, registry: String },
    /// The model file is not a valid model (truncated, corrupted, hostile or from a newer version).
    #[error("corrupt model file {url}: {reason}")]
    Corrupt { url: String, reason: String },
    /// The model file was written in another format version: retrain or re-import it.
    #[error(
        "model file {url} is in format version {found}; this build reads version {supported} \
         (retrain or re-import the model)"
    )]
    FormatVersion { url: String, found: u32, supported: u32 },
    /// The file holds another key's model than the index says.
    #[error("model file {url} holds key `{found}`, expected `{expected}`")]
    KeyMismatch { url: String, expected: String, found: String },
    /// There is no registry at this location (no index): a wrong URL, or nothing trained yet.
    #[error("no model registry at {url} (its index.json does not exist; train one first)")]
    NotARegistry { url: String },
    /// The registry index cannot be parsed.
    #[error("corrupt registry index {url}: {reason}")]
    CorruptIndex { url: String, reason: String },
    /// A scikit-learn interchange file that cannot become a model.
    #[error("cannot import {source_name}: {reason}")]
    Interchange { source_name: String, reason: String },
    /// An import's files cannot be taken as given: none matches, two map to one key, or a
    /// name maps to an invalid key.
    #[error("{reason}")]
    ImportSelection { reason: String },
    /// A model key that cannot name a file.
    #[error("invalid model key `{key}`: {reason}")]
    InvalidKey { key: String, reason: String },
    /// Encoding a model failed.
    #[error("cannot encode model `{key}`: {reason}")]
    Encode { key: String, reason: String },
    /// Storage failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

impl RegistryError {
    /// The class of this error (see [`ErrorClass`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            RegistryError::Io(e) => e.class(),
            RegistryError::InvalidKey { .. }
            | RegistryError::NotARegistry { .. }
            | RegistryError::ImportSelection { .. } => ErrorClass::Usage,
            RegistryError::Encode { .. } => ErrorClass::Internal,
            RegistryError::NoModel { .. }
            | RegistryError::Corrupt { .. }
            | RegistryError::FormatVersion { .. }
            | RegistryError::KeyMismatch { .. }
            | RegistryError::CorruptIndex { .. }
            | RegistryError::Interchange { .. } => ErrorClass::BadInput,
        }
    }

    /// True when retrying later may help (storage unavailable).
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Io(e) if e.is_retryable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_class() {
        let s = || "x".to_string();
        let cases = [
            (RegistryError::NoModel { key: s(), registry: s() }, ErrorClass::BadInput),
            (RegistryError::Corrupt { url: s(), reason: s() }, ErrorClass::BadInput),
            (
                RegistryError::FormatVersion { url: s(), found: 1, supported: 2 },
                ErrorClass::BadInput,
            ),
            (
                RegistryError::KeyMismatch { url: s(), expected: s(), found: s() },
                ErrorClass::BadInput,
            ),
            (RegistryError::NotARegistry { url: s() }, ErrorClass::Usage),
            (RegistryError::CorruptIndex { url: s(), reason: s() }, ErrorClass::BadInput),
            (RegistryError::Interchange { source_name: s(), reason: s() }, ErrorClass::BadInput),
            (RegistryError::InvalidKey { key: s(), reason: s() }, ErrorClass::Usage),
            (RegistryError::ImportSelection { reason: s() }, ErrorClass::Usage),
            (RegistryError::Encode { key: s(), reason: s() }, ErrorClass::Internal),
            (RegistryError::Io(IoError::NotFound { url: s() }), ErrorClass::Usage),
        ];
        for (error, class) in cases {
            assert_eq!(error.class(), class, "{error:?}");
        }
    }
}
