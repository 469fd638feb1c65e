//! The general scoring layout, for forests the complete-tree layout cannot hold (trees deeper
//! than `dense::HEIGHT` or more than `dense::FEATURES` features), and its kernel.

use crate::iforest::model::BLOCK_ROWS;
use crate::iforest::stored::{Position, Sink, Split};

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

/// The general layout: all trees' nodes in one array, each tree in pre-order.
#[derive(Debug, Clone, Default)]
pub(crate) struct PreOrder {
    /// Absolute index of each tree's root.
    roots: Vec<u32>,
    /// Edges on each tree's longest root-to-leaf path: the steps every row takes.
    heights: Vec<u32>,
    nodes: Vec<Node>,
    /// Per leaf: its path term `(path_nodes + c(n_node_samples)) - 1`, as scikit-learn
    /// computes it.
    leaf_values: Vec<f64>,
}

impl PreOrder {
    /// An empty layout for `trees` trees of about `nodes` nodes in all.
    pub(crate) fn with_capacity(trees: usize, nodes: usize) -> Self {
        Self {
            roots: Vec::with_capacity(trees),
            heights: Vec::with_capacity(trees),
            nodes: Vec::with_capacity(nodes),
            leaf_values: Vec::with_capacity(nodes / 2),
        }
    }

    pub(crate) fn n_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Edges on each tree's longest path.
    #[cfg(test)]
    pub(crate) fn heights(&self) -> &[u32] {
        &self.heights
    }

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

impl PreOrder {
    /// Adds every tree's path term to each row's sum (`sums` is overwritten), block by block.
    ///
    /// Within a tree, LANES rows advance together for `height` steps (leaves point to
    /// themselves), which turns a chain of dependent loads per row into LANES independent chains.
    pub(crate) fn path_sums(&self, columns: &[&[f64]], sums: &mut [f64]) {
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
                    // A leaf's left child is its number among the leaves.
                    *sum += self.leaf_values[self.nodes[i].children[0] as usize];
                }
            }
        }
    }
}
