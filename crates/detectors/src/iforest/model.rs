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

/// A node of the pre-order scoring layout: 16 bytes, four to a cache line.
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
    /// leaves (an index into `leaf_values`; traversal never takes a leaf's left child), then
    /// itself.
    children: [u32; 2],
}

/// Set in [`Node::feature`] when a NaN input goes left at the node.
const NAN_LEFT: u32 = 1 << 31;

/// Rows walked through one tree together: independent traversals overlap their memory latency.
const LANES: usize = 8;
/// Rows scored together by every tree (their f32 inputs: 8 features x 512 rows = 16 KiB).
const BLOCK_ROWS: usize = 512;

/// A validated IsolationForest, ready to score.
///
/// The stored form (see `stored`) is the forest's one source of truth: the model keeps those
/// bytes (equality, re-encoding and the raw layout read them) beside a single scoring layout
/// decoded from them in one pass. That layout is the complete-tree one (`dense.rs`) when every
/// tree fits it, which scikit-learn's default forests do, and the pre-order one otherwise.
/// Keeping one layout, not both, halves the work of loading a model.
#[derive(Debug, Clone)]
pub struct IsolationForest {
    n_features: u32,
    max_samples: u64,
    offset: f64,
    n_trees: usize,
    n_nodes: usize,
    /// `n_trees * c(max_samples)`, the normaliser of the path-length sum.
    denominator: f64,
    /// The stored form these fields and the layout were decoded from, little-endian:
    /// `n_features: u32, max_samples: u64, offset: f64, n_trees: u32`, then per tree
    /// `n_nodes: u32` and its nodes in pre-order: an internal node is `code: u16` (the feature,
    /// plus bit 15 when a NaN goes left) and `threshold: f32`; a leaf is `0xFFFF` and its
    /// training rows as LEB128. About 6 bytes per internal node and 3 per leaf.
    stored: Vec<u8>,
    scoring: Scoring,
}

/// Two forests are equal when their stored forms are: everything else is decoded from them.
impl PartialEq for IsolationForest {
    fn eq(&self, other: &Self) -> bool {
        self.stored == other.stored
    }
}

/// The scoring layout of a forest.
#[derive(Debug, Clone)]
enum Scoring {
    /// Every tree at most `dense::HEIGHT` deep, at most `dense::FEATURES` features.
    Dense(Vec<DenseTree>),
    /// Any forest.
    PreOrder(PreOrder),
}

/// The general layout: all trees' nodes in one array, each tree in pre-order.
#[derive(Debug, Clone, Default)]
struct PreOrder {
    /// Absolute index of each tree's root.
    roots: Vec<u32>,
    /// Edges on each tree's longest root-to-leaf path: the steps every row takes.
    heights: Vec<u32>,
    nodes: Vec<Node>,
    /// Per leaf: its path term `(path_nodes + c(n_node_samples)) - 1`, as scikit-learn
    /// computes it.
    leaf_values: Vec<f64>,
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

/// Where the next node of a tree sits, as the pre-order walk of the stored form tracks it.
///
/// A full binary tree is determined by its pre-order sequence of "split" and "leaf" marks:
/// after a split comes its left child; after a leaf, the right child of the nearest split whose
/// right subtree has not started. The walk keeps those splits' right children on a stack, which
/// gives every node its depth, its heap slot and, for a right child, its parent.
#[derive(Debug, Clone, Copy)]
struct Position {
    /// Edges from the root.
    depth: u32,
    /// The slot in heap order (children of `i` at `2i + 1`, `2i + 2`); wraps, and means
    /// nothing, below the depth the complete-tree layout holds.
    slot: usize,
    /// For a right child: the forest-wide index of its parent split.
    right_of: Option<u32>,
}

impl Position {
    fn children(self, index: u32) -> (Position, Position) {
        let depth = self.depth + 1;
        let left = self.slot.wrapping_mul(2).wrapping_add(1);
        (
            Position { depth, slot: left, right_of: None },
            Position { depth, slot: left.wrapping_add(1), right_of: Some(index) },
        )
    }
}

/// A split as the walk hands it to a [`Sink`]: its feature (checked below the model's
/// feature count), f32 threshold (not NaN) and NaN direction.
#[derive(Debug, Clone, Copy)]
struct Split {
    feature: u32,
    threshold: f32,
    nan_left: bool,
}

/// A scoring (or export) layout, built node by node by [`walk_stored`] in pre-order.
/// `index` is the node's forest-wide pre-order index. `split` and `leaf` return `false` when
/// the layout cannot hold the node; the walk then stops (and the caller picks another layout).
trait Sink {
    fn start_tree(&mut self, first: u32);
    fn split(&mut self, at: Position, index: u32, split: Split) -> bool;
    fn leaf(&mut self, at: Position, index: u32, value: f64, samples: u64) -> bool;
    fn end_tree(&mut self, height: u32);
}

impl Sink for Vec<DenseTree> {
    fn start_tree(&mut self, _first: u32) {
        self.push(DenseTree::new());
    }

    fn split(&mut self, at: Position, _: u32, split: Split) -> bool {
        let Split { feature, threshold, nan_left } = split;
        // A split at the last level would put its children beyond the layout.
        if at.depth >= dense::HEIGHT {
            return false;
        }
        if let Some(tree) = self.last_mut() {
            tree.set_split(at.slot, feature, threshold, nan_left);
        }
        true
    }

    fn leaf(&mut self, at: Position, _: u32, value: f64, _: u64) -> bool {
        if at.depth > dense::HEIGHT {
            return false;
        }
        if let Some(tree) = self.last_mut() {
            tree.set_leaf(at.slot, at.depth, value);
        }
        true
    }

    fn end_tree(&mut self, _height: u32) {}
}

impl PreOrder {
    /// Points a right child's parent at it (the parent was pushed with a placeholder).
    fn link(&mut self, at: Position, index: u32) {
        if let Some(parent) = at.right_of.and_then(|p| self.nodes.get_mut(p as usize)) {
            parent.children[1] = index;
        }
    }
}

impl Sink for PreOrder {
    fn start_tree(&mut self, first: u32) {
        self.roots.push(first);
    }

    fn split(&mut self, at: Position, index: u32, split: Split) -> bool {
        let Split { feature, threshold, nan_left } = split;
        self.link(at, index);
        let feature = feature | if nan_left { NAN_LEFT } else { 0 };
        // The right child is not known yet: `link` fills it in when the left subtree ends.
        self.nodes.push(Node { threshold, feature, children: [index + 1, index] });
        true
    }

    fn leaf(&mut self, at: Position, index: u32, value: f64, _: u64) -> bool {
        self.link(at, index);
        let children = [self.leaf_values.len() as u32, index];
        self.nodes.push(Node { threshold: f32::NAN, feature: 0, children });
        self.leaf_values.push(value);
        true
    }

    fn end_tree(&mut self, height: u32) {
        self.heights.push(height);
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

#[cold]
fn invalid(msg: String) -> DetectorError {
    DetectorError::InvalidModel(msg)
}

#[cold]
fn invalid_tree(t: usize, msg: &str) -> DetectorError {
    DetectorError::InvalidModel(format!("tree {t}: {msg}"))
}

/// The stored form's header: `n_features: u32, max_samples: u64, offset: f64, n_trees: u32`.
const HEADER_LEN: usize = 24;
/// Where the offset sits in the header.
const OFFSET_AT: std::ops::Range<usize> = 12..20;

/// The stored form's header fields, checked.
struct Header {
    n_features: u32,
    max_samples: u64,
    offset: f64,
    n_trees: usize,
}

impl Header {
    fn check(self) -> Result<Self, DetectorError> {
        let Header { n_features, max_samples, offset, n_trees } = self;
        if n_features == 0 || n_features > MAX_FEATURES {
            return Err(invalid(format!("n_features {n_features} is outside 1..={MAX_FEATURES}")));
        }
        if n_trees == 0 || n_trees > MAX_ESTIMATORS {
            return Err(invalid(format!("{n_trees} trees is outside 1..={MAX_ESTIMATORS}")));
        }
        if max_samples == 0 {
            return Err(invalid("max_samples is 0".into()));
        }
        if !offset.is_finite() {
            return Err(invalid(format!("offset {offset} is not finite")));
        }
        Ok(self)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.n_features.to_le_bytes());
        out.extend_from_slice(&self.max_samples.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&(self.n_trees as u32).to_le_bytes());
    }
}

/// Walks the trees of a stored form (after its header) into `sink`, checking the structure as
/// it goes: node counts in bounds, features below `n_features`, no NaN threshold, every split
/// with two children, no node after a tree's last leaf. Returns the forest's node count, or
/// `None` when the sink cannot hold a node.
fn walk_stored<S: Sink>(
    r: &mut Reader<'_>,
    n_trees: usize,
    n_features: u32,
    sink: &mut S,
) -> Result<Option<usize>, DetectorError> {
    let mut lengths = PathLengths::new();
    let mut pending: Vec<Position> = Vec::with_capacity(64);
    let mut index: u32 = 0;
    for t in 0..n_trees {
        let n_nodes = r.u32()? as usize;
        if n_nodes == 0 || n_nodes > MAX_NODES_PER_TREE {
            let msg = format!("{n_nodes} nodes is outside 1..={MAX_NODES_PER_TREE}");
            return Err(invalid_tree(t, &msg));
        }
        if index as usize + n_nodes > MAX_NODES_PER_FOREST {
            let msg = format!("more than {MAX_NODES_PER_FOREST} nodes in the forest");
            return Err(invalid_tree(t, &msg));
        }
        sink.start_tree(index);
        pending.clear();
        let mut next = Some(Position { depth: 0, slot: 0, right_of: None });
        let mut height = 0;
        for _ in 0..n_nodes {
            let Some(at) = next else {
                return Err(invalid_tree(t, "nodes after the last leaf"));
            };
            match r.node()? {
                StoredNode::Leaf(samples) => {
                    // The root counts as one path node.
                    let value = (f64::from(at.depth + 1) + lengths.get(samples)) - 1.0;
                    if !sink.leaf(at, index, value, samples) {
                        return Ok(None);
                    }
                    height = height.max(at.depth);
                    next = pending.pop();
                }
                StoredNode::Split(code, threshold) => {
                    let feature = u32::from(code & !CODE_NAN_LEFT);
                    if feature >= n_features {
                        let msg =
                            format!("node {index} splits on feature {feature} of {n_features}");
                        return Err(invalid_tree(t, &msg));
                    }
                    if threshold.is_nan() {
                        let msg = format!("node {index} has a NaN threshold");
                        return Err(invalid_tree(t, &msg));
                    }
                    let split = Split { feature, threshold, nan_left: code & CODE_NAN_LEFT != 0 };
                    if !sink.split(at, index, split) {
                        return Ok(None);
                    }
                    let (left, right) = at.children(index);
                    pending.push(right);
                    next = Some(left);
                }
            }
            index += 1;
        }
        if next.is_some() {
            return Err(invalid_tree(t, "ends before every internal node has two children"));
        }
        sink.end_tree(height);
    }
    Ok(Some(index as usize))
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

/// The stored form's node codes: a leaf, or `feature | CODE_NAN_LEFT` for an internal node.
const CODE_LEAF: u16 = u16::MAX;
const CODE_NAN_LEFT: u16 = 1 << 15;

/// A node as stored: a leaf's training rows, or a split's code and f32 threshold.
enum StoredNode {
    Leaf(u64),
    Split(u16, f32),
}

/// Reads the stored form; every read is bounds-checked and every failure names what is wrong.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    #[inline]
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DetectorError> {
        match self.bytes.get(self.at..).and_then(|rest| rest.first_chunk::<N>()) {
            Some(out) => {
                self.at += N;
                Ok(*out)
            }
            None => Err(invalid(format!(
                "forest data ends at byte {} of a {N}-byte field",
                self.bytes.len()
            ))),
        }
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

    /// The next node: a leaf's training rows, or a split's code and threshold.
    #[inline(always)]
    fn node(&mut self) -> Result<StoredNode, DetectorError> {
        // Fast path: a split, or a leaf of fewer than 128 rows (nearly every leaf), with the
        // node's largest size left in the input: one bounds check instead of three.
        if let Some(&[c0, c1, b2, b3, b4, b5]) = self.bytes.get(self.at..self.at + 6) {
            let code = u16::from_le_bytes([c0, c1]);
            if code != CODE_LEAF {
                self.at += 6;
                return Ok(StoredNode::Split(code, f32::from_le_bytes([b2, b3, b4, b5])));
            }
            if b2 < 0x80 {
                self.at += 3;
                return Ok(StoredNode::Leaf(u64::from(b2)));
            }
        }
        match self.u16()? {
            CODE_LEAF => Ok(StoredNode::Leaf(self.varint()?)),
            code => Ok(StoredNode::Split(code, f32::from_bits(self.u32()?))),
        }
    }

    /// An unsigned LEB128 value of at most 10 bytes.
    #[inline]
    fn varint(&mut self) -> Result<u64, DetectorError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let [byte] = self.take()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(invalid("a leaf size runs over 10 bytes".into()))
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
    /// Decodes and validates the stored form in one pass, straight into the scoring layout.
    fn decode(bytes: &[u8]) -> Result<Self, DetectorError> {
        Self::decode_owned(bytes.to_vec())
    }

    fn decode_owned(stored: Vec<u8>) -> Result<Self, DetectorError> {
        Self::decode_as(stored, true)
    }

    /// Decodes `stored`; `dense` allows the complete-tree layout (tests turn it off to compare
    /// the kernels).
    fn decode_as(stored: Vec<u8>, dense: bool) -> Result<Self, DetectorError> {
        let mut r = Reader { bytes: &stored, at: 0 };
        let header = Header {
            n_features: r.u32()?,
            max_samples: r.u64()?,
            offset: f64::from_bits(r.u64()?),
            n_trees: r.u32()? as usize,
        }
        .check()?;
        let trees_at = r.at;
        let mut walked = None;
        if dense && header.n_features as usize <= dense::FEATURES {
            let mut trees = Vec::with_capacity(header.n_trees);
            if let Some(n) = walk_stored(&mut r, header.n_trees, header.n_features, &mut trees)? {
                walked = Some((n, Scoring::Dense(trees)));
            }
        }
        let (n_nodes, scoring) = match walked {
            Some(walked) => walked,
            None => {
                // A deep tree: start over in the general layout. Each node takes at least 3
                // bytes, a size hint that a hostile length cannot inflate.
                r.at = trees_at;
                let hint = stored.len() / 3;
                let mut layout = PreOrder {
                    roots: Vec::with_capacity(header.n_trees),
                    heights: Vec::with_capacity(header.n_trees),
                    nodes: Vec::with_capacity(hint),
                    leaf_values: Vec::with_capacity(hint / 2),
                };
                let n = walk_stored(&mut r, header.n_trees, header.n_features, &mut layout)?;
                (n.unwrap_or(layout.nodes.len()), Scoring::PreOrder(layout))
            }
        };
        if r.at != stored.len() {
            let extra = stored.len() - r.at;
            return Err(invalid(format!("{extra} bytes after the last tree")));
        }
        let Header { n_features, max_samples, offset, n_trees } = header;
        Ok(Self {
            n_features,
            max_samples,
            offset,
            n_trees,
            n_nodes,
            denominator: n_trees as f64 * average_path_length(max_samples as f64),
            stored,
            scoring,
        })
    }
}

impl Serialize for IsolationForest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.stored)
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

            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                IsolationForest::decode_owned(v).map_err(E::custom)
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
                IsolationForest::decode_owned(bytes).map_err(serde::de::Error::custom)
            }
        }
        deserializer.deserialize_bytes(Bytes)
    }
}

impl IsolationForest {
    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.n_trees
    }

    /// Total number of nodes over all trees.
    pub fn n_nodes(&self) -> usize {
        self.n_nodes
    }

    /// scikit-learn's `max_samples_`.
    pub fn max_samples(&self) -> u64 {
        self.max_samples
    }

    /// Returns the same forest with another offset (used when the offset is fitted afterwards).
    pub(crate) fn with_offset(mut self, offset: f64) -> Self {
        self.offset = offset;
        if let Some(field) = self.stored.get_mut(OFFSET_AT) {
            field.copy_from_slice(&offset.to_le_bytes());
        }
        self
    }

    /// Sum over trees of each row's path term, in tree order, into `sums`.
    ///
    /// Rows go in blocks of `BLOCK_ROWS`: a block's inputs (as f32, scikit-learn's dtype) stay
    /// in the L1 cache while every tree walks it, and each tree's nodes are read once per block.
    /// Each row still adds its trees in order, so the sum is the same as scikit-learn's. Within
    /// a tree, LANES rows advance together for `height` steps (leaves point to themselves),
    /// which turns a chain of dependent loads per row into LANES independent chains.
    fn path_sums(&self, columns: &[&[f64]], sums: &mut [f64]) {
        let layout = match &self.scoring {
            Scoring::Dense(trees) => {
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
            Scoring::PreOrder(layout) => layout,
        };
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
                layout.walk_block::<true>(&block, block_sums);
            } else {
                layout.walk_block::<false>(&block, block_sums);
            }
        }
    }
}

impl PreOrder {
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
                    // A leaf's left child is its number among the leaves.
                    *sum += self.leaf_values[self.nodes[i].children[0] as usize];
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

    impl IsolationForest {
        fn is_dense(&self) -> bool {
            matches!(self.scoring, Scoring::Dense(_))
        }

        /// The same forest in the general pre-order layout.
        fn general(&self) -> Self {
            let general = Self::decode_as(self.stored.clone(), false).unwrap();
            assert!(!general.is_dense());
            general
        }
    }

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
        let bytes = forest.stored.clone();
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
            proptest::prop_assert_eq!(&IsolationForest::decode(&forest.stored.clone()).unwrap(), &forest);
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
            proptest::prop_assert!(forest.is_dense());
            let got = forest.score(&column_refs).unwrap().score;
            proptest::prop_assert_eq!(bits(&got), bits(&expected));
            let general = forest.general();
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
        assert!(forest.is_dense());
        let dense = forest.score(&column_refs).unwrap().score;
        let general = forest.general().score(&column_refs).unwrap().score;
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
        let Scoring::PreOrder(layout) = &deep.scoring else { panic!("a deep tree is not dense") };
        assert_eq!(layout.heights, vec![depth]);
        let wide = RawForest {
            n_features: dense::FEATURES as u32 + 1,
            max_samples: 8,
            offset: -0.5,
            trees: vec![vec![split(dense::FEATURES as u32, 0.5, 1, 2, false), leaf(1), leaf(2)]],
        };
        assert!(!IsolationForest::try_from(wide).unwrap().is_dense());
        let narrow = IsolationForest::try_from(RawForest {
            n_features: dense::FEATURES as u32,
            max_samples: 8,
            offset: -0.5,
            trees: vec![vec![split(dense::FEATURES as u32 - 1, 0.5, 1, 2, true), leaf(1), leaf(2)]],
        })
        .unwrap();
        assert!(narrow.is_dense());
        // The last feature, NaN going left, through the complete-tree kernel.
        let mut columns = vec![vec![0.0; 3]; dense::FEATURES];
        columns[dense::FEATURES - 1] = vec![0.25, 0.75, f64::NAN];
        let refs: Vec<&[f64]> = columns.iter().map(Vec::as_slice).collect();
        let got = narrow.score(&refs).unwrap().score;
        assert_eq!(got[0], got[2]);
        assert_ne!(got[0], got[1]);
    }
}
