//! Outlier detectors for batchscore: pure compute, no IO, no global state.
//!
//! Every detector implements [`Detector`], which scores a batch of rows given as feature columns
//! and follows scikit-learn's conventions: `score_samples` is lower for more abnormal rows,
//! `decision = score - offset` is negative for anomalies. Training follows linfa's shape:
//! hyper-parameters are built with [`IsolationForestParams`], validated into
//! [`ValidIsolationForestParams`] by `check()`, and only validated parameters can `fit`.
//! Models imported from scikit-learn (IsolationForest, [`OneClassSvm`], a [`StandardScaler`]
//! before either as a [`Scaled`] pipeline) are validated from their raw stored form the same way.

mod detector;
mod error;
mod iforest;
mod pca;
mod scaler;
mod svm;

pub use detector::{Detector, Scored};
pub use error::DetectorError;
pub use iforest::LEAF;
pub use iforest::{
    Contamination, ForestKernel, IsolationForest, IsolationForestParams, MaxFeatures, MaxSamples,
    RawForest, RawNode, ValidIsolationForestParams, average_path_length,
};
pub use pca::{Pca, PcaComponents, PcaParams, RawPca, ValidPcaParams};
pub use scaler::{RawStandardScaler, Scaled, StandardScaler};
pub use svm::{Kernel, OneClassSvm, RawOneClassSvm};
