//! The error type shared by every detector.

/// What can go wrong when validating, training or scoring a detector.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DetectorError {
    /// A hyper-parameter is out of its domain.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParameter { name: &'static str, reason: String },
    /// The batch handed to a detector does not have the columns it was trained on.
    #[error("expected {expected} feature columns, got {got}")]
    FeatureCount { expected: usize, got: usize },
    /// Feature columns of one batch have different lengths.
    #[error("feature column {column} has {got} rows, expected {expected}")]
    RaggedColumns { column: usize, expected: usize, got: usize },
    /// The output buffer does not match the batch.
    #[error("output buffer holds {got} rows, the batch has {expected}")]
    OutputLength { expected: usize, got: usize },
    /// Training needs at least one row without NaN or infinite values.
    #[error("no usable training rows: {rows} rows given, none without NaN or infinite values")]
    NoTrainingRows { rows: usize },
    /// Training values of a feature are so large that its statistics overflow f64.
    #[error(
        "training values of feature {feature} are too large: their squares overflow f64 \
         (values near ±1e308)"
    )]
    Overflow { feature: usize },
    /// A stored or imported model breaks an invariant of its detector.
    #[error("invalid model: {0}")]
    InvalidModel(String),
}
