//! Test helpers shared by the forest's files: hand-built trees, trained forests, and the
//! plainest reading of scikit-learn's scoring, which every kernel is pinned to.

use rand::{Rng, SeedableRng};

use crate::iforest::path_length::average_path_length;
use crate::iforest::raw::{LEAF, RawForest, RawNode};
use crate::{IsolationForest, IsolationForestParams};

pub(crate) fn leaf(n: u64) -> RawNode {
    RawNode {
        feature: 0,
        threshold: -2.0,
        left: LEAF,
        right: LEAF,
        missing_go_to_left: true,
        n_node_samples: n,
    }
}

pub(crate) fn split(
    feature: u32,
    threshold: f64,
    left: u32,
    right: u32,
    nan_left: bool,
) -> RawNode {
    RawNode { feature, threshold, left, right, missing_go_to_left: nan_left, n_node_samples: 0 }
}

/// Root splits feature 0 at 0.5; the left child splits feature 1 at 10.0.
///   node 0: x0 <= 0.5 ? node 1 : node 4 (leaf, 5 samples)
///   node 1: x1 <= 10  ? node 2 (leaf, 1 sample) : node 3 (leaf, 2 samples)
pub(crate) fn hand_forest() -> IsolationForest {
    let tree =
        vec![split(0, 0.5, 1, 4, false), split(1, 10.0, 2, 3, true), leaf(1), leaf(2), leaf(5)];
    IsolationForest::try_from(RawForest {
        n_features: 2,
        max_samples: 8,
        offset: -0.5,
        trees: vec![tree],
    })
    .unwrap()
}

/// A forest of `trees` trees fitted on `rows` uniform rows of `features` features in `0..scale`.
pub(crate) fn fitted(
    seed: u64,
    features: usize,
    rows: usize,
    trees: usize,
    scale: f64,
) -> IsolationForest {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let train: Vec<Vec<f64>> =
        (0..features).map(|_| (0..rows).map(|_| rng.random::<f64>() * scale).collect()).collect();
    let refs: Vec<&[f64]> = train.iter().map(Vec::as_slice).collect();
    IsolationForestParams { n_estimators: trees, seed, ..Default::default() }
        .check()
        .unwrap()
        .fit(&refs)
        .unwrap()
}

/// Scores as bits, to compare kernels exactly.
pub(crate) fn bits(values: &[f64]) -> Vec<u64> {
    values.iter().map(|x| x.to_bits()).collect()
}

/// The plainest reading of scikit-learn's algorithm, on the raw (stored) form: one row at a
/// time, each tree walked from its root to a leaf.
pub(crate) fn reference_scores(raw: &RawForest, rows: &[Vec<f64>]) -> Vec<f64> {
    let denominator = raw.trees.len() as f64 * average_path_length(raw.max_samples as f64);
    rows.iter()
        .map(|row| {
            let mut sum = 0.0;
            for tree in &raw.trees {
                let (mut i, mut nodes_on_path) = (0usize, 1.0);
                while tree[i].left != LEAF {
                    let x = row[tree[i].feature as usize] as f32;
                    let left = if x.is_nan() {
                        tree[i].missing_go_to_left
                    } else {
                        f64::from(x) <= tree[i].threshold
                    };
                    i = if left { tree[i].left } else { tree[i].right } as usize;
                    nodes_on_path += 1.0;
                }
                sum += (nodes_on_path + average_path_length(tree[i].n_node_samples as f64)) - 1.0;
            }
            -(2f64.powf(-(sum / denominator)))
        })
        .collect()
}
