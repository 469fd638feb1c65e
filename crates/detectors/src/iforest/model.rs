//! The fitted forest: a serialisable raw form and a validated flat form that scores.
//!
//! [`RawForest`] is what a model file or a scikit-learn export holds. It becomes an
//! [`IsolationForest`] only through validation (child indices in range and pointing forward,
//! one parent per node, feature indices below the feature count, finite thresholds, bounded sizes),
//! so a corrupt or hostile model is an error value and scoring never indexes out of bounds.

use serde::{Deserialize, Serialize};

use crate::detector::batch_rows;
use crate::iforest::dense::{self, DenseBlock, DenseTree};
use crate::iforest::params::{MAX_ESTIMATORS, MAX_SAMPLES_PER_TREE};
use crate::{Detector, DetectorError};

/// Marks a leaf in [`RawNode::left`] and [`RawNode::right`], as scikit-learn's `TREE_LEAF` (-1).
pub const LEAF: u32 = u32::MAX;

/// Upper bound on features per model: far above any sensor count, and below the 15 bits a
/// feature index has in the stored form.
const MAX_FEATURES: u32 = (1 << 15) - 1;
/// Upper bound on nodes per tree: a tree over `MAX_SAMPLES_PER_TREE` rows has fewer.
const MAX_NODES_PER_TREE: usize = 2 * MAX_SAMPLES_PER_TREE;
/// Upper bound on nodes per forest (about 800 MB in memory): a bigger file is hostile, not a model.
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

/// A node of the scoring layout: 16 bytes, four to a cache line.
///
/// Trees are kept in pre-order (a node's left child is the next node). A leaf names itself as
/// both children and has a NaN threshold, so every input "goes right" and stays: rows can all
/// take a tree's height in steps, without a branch on "is this a leaf" (see `walk_block`).
/// The next node is *loaded* from `children[goes_right]` rather than selected: the compiler
/// cannot turn a data-dependent load into a branch, and a split's outcome is a coin flip that
/// a branch predictor would miss half the time (measured: 4x slower when it did).
#[derive(Debug, Clone, Copy)]
struct Node {
    /// The largest f32 not above the f64 threshold: inputs are compared as f32, and for any f32
    /// `x`, `f64::from(x) <= t` exactly when `x <= floor32(t)`, so no comparison changes.
    threshold: f32,
    /// Feature index, with [`NAN_LEFT`] set when a NaN goes left.
    feature: u32,
    /// Absolute indices of the left and right child. A leaf: its number among the forest's
    /// leaves (an index into the leaf arrays; traversal never takes a leaf's left child), then
    /// itself.
    children: [u32; 2],
}

impl Node {
    /// The right child's index (a leaf: itself).
    fn right(&self) -> u32 {
        self.children[1]
    }

    /// The leaf number of a leaf (see `children`).
    fn leaf_number(&self) -> usize {
        self.children[0] as usize
    }
}

/// Bitwise equality: leaves hold NaN thresholds, which `==` on floats would never match.
impl PartialEq for Node {
    fn eq(&self, other: &Self) -> bool {
        self.threshold.to_bits() == other.threshold.to_bits()
            && self.feature == other.feature
            && self.children == other.children
    }
}

/// Set in [`Node::feature`] when a NaN input goes left at the node.
const NAN_LEFT: u32 = 1 << 31;

/// Rows walked through one tree together: independent traversals overlap their memory latency.
const LANES: usize = 8;
/// Rows scored together by every tree (their f32 inputs: 8 features x 512 rows = 16 KiB).
const BLOCK_ROWS: usize = 512;

/// A validated IsolationForest, ready to score.
///
/// It is stored in a compact binary form (see `encode`), not field by field: a model of 100
/// trees decodes in one pass over about 230 KB, straight into the scoring layout.
#[derive(Debug, Clone, PartialEq)]
pub struct IsolationForest {
    n_features: u32,
    max_samples: u64,
    offset: f64,
    /// Absolute index of each tree's root; tree `t` spans `roots[t]..roots[t + 1]`.
    roots: Vec<u32>,
    /// Edges on each tree's longest root-to-leaf path.
    heights: Vec<u32>,
    nodes: Vec<Node>,
    /// Per leaf: its path term `(path_nodes + c(n_node_samples)) - 1`, as scikit-learn
    /// computes it.
    leaf_values: Vec<f64>,
    /// Per leaf: the training rows that reached it, kept so that the model re-encodes to the
    /// same bytes.
    leaf_samples: Vec<u64>,
    /// `n_trees * c(max_samples)`, the normaliser of the path-length sum.
    denominator: f64,
    /// The same trees in the complete-tree layout (see `dense.rs`), when every tree is shallow
    /// enough and the features few enough: the faster kernel.
    dense: Option<Vec<DenseTree>>,
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

/// The largest f32 that is not above `t` (see [`Node::threshold`]).
fn floor_f32(t: f64) -> f32 {
    let nearest = t as f32;
    if f64::from(nearest) > t { nearest.next_down() } else { nearest }
}

/// `c(n)` for leaf sizes, memoised: leaves repeat a few small sizes, and `ln` is the costliest
/// step of loading a model.
struct PathLengths(Vec<f64>);

impl PathLengths {
    const CACHED: usize = 1024;

    fn new() -> Self {
        Self(vec![f64::NAN; Self::CACHED])
    }

    fn get(&mut self, n: u64) -> f64 {
        match self.0.get_mut(n as usize) {
            Some(slot) if slot.is_nan() => {
                *slot = average_path_length(n as f64);
                *slot
            }
            Some(slot) => *slot,
            None => average_path_length(n as f64),
        }
    }
}

/// Builds the scoring layout one pre-order node at a time, checking the structure as it goes.
///
/// A full binary tree is determined by its pre-order sequence of "internal" and "leaf" marks:
/// after an internal node comes its left child; after a leaf, the right child of the nearest
/// ancestor whose right subtree has not started. The builder keeps those ancestors on a stack,
/// which gives each node its depth and each internal node its right child.
struct TreeBuilder<'a> {
    forest: &'a mut IsolationForest,
    lengths: &'a mut PathLengths,
    tree: usize,
    /// Internal nodes waiting for their right child, with their depth in path nodes and their
    /// slot in the complete-tree layout.
    waiting: Vec<(usize, u32, usize)>,
    /// Path nodes from the root to the next node; 0 once the tree is complete.
    next_depth: u32,
    /// The next node's slot in the complete-tree layout (heap order).
    next_slot: usize,
    height: u32,
}

impl<'a> TreeBuilder<'a> {
    fn new(forest: &'a mut IsolationForest, lengths: &'a mut PathLengths, tree: usize) -> Self {
        forest.roots.push(forest.nodes.len() as u32);
        if let Some(trees) = &mut forest.dense {
            trees.push(DenseTree::new());
        }
        Self { forest, lengths, tree, waiting: Vec::new(), next_depth: 1, next_slot: 0, height: 0 }
    }

    /// The tree's complete-tree layout, while the forest still fits it: a node `depth` path
    /// nodes deep fits if it is a leaf at most `HEIGHT` edges down, or a split above that.
    fn dense_tree(&mut self, depth: u32, leaf: bool) -> Option<&mut DenseTree> {
        let edges = depth - 1;
        if edges > dense::HEIGHT || (!leaf && edges == dense::HEIGHT) {
            self.forest.dense = None;
        }
        self.forest.dense.as_mut().and_then(|trees| trees.last_mut())
    }

    fn invalid<T>(&self, msg: String) -> Result<T, DetectorError> {
        Err(DetectorError::InvalidModel(format!("tree {}: {msg}", self.tree)))
    }

    fn start_node(&mut self) -> Result<(usize, u32), DetectorError> {
        if self.next_depth == 0 {
            return self.invalid("nodes after the last leaf".into());
        }
        if self.forest.nodes.len() >= MAX_NODES_PER_FOREST {
            return self.invalid(format!("more than {MAX_NODES_PER_FOREST} nodes in the forest"));
        }
        Ok((self.forest.nodes.len(), self.next_depth))
    }

    fn internal(
        &mut self,
        feature: u32,
        threshold: f32,
        nan_left: bool,
    ) -> Result<(), DetectorError> {
        let (at, depth) = self.start_node()?;
        if feature >= self.forest.n_features {
            let n = self.forest.n_features;
            return self.invalid(format!("node {at} splits on feature {feature} of {n}"));
        }
        if threshold.is_nan() {
            return self.invalid(format!("node {at} has a NaN threshold"));
        }
        let slot = self.next_slot;
        if let Some(tree) = self.dense_tree(depth, false) {
            tree.set_split(slot, feature, threshold, nan_left);
        }
        let feature = feature | if nan_left { NAN_LEFT } else { 0 };
        // The right child is not known yet: filled in when the left subtree ends.
        let children = [(at + 1) as u32, at as u32];
        self.forest.nodes.push(Node { threshold, feature, children });
        self.waiting.push((at, depth, slot));
        self.next_depth = depth + 1;
        self.next_slot = 2 * slot + 1;
        Ok(())
    }

    fn leaf(&mut self, samples: u64) -> Result<(), DetectorError> {
        let (at, depth) = self.start_node()?;
        let children = [self.forest.leaf_values.len() as u32, at as u32];
        self.forest.nodes.push(Node { threshold: f32::NAN, feature: 0, children });
        let value = (f64::from(depth) + self.lengths.get(samples)) - 1.0;
        let slot = self.next_slot;
        if let Some(tree) = self.dense_tree(depth, true) {
            tree.set_leaf(slot, depth - 1, value);
        }
        self.forest.leaf_values.push(value);
        self.forest.leaf_samples.push(samples);
        self.height = self.height.max(depth - 1);
        (self.next_depth, self.next_slot) = match self.waiting.pop() {
            Some((parent, parent_depth, parent_slot)) => {
                self.forest.nodes[parent].children[1] = (at + 1) as u32;
                (parent_depth + 1, 2 * parent_slot + 2)
            }
            None => (0, 0),
        };
        Ok(())
    }

    fn finish(self) -> Result<(), DetectorError> {
        if self.next_depth != 0 {
            return self.invalid("ends before every internal node has two children".into());
        }
        self.forest.heights.push(self.height);
        Ok(())
    }
}

impl IsolationForest {
    /// An empty forest with checked header fields, for the builders.
    fn empty(
        n_features: u32,
        max_samples: u64,
        offset: f64,
        trees: usize,
    ) -> Result<Self, DetectorError> {
        let invalid = |msg: String| Err(DetectorError::InvalidModel(msg));
        if n_features == 0 || n_features > MAX_FEATURES {
            return invalid(format!("n_features {n_features} is outside 1..={MAX_FEATURES}"));
        }
        if trees == 0 || trees > MAX_ESTIMATORS {
            return invalid(format!("{trees} trees is outside 1..={MAX_ESTIMATORS}"));
        }
        if max_samples == 0 {
            return invalid("max_samples is 0".into());
        }
        if !offset.is_finite() {
            return invalid(format!("offset {offset} is not finite"));
        }
        Ok(Self {
            n_features,
            max_samples,
            offset,
            roots: Vec::with_capacity(trees),
            heights: Vec::with_capacity(trees),
            nodes: Vec::new(),
            leaf_values: Vec::new(),
            leaf_samples: Vec::new(),
            denominator: trees as f64 * average_path_length(max_samples as f64),
            // Filled by the builder while every tree fits the layout (see `dense.rs`).
            dense: (n_features as usize <= dense::FEATURES).then(|| Vec::with_capacity(trees)),
        })
    }
}

impl TryFrom<RawForest> for IsolationForest {
    type Error = DetectorError;

    /// Validates scikit-learn's layout (children after their parent and in range, one parent
    /// per node, features in range, finite thresholds) and re-lays each tree out in pre-order.
    fn try_from(raw: RawForest) -> Result<Self, Self::Error> {
        let total: usize = raw.trees.iter().map(Vec::len).sum();
        if total > MAX_NODES_PER_FOREST {
            return Err(DetectorError::InvalidModel(format!(
                "{total} nodes exceed the limit of {MAX_NODES_PER_FOREST}"
            )));
        }
        let mut forest =
            IsolationForest::empty(raw.n_features, raw.max_samples, raw.offset, raw.trees.len())?;
        forest.nodes.reserve(total);
        forest.leaf_values.reserve(total / 2 + 1);
        forest.leaf_samples.reserve(total / 2 + 1);
        let mut lengths = PathLengths::new();
        for (t, tree) in raw.trees.iter().enumerate() {
            check_raw_tree(t, tree, raw.n_features)?;
            let mut builder = TreeBuilder::new(&mut forest, &mut lengths, t);
            // Pre-order: a node, then its left subtree, then its right subtree.
            let mut stack = vec![0usize];
            while let Some(i) = stack.pop() {
                let node = &tree[i];
                if node.left == LEAF {
                    builder.leaf(node.n_node_samples)?;
                } else {
                    let threshold = floor_f32(node.threshold);
                    builder.internal(node.feature, threshold, node.missing_go_to_left)?;
                    stack.push(node.right as usize);
                    stack.push(node.left as usize);
                }
            }
            builder.finish()?;
        }
        Ok(forest)
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
        let mut trees = Vec::with_capacity(forest.roots.len());
        for t in 0..forest.roots.len() {
            let span = forest.tree_span(t);
            let root = span.start;
            let tree = span
                .map(|i| {
                    let node = &forest.nodes[i];
                    let leaf = node.right() as usize == i;
                    RawNode {
                        feature: if leaf { 0 } else { node.feature & !NAN_LEFT },
                        threshold: if leaf { -2.0 } else { f64::from(node.threshold) },
                        left: if leaf { LEAF } else { (i + 1 - root) as u32 },
                        right: if leaf { LEAF } else { node.right() - root as u32 },
                        missing_go_to_left: !leaf && node.feature & NAN_LEFT != 0,
                        n_node_samples: if leaf {
                            forest.leaf_samples[node.leaf_number()]
                        } else {
                            0
                        },
                    }
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

/// The stored form's node codes: a leaf, or `feature | CODE_NAN_LEFT` for an internal node.
const CODE_LEAF: u16 = u16::MAX;
const CODE_NAN_LEFT: u16 = 1 << 15;

/// Reads the stored form; every read is bounds-checked and every failure names what is wrong.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DetectorError> {
        let end = self.at.checked_add(N).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(DetectorError::InvalidModel(format!(
                "forest data ends at byte {} of a {N}-byte field",
                self.bytes.len()
            )));
        };
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.at..end]);
        self.at = end;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, DetectorError> {
        self.take().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, DetectorError> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, DetectorError> {
        self.take().map(u64::from_le_bytes)
    }

    /// An unsigned LEB128 value of at most 10 bytes.
    fn varint(&mut self) -> Result<u64, DetectorError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let [byte] = self.take()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DetectorError::InvalidModel("a leaf size runs over 10 bytes".into()))
    }
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

impl IsolationForest {
    /// The stored form, little-endian:
    /// `n_features: u32, max_samples: u64, offset: f64, n_trees: u32`, then per tree
    /// `n_nodes: u32` and its nodes in pre-order: an internal node is `code: u16` (the feature,
    /// plus bit 15 when a NaN goes left) and `threshold: f32`; a leaf is `0xFFFF` and its
    /// training rows as LEB128. About 6 bytes per internal node and 3 per leaf.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.nodes.len() * 5);
        out.extend_from_slice(&self.n_features.to_le_bytes());
        out.extend_from_slice(&self.max_samples.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&(self.roots.len() as u32).to_le_bytes());
        for t in 0..self.roots.len() {
            let span = self.tree_span(t);
            out.extend_from_slice(&(span.len() as u32).to_le_bytes());
            for i in span {
                let node = &self.nodes[i];
                if node.right() as usize == i {
                    out.extend_from_slice(&CODE_LEAF.to_le_bytes());
                    push_varint(&mut out, self.leaf_samples[node.leaf_number()]);
                } else {
                    let nan = if node.feature & NAN_LEFT != 0 { CODE_NAN_LEFT } else { 0 };
                    let code = (node.feature & !NAN_LEFT) as u16 | nan;
                    out.extend_from_slice(&code.to_le_bytes());
                    out.extend_from_slice(&node.threshold.to_le_bytes());
                }
            }
        }
        out
    }

    /// Decodes and validates the stored form in one pass, straight into the scoring layout.
    fn decode(bytes: &[u8]) -> Result<Self, DetectorError> {
        let mut r = Reader { bytes, at: 0 };
        let n_features = r.u32()?;
        let max_samples = r.u64()?;
        let offset = f64::from_bits(r.u64()?);
        let n_trees = r.u32()? as usize;
        let mut forest = IsolationForest::empty(n_features, max_samples, offset, n_trees)?;
        // Each node takes at least 3 bytes: a size hint that a hostile length cannot inflate.
        let hint = bytes.len() / 3;
        forest.nodes.reserve(hint);
        forest.leaf_values.reserve(hint / 2);
        forest.leaf_samples.reserve(hint / 2);
        let mut lengths = PathLengths::new();
        for t in 0..n_trees {
            let n_nodes = r.u32()? as usize;
            if n_nodes == 0 || n_nodes > MAX_NODES_PER_TREE {
                let msg = format!("tree {t}: {n_nodes} nodes is outside 1..={MAX_NODES_PER_TREE}");
                return Err(DetectorError::InvalidModel(msg));
            }
            let mut builder = TreeBuilder::new(&mut forest, &mut lengths, t);
            for _ in 0..n_nodes {
                match r.u16()? {
                    CODE_LEAF => builder.leaf(r.varint()?)?,
                    code => {
                        let threshold = f32::from_bits(r.u32()?);
                        let feature = u32::from(code & !CODE_NAN_LEFT);
                        builder.internal(feature, threshold, code & CODE_NAN_LEFT != 0)?;
                    }
                }
            }
            builder.finish()?;
        }
        if r.at != bytes.len() {
            let extra = bytes.len() - r.at;
            return Err(DetectorError::InvalidModel(format!("{extra} bytes after the last tree")));
        }
        Ok(forest)
    }
}

impl Serialize for IsolationForest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.encode())
    }
}

impl<'de> Deserialize<'de> for IsolationForest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = IsolationForest;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an IsolationForest in its stored form (bytes)")
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                IsolationForest::decode(v).map_err(E::custom)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                // Formats without a bytes type hand the bytes over as a sequence.
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                IsolationForest::decode(&bytes).map_err(serde::de::Error::custom)
            }
        }
        deserializer.deserialize_bytes(Bytes)
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

    /// The node indices of tree `t`.
    fn tree_span(&self, t: usize) -> std::ops::Range<usize> {
        let start = self.roots[t] as usize;
        let end = self.roots.get(t + 1).map_or(self.nodes.len(), |&r| r as usize);
        start..end
    }

    /// Sum over trees of each row's path term, in tree order, into `sums`.
    ///
    /// Rows go in blocks of `BLOCK_ROWS`: a block's inputs (as f32, scikit-learn's dtype) stay
    /// in the L1 cache while every tree walks it, and each tree's nodes are read once per block.
    /// Each row still adds its trees in order, so the sum is the same as scikit-learn's. Within
    /// a tree, LANES rows advance together for `height` steps (leaves point to themselves),
    /// which turns a chain of dependent loads per row into LANES independent chains.
    fn path_sums(&self, columns: &[&[f64]], sums: &mut [f64]) {
        if let Some(trees) = &self.dense {
            let mut block = DenseBlock::new(sums.len().min(BLOCK_ROWS));
            for (b, block_sums) in sums.chunks_mut(BLOCK_ROWS).enumerate() {
                block_sums.fill(0.0);
                if block.load(columns, b * BLOCK_ROWS, block_sums.len()) {
                    block.walk::<true>(trees, block_sums);
                } else {
                    block.walk::<false>(trees, block_sums);
                }
            }
            return;
        }
        let n_features = columns.len();
        let mut block = vec![0f32; n_features * BLOCK_ROWS];
        for (b, block_sums) in sums.chunks_mut(BLOCK_ROWS).enumerate() {
            let first = b * BLOCK_ROWS;
            let rows = block_sums.len();
            // scikit-learn casts the input to float32 once; values beyond f32 range become
            // +-inf and compare as such, NaN stays NaN and follows the node's NaN direction.
            for (f, column) in columns.iter().enumerate() {
                let dst = &mut block[f * BLOCK_ROWS..f * BLOCK_ROWS + rows];
                for (d, &v) in dst.iter_mut().zip(&column[first..first + rows]) {
                    *d = v as f32;
                }
            }
            block_sums.fill(0.0);
            // NaN inputs are rare: a block without any takes the kernel without NaN handling.
            let has_nan =
                block[..].chunks(BLOCK_ROWS).any(|c| c[..rows].iter().any(|x| x.is_nan()));
            if has_nan {
                self.walk_block::<true>(&block, block_sums);
            } else {
                self.walk_block::<false>(&block, block_sums);
            }
        }
    }

    /// Adds every tree's path term to the sums of one block's rows (`block` holds each feature's
    /// f32 inputs at a stride of `BLOCK_ROWS`). `NAN` selects the kernel that checks for NaN
    /// inputs; without NaN both kernels take the same paths.
    fn walk_block<const NAN: bool>(&self, block: &[f32], sums: &mut [f64]) {
        for (&root, &height) in self.roots.iter().zip(&self.heights) {
            for (g, lane_sums) in sums.chunks_mut(LANES).enumerate() {
                let base = g * LANES;
                // All LANES lanes always walk (a fixed trip count the compiler unrolls); lanes
                // past the last row read stale inputs inside the block and are not added.
                let mut at = [root as usize; LANES];
                for _ in 0..height {
                    for (lane, i) in at.iter_mut().enumerate() {
                        let node = &self.nodes[*i];
                        let feature = (node.feature & !NAN_LEFT) as usize;
                        let x = block[feature * BLOCK_ROWS + base + lane];
                        // NaN compares false, so it goes left only if the node says so; a
                        // leaf's NaN threshold sends everything right, to itself.
                        let mut go_left = x <= node.threshold;
                        if NAN {
                            go_left |= x.is_nan() & (node.feature & NAN_LEFT != 0);
                        }
                        *i = node.children[usize::from(!go_left)] as usize;
                    }
                }
                for (sum, &i) in lane_sums.iter_mut().zip(&at) {
                    *sum += self.leaf_values[self.nodes[i].leaf_number()];
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
        self.path_sums(columns, out);
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

    #[test]
    fn stored_form_round_trips_and_rejects_damage() {
        let forest = hand_forest();
        let bytes = forest.encode();
        // 24 header bytes, 4 for the node count, 2 internal nodes of 6 bytes, 3 leaves of 3.
        assert_eq!(bytes.len(), 24 + 4 + 2 * 6 + 3 * 3);
        assert_eq!(IsolationForest::decode(&bytes).unwrap(), forest);
        for cut in 0..bytes.len() {
            assert!(IsolationForest::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(IsolationForest::decode(&longer).unwrap_err().to_string().contains("after"));
        // The root's code (after 28 header bytes): feature 5 of 2.
        let mut b = bytes.clone();
        b[28..30].copy_from_slice(&5u16.to_le_bytes());
        assert!(IsolationForest::decode(&b).unwrap_err().to_string().contains("feature 5"));
        // A NaN threshold at the root.
        let mut b = bytes.clone();
        b[30..34].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(IsolationForest::decode(&b).unwrap_err().to_string().contains("NaN"));
        // One node fewer than the structure needs, and a leaf where the tree has ended.
        let mut b = bytes.clone();
        b[24..28].copy_from_slice(&4u32.to_le_bytes());
        assert!(IsolationForest::decode(&b).is_err());
        let leaf = [0xff, 0xff, 1];
        let mut b = bytes[..24].to_vec();
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&leaf);
        b.extend_from_slice(&leaf);
        assert!(
            IsolationForest::decode(&b).unwrap_err().to_string().contains("after the last leaf")
        );
    }

    proptest::proptest! {
        /// Rounding a threshold down to f32 changes no comparison of an f32 input.
        #[test]
        fn f32_thresholds_split_every_f32_input_alike(t in proptest::num::f64::ANY, x in proptest::num::f32::ANY) {
            if !t.is_nan() {
                proptest::prop_assert_eq!(f64::from(x) <= t, x <= floor_f32(t));
            }
        }

        /// Every trained forest survives its stored form and the raw layout unchanged.
        #[test]
        fn trained_forests_round_trip(seed in 0u64..500, rows in 2usize..300) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let train: Vec<Vec<f64>> =
                (0..3).map(|_| (0..rows).map(|_| rng.random::<f64>() * 1e3 - 5e2).collect()).collect();
            let refs: Vec<&[f64]> = train.iter().map(Vec::as_slice).collect();
            let forest = crate::IsolationForestParams { n_estimators: 5, seed, ..Default::default() }
                .check()
                .unwrap()
                .fit(&refs)
                .unwrap();
            proptest::prop_assert_eq!(&IsolationForest::decode(&forest.encode()).unwrap(), &forest);
            let raw: RawForest = forest.clone().into();
            proptest::prop_assert_eq!(&IsolationForest::try_from(raw).unwrap(), &forest);
        }
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
            let expected = reference_scores(&forest.clone().into(), &rows);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            // Both kernels: the complete-tree one (these forests are shallow) and the pre-order one.
            proptest::prop_assert!(forest.dense.is_some());
            let got = forest.score(&column_refs).unwrap().score;
            proptest::prop_assert_eq!(bits(&got), bits(&expected));
            let general = IsolationForest { dense: None, ..forest };
            let got = general.score(&column_refs).unwrap().score;
            proptest::prop_assert_eq!(bits(&got), bits(&expected));
        }
    }

    /// Over several blocks (and a partial last one), the complete-tree kernel and the pre-order
    /// kernel agree bit for bit; NaN rows in some blocks take the NaN-aware step there only.
    #[test]
    fn kernels_agree_over_many_blocks() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let train: Vec<Vec<f64>> =
            (0..5).map(|_| (0..2000).map(|_| rng.random::<f64>() * 10.0).collect()).collect();
        let refs: Vec<&[f64]> = train.iter().map(Vec::as_slice).collect();
        let forest = crate::IsolationForestParams { n_estimators: 20, ..Default::default() }
            .check()
            .unwrap()
            .fit(&refs)
            .unwrap();
        let n = 3 * BLOCK_ROWS + 77;
        let mut columns: Vec<Vec<f64>> =
            (0..5).map(|_| (0..n).map(|_| rng.random::<f64>() * 12.0 - 1.0).collect()).collect();
        columns[2][BLOCK_ROWS + 3] = f64::NAN;
        columns[4][n - 1] = f64::NAN;
        let column_refs: Vec<&[f64]> = columns.iter().map(Vec::as_slice).collect();
        assert!(forest.dense.is_some());
        let dense = forest.score(&column_refs).unwrap().score;
        let general = IsolationForest { dense: None, ..forest }.score(&column_refs).unwrap().score;
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&dense), bits(&general));
    }

    /// Deep trees and wide models keep the pre-order layout only.
    #[test]
    fn deep_or_wide_forests_use_the_general_kernel() {
        // A chain of HEIGHT + 1 splits: one leaf deeper than the complete layout holds.
        let depth = dense::HEIGHT + 1;
        let mut tree = Vec::new();
        for d in 0..depth {
            let i = 2 * d;
            tree.push(split(0, f64::from(d), i + 1, i + 2, false));
            tree.push(leaf(1));
        }
        tree.pop();
        tree.push(leaf(1));
        tree.push(leaf(1));
        let raw = RawForest { n_features: 1, max_samples: 1024, offset: -0.5, trees: vec![tree] };
        let deep = IsolationForest::try_from(raw).unwrap();
        assert_eq!(deep.heights, vec![depth]);
        assert!(deep.dense.is_none());
        let wide = RawForest {
            n_features: dense::FEATURES as u32 + 1,
            max_samples: 8,
            offset: -0.5,
            trees: vec![vec![split(dense::FEATURES as u32, 0.5, 1, 2, false), leaf(1), leaf(2)]],
        };
        assert!(IsolationForest::try_from(wide).unwrap().dense.is_none());
        let narrow = IsolationForest::try_from(RawForest {
            n_features: dense::FEATURES as u32,
            max_samples: 8,
            offset: -0.5,
            trees: vec![vec![split(dense::FEATURES as u32 - 1, 0.5, 1, 2, true), leaf(1), leaf(2)]],
        })
        .unwrap();
        assert!(narrow.dense.is_some());
        // The last feature, NaN going left, through the complete-tree kernel.
        let mut columns = vec![vec![0.0; 3]; dense::FEATURES];
        columns[dense::FEATURES - 1] = vec![0.25, 0.75, f64::NAN];
        let refs: Vec<&[f64]> = columns.iter().map(Vec::as_slice).collect();
        let got = narrow.score(&refs).unwrap().score;
        assert_eq!(got[0], got[2]);
        assert_ne!(got[0], got[1]);
    }
}
