//! scikit-learn's array layout of a forest, as training and imports produce it.
//!
//! [`RawForest`] is what a scikit-learn export holds. It becomes an [`IsolationForest`] only
//! through validation (child indices in range and pointing forward, one parent per node, feature
//! indices below the feature count, finite thresholds, bounded sizes), so a corrupt or hostile
//! model is an error value and scoring never indexes out of bounds. The way back
//! ([`RawForest::from`]) rebuilds the layout from the stored form.

use serde::{Deserialize, Serialize};

use crate::DetectorError;
use crate::iforest::model::IsolationForest;
use crate::iforest::stored::{
    CODE_LEAF, CODE_NAN_LEFT, HEADER_LEN, Header, MAX_NODES_PER_FOREST, MAX_NODES_PER_TREE,
    Position, Reader, Sink, Split, floor_f32, invalid, push_varint, walk_stored,
};

/// Marks a leaf in [`RawNode::left`] and [`RawNode::right`], as scikit-learn's `TREE_LEAF` (-1).
pub const LEAF: u32 = u32::MAX;

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

/// A forest in scikit-learn's layout, as training and imports produce it: unvalidated until
/// converted into an [`IsolationForest`].
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

impl TryFrom<RawForest> for IsolationForest {
    type Error = DetectorError;

    /// Validates scikit-learn's layout (children after their parent and in range, one parent
    /// per node, features in range, finite thresholds), writes each tree in pre-order into the
    /// stored form and decodes that: one path builds every forest.
    fn try_from(raw: RawForest) -> Result<Self, Self::Error> {
        let total: usize = raw.trees.iter().map(Vec::len).sum();
        if total > MAX_NODES_PER_FOREST {
            return Err(invalid(format!(
                "{total} nodes exceed the limit of {MAX_NODES_PER_FOREST}"
            )));
        }
        let header = Header {
            n_features: raw.n_features,
            max_samples: raw.max_samples,
            offset: raw.offset,
            n_trees: raw.trees.len(),
        }
        .check()?;
        let mut out = Vec::with_capacity(HEADER_LEN + raw.trees.len() * 4 + total * 5);
        header.write(&mut out);
        for (t, tree) in raw.trees.iter().enumerate() {
            check_raw_tree(t, tree, raw.n_features)?;
            out.extend_from_slice(&(tree.len() as u32).to_le_bytes());
            // Pre-order: a node, then its left subtree, then its right subtree.
            let mut stack = vec![0usize];
            while let Some(i) = stack.pop() {
                let node = &tree[i];
                if node.left == LEAF {
                    out.extend_from_slice(&CODE_LEAF.to_le_bytes());
                    push_varint(&mut out, node.n_node_samples);
                } else {
                    // Below 2^15: `check_raw_tree` and the header check bound it.
                    let nan = if node.missing_go_to_left { CODE_NAN_LEFT } else { 0 };
                    out.extend_from_slice(&(node.feature as u16 | nan).to_le_bytes());
                    out.extend_from_slice(&floor_f32(node.threshold).to_le_bytes());
                    stack.push(node.right as usize);
                    stack.push(node.left as usize);
                }
            }
        }
        Self::decode_owned(out)
    }
}

/// Checks one tree in scikit-learn's layout: the root first, every child after its parent and
/// in range, exactly one parent per non-root node (no cycles, no shared subtrees), features in
/// range, finite thresholds.
fn check_raw_tree(t: usize, tree: &[RawNode], n_features: u32) -> Result<(), DetectorError> {
    let invalid = |msg: String| Err(DetectorError::InvalidModel(format!("tree {t}: {msg}")));
    if tree.is_empty() || tree.len() > MAX_NODES_PER_TREE {
        return invalid(format!("{} nodes is outside 1..={MAX_NODES_PER_TREE}", tree.len()));
    }
    let mut has_parent = vec![false; tree.len()];
    has_parent[0] = true;
    for (i, node) in tree.iter().enumerate() {
        if !has_parent[i] {
            return invalid(format!("node {i} is not reachable from the root"));
        }
        if node.left == LEAF && node.right == LEAF {
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
            if has_parent[c] {
                return invalid(format!("node {c} has more than one parent"));
            }
            has_parent[c] = true;
        }
        if node.feature >= n_features {
            return invalid(format!("node {i} splits on feature {} of {n_features}", node.feature));
        }
        if !node.threshold.is_finite() {
            return invalid(format!("node {i} has threshold {}", node.threshold));
        }
    }
    Ok(())
}

impl From<IsolationForest> for RawForest {
    /// The forest in scikit-learn's layout, in pre-order, with the f32 thresholds it compares
    /// against (they split every f32 input as the original thresholds did). Internal nodes do
    /// not keep their sample counts, which scoring never reads.
    fn from(forest: IsolationForest) -> Self {
        let mut sink = RawSink { trees: Vec::with_capacity(forest.n_trees), root: 0 };
        let mut r = Reader { bytes: &forest.stored, at: HEADER_LEN };
        // The stored form decoded once already, so this walk cannot fail; if it somehow did,
        // the trees walked so far are returned and converting them back reports the damage.
        let _ = walk_stored(&mut r, forest.n_trees, forest.n_features, &mut sink);
        RawForest {
            n_features: forest.n_features,
            max_samples: forest.max_samples,
            offset: forest.offset,
            trees: sink.trees,
        }
    }
}

/// scikit-learn's layout, rebuilt from the stored form (for [`RawForest::from`]).
struct RawSink {
    trees: Vec<Vec<RawNode>>,
    /// Forest-wide index of the current tree's root.
    root: u32,
}

impl RawSink {
    fn push(&mut self, at: Position, index: u32, node: RawNode) {
        if let Some(tree) = self.trees.last_mut() {
            if let Some(parent) = at.right_of.and_then(|p| tree.get_mut((p - self.root) as usize)) {
                parent.right = index - self.root;
            }
            tree.push(node);
        }
    }
}

impl Sink for RawSink {
    fn start_tree(&mut self, first: u32) {
        self.root = first;
        self.trees.push(Vec::new());
    }

    fn split(&mut self, at: Position, index: u32, split: Split) -> bool {
        let Split { feature, threshold, nan_left } = split;
        let left = index + 1 - self.root;
        let node = RawNode {
            feature,
            threshold: f64::from(threshold),
            left,
            right: left,
            missing_go_to_left: nan_left,
            n_node_samples: 0,
        };
        self.push(at, index, node);
        true
    }

    fn leaf(&mut self, at: Position, index: u32, _: f64, samples: u64) -> bool {
        let node = RawNode {
            feature: 0,
            threshold: -2.0,
            left: LEAF,
            right: LEAF,
            missing_go_to_left: false,
            n_node_samples: samples,
        };
        self.push(at, index, node);
        true
    }

    fn end_tree(&mut self, _height: u32) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iforest::testing::hand_forest;

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
}
