//! IsolationForest with scores equal to scikit-learn's for the same trees.
//!
//! Scoring follows scikit-learn 1.9 to the bit: inputs are compared as float32 against f64
//! thresholds, a row goes left where `f64::from(x as f32) <= threshold`, NaN follows the node's
//! missing-value direction, and every tree adds `(path_nodes + c(n_node_samples)) - 1.0` to the
//! row's sum in tree order, where the root counts as one node. The score is
//! `-(2^(-sum / (n_trees * c(max_samples))))`.

#[cfg(target_arch = "x86_64")]
mod avx512;
mod dense;
mod model;
mod params;
mod path_length;
mod preorder;
mod raw;
mod stored;
#[cfg(test)]
mod testing;
mod train;

pub use model::{ForestKernel, IsolationForest};
pub use params::{
    Contamination, IsolationForestParams, MaxFeatures, MaxSamples, ValidIsolationForestParams,
};
pub use path_length::average_path_length;
pub use raw::{LEAF, RawForest, RawNode};
pub(crate) use train::percentile_linear;
