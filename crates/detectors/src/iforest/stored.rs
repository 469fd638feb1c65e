//! The stored form of a forest: the bytes a model file holds, and the one walk that reads them.
//!
//! Little-endian: `n_features: u32, max_samples: u64, offset: f64, n_trees: u32`, then per tree
//! `n_nodes: u32` and its nodes in pre-order: an internal node is `code: u16` (the feature, plus
//! bit 15 when a NaN goes left) and `threshold: f32`; a leaf is `0xFFFF` and its training rows
//! as LEB128. About 6 bytes per internal node and 3 per leaf. [`walk_stored`] checks the
//! structure as it reads and hands every node to a [`Sink`]: a scoring layout (`dense.rs`,
//! `preorder.rs`) or scikit-learn's layout (`raw.rs`).

use crate::DetectorError;
use crate::iforest::params::{MAX_ESTIMATORS, MAX_SAMPLES_PER_TREE};
use crate::iforest::path_length::PathLengths;

/// Upper bound on features per model: far above any sensor count, and below the 15 bits a
/// feature index has in the stored form.
pub(crate) const MAX_FEATURES: u32 = (1 << 15) - 1;
/// Upper bound on nodes per tree: a tree over `MAX_SAMPLES_PER_TREE` rows has fewer.
pub(crate) const MAX_NODES_PER_TREE: usize = 2 * MAX_SAMPLES_PER_TREE;
/// Upper bound on nodes per forest (about 800 MB in memory): a bigger file is hostile, not a model.
pub(crate) const MAX_NODES_PER_FOREST: usize = 1 << 25;

/// The largest f32 that is not above `t` (see [`Node::threshold`]).
pub(crate) fn floor_f32(t: f64) -> f32 {
    let nearest = t as f32;
    if f64::from(nearest) > t { nearest.next_down() } else { nearest }
}

/// Where the next node of a tree sits, as the pre-order walk of the stored form tracks it.
///
/// A full binary tree is determined by its pre-order sequence of "split" and "leaf" marks:
/// after a split comes its left child; after a leaf, the right child of the nearest split whose
/// right subtree has not started. The walk keeps those splits' right children on a stack, which
/// gives every node its depth, its heap slot and, for a right child, its parent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Position {
    /// Edges from the root.
    pub(crate) depth: u32,
    /// The slot in heap order (children of `i` at `2i + 1`, `2i + 2`); wraps, and means
    /// nothing, below the depth the complete-tree layout holds.
    pub(crate) slot: usize,
    /// For a right child: the forest-wide index of its parent split.
    pub(crate) right_of: Option<u32>,
}

impl Position {
    pub(crate) fn children(self, index: u32) -> (Position, Position) {
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
pub(crate) struct Split {
    pub(crate) feature: u32,
    pub(crate) threshold: f32,
    pub(crate) nan_left: bool,
}

/// A scoring (or export) layout, built node by node by [`walk_stored`] in pre-order.
/// `index` is the node's forest-wide pre-order index. `split` and `leaf` return `false` when
/// the layout cannot hold the node; the walk then stops (and the caller picks another layout).
pub(crate) trait Sink {
    fn start_tree(&mut self, first: u32);
    fn split(&mut self, at: Position, index: u32, split: Split) -> bool;
    fn leaf(&mut self, at: Position, index: u32, value: f64, samples: u64) -> bool;
    fn end_tree(&mut self, height: u32);
}

#[cold]
pub(crate) fn invalid(msg: String) -> DetectorError {
    DetectorError::InvalidModel(msg)
}

#[cold]
pub(crate) fn invalid_tree(t: usize, msg: &str) -> DetectorError {
    DetectorError::InvalidModel(format!("tree {t}: {msg}"))
}

/// The stored form's header: `n_features: u32, max_samples: u64, offset: f64, n_trees: u32`.
pub(crate) const HEADER_LEN: usize = 24;
/// Where the offset sits in the header.
pub(crate) const OFFSET_AT: std::ops::Range<usize> = 12..20;

/// The stored form's header fields, checked.
pub(crate) struct Header {
    pub(crate) n_features: u32,
    pub(crate) max_samples: u64,
    pub(crate) offset: f64,
    pub(crate) n_trees: usize,
}

impl Header {
    pub(crate) fn check(self) -> Result<Self, DetectorError> {
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

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
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
pub(crate) fn walk_stored<S: Sink>(
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

/// The stored form's node codes: a leaf, or `feature | CODE_NAN_LEFT` for an internal node.
pub(crate) const CODE_LEAF: u16 = u16::MAX;
pub(crate) const CODE_NAN_LEFT: u16 = 1 << 15;

/// A node as stored: a leaf's training rows, or a split's code and f32 threshold.
pub(crate) enum StoredNode {
    Leaf(u64),
    Split(u16, f32),
}

/// Reads the stored form; every read is bounds-checked and every failure names what is wrong.
pub(crate) struct Reader<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) at: usize,
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

    pub(crate) fn u32(&mut self) -> Result<u32, DetectorError> {
        self.take().map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DetectorError> {
        self.take().map(u64::from_le_bytes)
    }

    /// The next node: a leaf's training rows, or a split's code and threshold.
    #[inline(always)]
    pub(crate) fn node(&mut self) -> Result<StoredNode, DetectorError> {
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

pub(crate) fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IsolationForest;
    use crate::iforest::testing::hand_forest;

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

    }
}
