//! The fitted forest: a serialisable raw form and a validated flat form that scores.
//!
//! [`RawForest`] is what a model file or a scikit-learn export holds. It becomes an
//! [`IsolationForest`] only through validation (child indices in range and pointing forward,
//! one parent per node, feature indices below the feature count, finite thresholds, bounded sizes),
//! so a corrupt or hostile model is an error value and scoring never indexes out of bounds.

use serde::{Deserialize, Serialize};

use crate::detector::batch_rows;
use crate::iforest::params::{MAX_ESTIMATORS, MAX_SAMPLES_PER_TREE};
use crate::{Detector, DetectorError};

/// Marks a leaf in [`RawNode::left`] and [`RawNode::right`], as scikit-learn's `TREE_LEAF` (-1).
pub const LEAF: u32 = u32::MAX;

/// Upper bound on features per model; far above any sensor count, low enough to bound memory.
const MAX_FEATURES: u32 = 1 << 16;
/// Upper bound on nodes per tree: a tree over `MAX_SAMPLES_PER_TREE` rows has fewer.
const MAX_NODES_PER_TREE: usize = 2 * MAX_SAMPLES_PER_TREE;
/// Upper bound on nodes per forest (about 1.3 GB of nodes): a bigger file is hostile, not a model.
const MAX_NODES_PER_FOREST: usize = 1 << 25;

/// One node of a tree in scikit-learn's array layout.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RawNode {
    /// Index into the model's feature columns (already mapped through any per-tree subset).
    pub feature: u32,
    /// Split threshold: a row goes left where `f64::from(x as f32) <= threshold`.
    pub threshold: f64,
    /// Index of the left child within the tree, or [`LEAF`].
    pub left: u32,
    /// Index of the right child within the tree, or [`LEAF`].
    pub right: u32,
    /// Where a NaN goes at this node.
    pub missing_go_to_left: bool,
    /// Number of distinct training rows that reached this node.
    pub n_node_samples: u64,
}

/// A forest as stored: unvalidated until converted into an [`IsolationForest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawForest {
    /// Number of feature columns the forest was trained on.
    pub n_features: u32,
    /// scikit-learn's `max_samples_`: rows drawn per tree.
    pub max_samples: u64,
    /// scikit-learn's `offset_`.
    pub offset: f64,
    /// The trees, each in scikit-learn's node order (every child after its parent).
    pub trees: Vec<Vec<RawNode>>,
}

/// A node in the flat scoring layout: all trees' nodes in one vector, children as absolute indices.
///
/// A leaf's children are the leaf itself, so a traversal step at a leaf stays there: rows can
/// take the same number of steps without a branch on "is this a leaf" (see `path_sums`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct FlatNode {
    threshold: f64,
    /// `(path_nodes + c(n_node_samples)) - 1.0` for leaves, precomputed as scikit-learn does.
    leaf_value: f64,
    feature: u32,
    /// Absolute index of the left child (the node itself for a leaf).
    left: u32,
    right: u32,
    missing_go_to_left: bool,
    is_leaf: bool,
    n_node_samples: u64,
}

/// Rows walked through one tree together: independent traversals overlap their memory latency.
const LANES: usize = 8;

/// A validated IsolationForest, ready to score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawForest", into = "RawForest")]
pub struct IsolationForest {
    n_features: u32,
    max_samples: u64,
    offset: f64,
    /// Absolute index of each tree's root; tree `t` spans `roots[t]..roots[t + 1]`.
    roots: Vec<u32>,
    /// Edges on each tree's longest root-to-leaf path.
    heights: Vec<u32>,
    nodes: Vec<FlatNode>,
    /// `n_trees * c(max_samples)`, the normaliser of the path-length sum.
    denominator: f64,
}

/// Euler's constant as numpy spells it (`np.euler_gamma`).
const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// `c(n)`: the average path length of an unsuccessful search in a binary search tree of `n`
/// items, in scikit-learn's exact floating-point order.
pub fn average_path_length(n: f64) -> f64 {
    if n <= 1.0 {
        0.0
    } else if n == 2.0 {
        1.0
    } else {
        2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
    }
}

impl TryFrom<RawForest> for IsolationForest {
    type Error = DetectorError;

    fn try_from(raw: RawForest) -> Result<Self, Self::Error> {
        let invalid = |msg: String| Err(DetectorError::InvalidModel(msg));
        if raw.n_features == 0 || raw.n_features > MAX_FEATURES {
            return invalid(format!("n_features {} is outside 1..={MAX_FEATURES}", raw.n_features));
        }
        if raw.trees.is_empty() || raw.trees.len() > MAX_ESTIMATORS {
            return invalid(format!("{} trees is outside 1..={MAX_ESTIMATORS}", raw.trees.len()));
        }
        if raw.max_samples == 0 {
            return invalid("max_samples is 0".into());
        }
        if !raw.offset.is_finite() {
            return invalid(format!("offset {} is not finite", raw.offset));
        }
        let total: usize = raw.trees.iter().map(Vec::len).sum();
        if total > MAX_NODES_PER_FOREST {
            return invalid(format!("{total} nodes exceed the limit of {MAX_NODES_PER_FOREST}"));
        }
        let mut nodes = Vec::with_capacity(total);
        let mut roots = Vec::with_capacity(raw.trees.len());
        let mut heights = Vec::with_capacity(raw.trees.len());
        for (t, tree) in raw.trees.iter().enumerate() {
            let base = nodes.len();
            roots.push(base as u32);
            heights.push(flatten_tree(t, tree, raw.n_features, base, &mut nodes)?);
        }
        let denominator = raw.trees.len() as f64 * average_path_length(raw.max_samples as f64);
        Ok(Self {
            n_features: raw.n_features,
            max_samples: raw.max_samples,
            offset: raw.offset,
            roots,
            heights,
            nodes,
            denominator,
        })
    }
}

/// Validates one tree and appends it to `out` with absolute child indices and leaf values;
/// returns the tree's height in edges.
fn flatten_tree(
    t: usize,
    tree: &[RawNode],
    n_features: u32,
    base: usize,
    out: &mut Vec<FlatNode>,
) -> Result<u32, DetectorError> {
    let invalid = |msg: String| Err(DetectorError::InvalidModel(format!("tree {t}: {msg}")));
    if tree.is_empty() || tree.len() > MAX_NODES_PER_TREE {
        return invalid(format!("{} nodes is outside 1..={MAX_NODES_PER_TREE}", tree.len()));
    }
    // Number of path nodes from the root (root = 1); 0 marks "no parent seen yet". Children
    // always come after their parent, so one forward pass sees every parent before its children,
    // and requiring exactly one parent per non-root node rules out cycles and shared subtrees.
    let mut depth = vec![0u32; tree.len()];
    depth[0] = 1;
    let mut height = 0;
    for (i, node) in tree.iter().enumerate() {
        if depth[i] == 0 {
            return invalid(format!("node {i} is not reachable from the root"));
        }
        let is_leaf = node.left == LEAF && node.right == LEAF;
        if is_leaf {
            let leaf_value =
                (f64::from(depth[i]) + average_path_length(node.n_node_samples as f64)) - 1.0;
            height = height.max(depth[i] - 1);
            let own = (base + i) as u32;
            out.push(FlatNode {
                threshold: node.threshold,
                leaf_value,
                feature: 0,
                left: own,
                right: own,
                missing_go_to_left: node.missing_go_to_left,
                is_leaf: true,
                n_node_samples: node.n_node_samples,
            });
            continue;
        }
        for child in [node.left, node.right] {
            let c = child as usize;
            if child == LEAF || c <= i || c >= tree.len() {
                return invalid(format!(
                    "node {i} has child {child}, expected an index in {}..{}",
                    i + 1,
                    tree.len()
                ));
            }
            if depth[c] != 0 {
                return invalid(format!("node {c} has more than one parent"));
            }
            depth[c] = depth[i] + 1;
        }
        if node.feature >= n_features {
            return invalid(format!("node {i} splits on feature {} of {n_features}", node.feature));
        }
        if !node.threshold.is_finite() {
            return invalid(format!("node {i} has threshold {}", node.threshold));
        }
        out.push(FlatNode {
            threshold: node.threshold,
            leaf_value: 0.0,
            feature: node.feature,
            left: (base + node.left as usize) as u32,
            right: (base + node.right as usize) as u32,
            missing_go_to_left: node.missing_go_to_left,
            is_leaf: false,
            n_node_samples: node.n_node_samples,
        });
    }
    Ok(height)
}

impl From<IsolationForest> for RawForest {
    fn from(forest: IsolationForest) -> Self {
        let mut trees = Vec::with_capacity(forest.roots.len());
        for (t, &root) in forest.roots.iter().enumerate() {
            let start = root as usize;
            let end = forest.roots.get(t + 1).map_or(forest.nodes.len(), |&r| r as usize);
            let tree = forest.nodes[start..end]
                .iter()
                .map(|n| RawNode {
                    feature: n.feature,
                    threshold: n.threshold,
                    left: if n.is_leaf { LEAF } else { n.left - root },
                    right: if n.is_leaf { LEAF } else { n.right - root },
                    missing_go_to_left: n.missing_go_to_left,
                    n_node_samples: n.n_node_samples,
                })
                .collect();
            trees.push(tree);
        }
        RawForest {
            n_features: forest.n_features,
            max_samples: forest.max_samples,
            offset: forest.offset,
            trees,
        }
    }
}

impl IsolationForest {
    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.roots.len()
    }

    /// Total number of nodes over all trees.
    pub fn n_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// scikit-learn's `max_samples_`.
    pub fn max_samples(&self) -> u64 {
        self.max_samples
    }

    /// Returns the same forest with another offset (used when the offset is fitted afterwards).
    pub(crate) fn with_offset(mut self, offset: f64) -> Self {
        self.offset = offset;
        self
    }

    /// Sum over trees of each row's path term, in tree order, into `sums`.
    fn path_sums(&self, columns: &[Vec<f32>], sums: &mut [f64]) {
        sums.fill(0.0);
        // Tree-outer keeps one tree's nodes hot in cache while the batch walks it; each row still
        // adds its trees in order, so the sum is the same as scikit-learn's. Within a tree, LANES
        // rows advance together for `height` steps (leaves point to themselves), which turns a
        // chain of dependent loads per row into LANES independent chains.
        for (&root, &height) in self.roots.iter().zip(&self.heights) {
            for (block, chunk) in sums.chunks_mut(LANES).enumerate() {
                let first = block * LANES;
                let mut at = [root as usize; LANES];
                for _ in 0..height {
                    for (lane, i) in at.iter_mut().enumerate().take(chunk.len()) {
                        let node = &self.nodes[*i];
                        let x = columns[node.feature as usize][first + lane];
                        // NaN compares false, so it goes left only if the node says so.
                        let go_left = (f64::from(x) <= node.threshold)
                            | (x.is_nan() & node.missing_go_to_left);
                        *i = if go_left { node.left } else { node.right } as usize;
                    }
                }
                for (sum, &i) in chunk.iter_mut().zip(&at) {
                    *sum += self.nodes[i].leaf_value;
                }
            }
        }
    }
}

impl Detector for IsolationForest {
    fn kind(&self) -> &'static str {
        "isolation_forest"
    }

    fn n_features(&self) -> usize {
        self.n_features as usize
    }

    fn offset(&self) -> f64 {
        self.offset
    }

    fn score_samples_into(&self, columns: &[&[f64]], out: &mut [f64]) -> Result<(), DetectorError> {
        let rows = batch_rows(columns, self.n_features())?;
        if out.len() != rows {
            return Err(DetectorError::OutputLength { expected: rows, got: out.len() });
        }
        // scikit-learn casts the input to float32 once; values beyond f32 range become +-inf and
        // compare as such, NaN stays NaN and follows the node's missing-value direction.
        let columns32: Vec<Vec<f32>> =
            columns.iter().map(|c| c.iter().map(|&v| v as f32).collect()).collect();
        self.path_sums(&columns32, out);
        for value in out.iter_mut() {
            // np.divide(depths, denominator, out=ones, where=denominator != 0)
            let ratio = if self.denominator != 0.0 { *value / self.denominator } else { 1.0 };
            *value = -(2f64.powf(-ratio));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(n: u64) -> RawNode {
        RawNode {
            feature: 0,
            threshold: -2.0,
            left: LEAF,
            right: LEAF,
            missing_go_to_left: true,
            n_node_samples: n,
        }
    }

    fn split(feature: u32, threshold: f64, left: u32, right: u32, nan_left: bool) -> RawNode {
        RawNode { feature, threshold, left, right, missing_go_to_left: nan_left, n_node_samples: 0 }
    }

    /// Root splits feature 0 at 0.5; the left child splits feature 1 at 10.0.
    ///   node 0: x0 <= 0.5 ? node 1 : node 4 (leaf, 5 samples)
    ///   node 1: x1 <= 10  ? node 2 (leaf, 1 sample) : node 3 (leaf, 2 samples)
    fn hand_forest() -> IsolationForest {
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

    fn expected_score(path_term: f64) -> f64 {
        -(2f64.powf(-(path_term / (1.0 * average_path_length(8.0)))))
    }

    #[test]
    fn c_matches_scikit_learn() {
        assert_eq!(average_path_length(0.0), 0.0);
        assert_eq!(average_path_length(1.0), 0.0);
        assert_eq!(average_path_length(2.0), 1.0);
        // 2 * (ln(255) + gamma) - 2 * 255 / 256 in scikit-learn's order of operations.
        let c256 = 2.0 * (255f64.ln() + EULER_GAMMA) - 2.0 * 255.0 / 256.0;
        assert_eq!(average_path_length(256.0), c256);
        // The value Python prints for the same expression.
        assert_eq!(c256, 10.244_770_920_119_917);
    }

    #[test]
    fn path_lengths_and_ties_follow_hand_computed_trees() {
        let forest = hand_forest();
        // Leaf terms: node 2 at depth 3 with c(1)=0 -> 2; node 3 -> (3 + 1) - 1 = 3;
        // node 4 at depth 2 with c(5) -> (2 + c(5)) - 1.
        let c5 = average_path_length(5.0);
        let x0 = [0.5, 0.5, 0.6, 0.0];
        // 10.0 exactly goes left (<=), 10.000001 rounds to a float32 above 10 and goes right.
        let x1 = [10.0, 10.000_001, 0.0, 11.0];
        let scored = forest.score(&[&x0, &x1]).unwrap();
        let expected = [
            expected_score(2.0),
            expected_score(3.0),
            expected_score((2.0 + c5) - 1.0),
            expected_score(3.0),
        ];
        assert_eq!(scored.score, expected);
        for (d, s) in scored.decision.iter().zip(&scored.score) {
            assert_eq!(*d, s + 0.5);
        }
    }

    #[test]
    fn compares_as_float32_against_f64_thresholds() {
        // Threshold 0.5 + 1e-12 in f64: an f64 input 0.5 + 2e-12 is above it, but as float32
        // it rounds to exactly 0.5 and goes left, as in scikit-learn.
        let tree = vec![split(0, 0.5 + 1e-12, 1, 2, false), leaf(1), leaf(4)];
        let forest = IsolationForest::try_from(RawForest {
            n_features: 1,
            max_samples: 4,
            offset: -0.5,
            trees: vec![tree],
        })
        .unwrap();
        let left = forest.score(&[&[0.5 + 2e-12]]).unwrap().score[0];
        let right = forest.score(&[&[0.5001]]).unwrap().score[0];
        let c4 = average_path_length(4.0);
        assert_eq!(left, -(2f64.powf(-((1.0 + 1.0 - 1.0) / c4))));
        assert_eq!(right, -(2f64.powf(-(((2.0 + c4) - 1.0) / c4))));
    }

    #[test]
    fn infinities_nan_and_out_of_range_values() {
        let forest = hand_forest();
        // +inf goes right at the root; -inf goes left; 1e39 overflows float32 to +inf.
        // NaN at the root goes right (missing_go_to_left = false); NaN at node 1 goes left.
        let x0 = [f64::INFINITY, f64::NEG_INFINITY, 1e39, f64::NAN, -1e39, 0.0];
        let x1 = [0.0, 0.0, 0.0, 0.0, f64::NAN, 1e39];
        let s = forest.score(&[&x0, &x1]).unwrap().score;
        let c5 = average_path_length(5.0);
        assert_eq!(s[0], expected_score((2.0 + c5) - 1.0));
        assert_eq!(s[1], expected_score(2.0));
        assert_eq!(s[2], expected_score((2.0 + c5) - 1.0));
        assert_eq!(s[3], expected_score((2.0 + c5) - 1.0));
        assert_eq!(s[4], expected_score(2.0));
        assert_eq!(s[5], expected_score(3.0));
        // Subnormals and signed zeros are ordinary values: -0.0 <= 0.5.
        let s = forest.score(&[&[-0.0, 1e-310], &[5e-324, 0.0]]).unwrap().score;
        assert_eq!(s, vec![expected_score(2.0), expected_score(2.0)]);
    }

    #[test]
    fn sums_trees_in_order_and_normalises_by_tree_count() {
        let t1 = vec![split(0, 0.0, 1, 2, true), leaf(1), leaf(3)];
        let t2 = vec![leaf(4)];
        let forest = IsolationForest::try_from(RawForest {
            n_features: 1,
            max_samples: 4,
            offset: -0.5,
            trees: vec![t1, t2],
        })
        .unwrap();
        let s = forest.score(&[&[1.0]]).unwrap().score[0];
        let c3 = average_path_length(3.0);
        let c4 = average_path_length(4.0);
        let sum = 0.0 + ((2.0 + c3) - 1.0) + ((1.0 + c4) - 1.0);
        assert_eq!(s, -(2f64.powf(-(sum / (2.0 * c4)))));
    }

    #[test]
    fn max_samples_one_scores_minus_half() {
        let forest = IsolationForest::try_from(RawForest {
            n_features: 1,
            max_samples: 1,
            offset: -0.5,
            trees: vec![vec![leaf(1)]],
        })
        .unwrap();
        assert_eq!(forest.score(&[&[3.0]]).unwrap().score, vec![-0.5]);
    }

    #[test]
    fn rejects_broken_structures() {
        let ok = hand_forest();
        let raw: RawForest = ok.clone().into();
        let mutate = |f: &dyn Fn(&mut RawForest)| {
            let mut r = raw.clone();
            f(&mut r);
            IsolationForest::try_from(r)
        };
        assert!(mutate(&|r| r.trees[0][0].left = 9).is_err(), "child out of range");
        assert!(mutate(&|r| r.trees[0][1].left = 0).is_err(), "backward edge (cycle)");
        assert!(mutate(&|r| r.trees[0][1].right = 4).is_err(), "two parents");
        assert!(mutate(&|r| r.trees[0][0].feature = 2).is_err(), "feature out of range");
        assert!(mutate(&|r| r.trees[0][0].threshold = f64::NAN).is_err(), "NaN threshold");
        assert!(mutate(&|r| r.trees[0][0].left = LEAF).is_err(), "half leaf");
        assert!(mutate(&|r| r.trees.clear()).is_err(), "no trees");
        assert!(mutate(&|r| r.trees[0].clear()).is_err(), "empty tree");
        assert!(mutate(&|r| r.offset = f64::INFINITY).is_err(), "infinite offset");
        assert!(mutate(&|r| r.n_features = 0).is_err(), "no features");
        // The raw form round-trips.
        assert_eq!(IsolationForest::try_from(raw.clone()).unwrap(), ok);
    }

    #[test]
    fn batch_shape_errors_are_values() {
        let forest = hand_forest();
        assert!(matches!(
            forest.score(&[&[1.0]]),
            Err(DetectorError::FeatureCount { expected: 2, got: 1 })
        ));
        assert!(matches!(
            forest.score(&[&[1.0], &[1.0, 2.0]]),
            Err(DetectorError::RaggedColumns { .. })
        ));
    }

    /// The plainest reading of scikit-learn's algorithm, on the raw (stored) form: one row at a
    /// time, each tree walked from its root to a leaf.
    fn reference_scores(raw: &RawForest, rows: &[Vec<f64>]) -> Vec<f64> {
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
                    sum +=
                        (nodes_on_path + average_path_length(tree[i].n_node_samples as f64)) - 1.0;
                }
                -(2f64.powf(-(sum / denominator)))
            })
            .collect()
    }

    proptest::proptest! {
        /// The interleaved flat kernel gives the reference's scores bit for bit, for any batch
        /// size (partial lane blocks) and values including NaN, infinities and huge magnitudes.
        #[test]
        fn flat_kernel_equals_reference_traversal(
            seed in 0u64..1000,
            rows in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::prop_oneof![
                        8 => -3.0f64..3.0,
                        1 => proptest::sample::select(vec![
                            f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e39, -1e39, 0.0, -0.0, 5e-324,
                        ]),
                    ],
                    3,
                ),
                1..40,
            ),
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let train: Vec<Vec<f64>> =
                (0..3).map(|_| (0..200).map(|_| rng.random::<f64>() * 4.0 - 2.0).collect()).collect();
            let refs: Vec<&[f64]> = train.iter().map(Vec::as_slice).collect();
            let forest = crate::IsolationForestParams { n_estimators: 7, seed, ..Default::default() }
                .check()
                .unwrap()
                .fit(&refs)
                .unwrap();
            let columns: Vec<Vec<f64>> = (0..3).map(|f| rows.iter().map(|r| r[f]).collect()).collect();
            let column_refs: Vec<&[f64]> = columns.iter().map(Vec::as_slice).collect();
            let got = forest.score(&column_refs).unwrap().score;
            let expected = reference_scores(&forest.clone().into(), &rows);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            proptest::prop_assert_eq!(bits(&got), bits(&expected));
        }
    }
}
