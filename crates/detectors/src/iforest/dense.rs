//! The complete-tree scoring layout of shallow forests, and its kernel.
//!
//! scikit-learn grows an isolation tree to at most `ceil(log2(max_samples))` levels: 8 for the
//! default 256 samples. A tree of height at most [`HEIGHT`] is stored here as the complete
//! binary tree of that height, in heap order: the children of slot `i` are `2i + 1` and
//! `2i + 2`, so a traversal step is "load the split, compare, `i = 2i + 1 + went_right`", with
//! no child index to load. A leaf shallower than `HEIGHT` becomes the whole subtree below its
//! slot: the padding splits below it are arbitrary (feature 0, threshold 0) and every leaf slot
//! under it holds its value, so whichever way a row goes it ends with that value. Every row then
//! takes exactly `HEIGHT` steps per tree, and all array sizes are compile-time constants:
//! indices are masked into range instead of bounds-checked (the masks never change a valid
//! index), which keeps the step at a handful of instructions and the lanes' state in registers.
//!
//! This file holds the portable kernel (eight rows in scalar code, on every CPU); `avx512.rs`
//! walks the same layout sixteen rows per vector step. Forests with deeper trees or more than
//! [`FEATURES`] features use the general pre-order layout (`preorder.rs`). All give the same
//! sums, bit for bit (tests in `model.rs` against a row-at-a-time reference).

use crate::iforest::model::{BLOCK_ROWS, ForestKernel};
use crate::iforest::stored::{Position, Sink, Split};

/// Tree height (edges from the root to the deepest leaf) the layout holds.
pub(crate) const HEIGHT: u32 = 8;
/// Split slots per tree (levels 0..HEIGHT); the array has one unused slot, to be a power of two.
pub(crate) const SPLITS: usize = (1 << HEIGHT) - 1;
/// Leaf slots per tree.
pub(crate) const LEAVES: usize = 1 << HEIGHT;
/// Features a model may have to use this layout: the input block is a fixed-size array.
pub(crate) const FEATURES: usize = 64;
/// Rows walked through one tree together: independent traversals overlap their latency.
pub(crate) const LANES: usize = 8;
/// Set in a split's feature code when a NaN input goes left there.
pub(crate) const NAN_LEFT: u8 = 0x80;

/// One tree in heap order. 3.3 KB: a block's walk through it stays in the L1 cache.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DenseTree {
    /// f32 thresholds of the splits (see `Node::threshold` in `model.rs`), by slot.
    thresholds: [f32; LEAVES],
    /// Feature index of each split (below [`FEATURES`]), with [`NAN_LEFT`].
    features: [u8; LEAVES],
    /// The path term of each leaf slot.
    leaves: [f64; LEAVES],
}

impl DenseTree {
    /// A tree whose every slot is a split on feature 0 at 0 and whose leaves are 0.
    pub(crate) fn new() -> Self {
        Self { thresholds: [0.0; LEAVES], features: [0; LEAVES], leaves: [0.0; LEAVES] }
    }

    /// The thresholds, feature codes and leaf path terms, by slot (for the vector kernels).
    pub(crate) fn parts(&self) -> (&[f32; LEAVES], &[u8; LEAVES], &[f64; LEAVES]) {
        (&self.thresholds, &self.features, &self.leaves)
    }

    /// Sets the split at `slot` (depth below `HEIGHT`); `feature` is below [`FEATURES`].
    pub(crate) fn set_split(&mut self, slot: usize, feature: u32, threshold: f32, nan_left: bool) {
        let code = (feature as u8 & (FEATURES as u8 - 1)) | if nan_left { NAN_LEFT } else { 0 };
        self.thresholds[slot & SPLITS] = threshold;
        self.features[slot & SPLITS] = code;
    }

    /// Sets a leaf at `slot`, `depth` edges below the root: every leaf slot under it.
    pub(crate) fn set_leaf(&mut self, slot: usize, depth: u32, value: f64) {
        let below = HEIGHT - depth;
        // The leftmost descendant at the last level, and how many leaf slots the leaf covers.
        let first = ((slot + 1) << below) - 1 - SPLITS;
        let count = 1usize << below;
        if let Some(slots) = self.leaves.get_mut(first..first + count) {
            slots.fill(value);
        }
    }
}

/// Adds every tree's path term to each row's sum (`sums` is overwritten), with `kernel` where
/// this CPU runs it and the batch is big enough to gain, the portable kernel otherwise.
///
/// Rows go in blocks of `BLOCK_ROWS`: a block's inputs (as f32, scikit-learn's dtype) stay in
/// the L1 cache while every tree walks it, and each tree's splits are read once per block.
pub(crate) fn path_sums(
    trees: &[DenseTree],
    kernel: ForestKernel,
    columns: &[&[f64]],
    sums: &mut [f64],
) {
    // Below one vector's sixteen rows (a real-time request's rows of a device) the portable
    // kernel's eight lanes waste less (benches/kernel.rs: 1 and 3 rows).
    #[cfg(target_arch = "x86_64")]
    if kernel == ForestKernel::Avx512
        && sums.len() >= super::avx512::LANES
        && super::avx512::available()
    {
        let mut block = super::avx512::Block::new(columns.len(), sums.len().min(BLOCK_ROWS));
        let mut walked = true;
        for (b, block_sums) in sums.chunks_mut(BLOCK_ROWS).enumerate() {
            block_sums.fill(0.0);
            let nan = block.load(columns, b * BLOCK_ROWS, block_sums.len());
            walked &= block.walk(trees, block_sums, nan);
        }
        // Refused (it never is once `available`): the portable kernel below starts over.
        if walked {
            return;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = kernel;
    let mut block = DenseBlock::new(sums.len().min(BLOCK_ROWS));
    for (b, block_sums) in sums.chunks_mut(BLOCK_ROWS).enumerate() {
        block_sums.fill(0.0);
        if block.load(columns, b * BLOCK_ROWS, block_sums.len()) {
            block.walk::<true>(trees, block_sums);
        } else {
            block.walk::<false>(trees, block_sums);
        }
    }
}

/// Inputs of one block of rows, as f32, grouped by lanes: `groups[g][feature][lane]` is row
/// `g * LANES + lane`. Fixed inner sizes let the kernel mask instead of bounds-check.
#[derive(Debug)]
pub(crate) struct DenseBlock {
    groups: Vec<[[f32; LANES]; FEATURES]>,
}

impl DenseBlock {
    pub(crate) fn new(rows: usize) -> Self {
        Self { groups: vec![[[0.0; LANES]; FEATURES]; rows.div_ceil(LANES)] }
    }

    /// Loads rows `first..first + rows` of the columns (as f32, scikit-learn's dtype: values
    /// beyond f32 range become ±inf and compare as such); returns whether any is NaN.
    pub(crate) fn load(&mut self, columns: &[&[f64]], first: usize, rows: usize) -> bool {
        let mut nan = false;
        for (f, column) in columns.iter().enumerate().take(FEATURES) {
            let values = &column[first..first + rows];
            for (group, chunk) in self.groups.iter_mut().zip(values.chunks(LANES)) {
                let lanes = &mut group[f];
                for (lane, &v) in lanes.iter_mut().zip(chunk) {
                    *lane = v as f32;
                    nan |= v.is_nan();
                }
            }
        }
        nan
    }

    /// Adds each tree's path term to the sums of the block's rows (`sums.len()` rows), tree by
    /// tree in order, so every row's sum is added in scikit-learn's order. `NAN` selects the
    /// step that sends NaN inputs their split's way; without NaN both steps agree.
    pub(crate) fn walk<const NAN: bool>(&self, trees: &[DenseTree], sums: &mut [f64]) {
        for tree in trees {
            for (group, lane_sums) in self.groups.iter().zip(sums.chunks_mut(LANES)) {
                if let [sum] = lane_sums {
                    // A group of one row (a real-time request's row of a device) walks alone:
                    // half the time of eight lanes, of which seven would be idle. From two
                    // rows on, the lanes' overlapped latency wins (benches/kernel.rs).
                    let mut i = 0;
                    for _ in 0..HEIGHT {
                        i = step::<NAN>(tree, group, 0, i);
                    }
                    *sum += tree.leaves[(i as usize).wrapping_sub(SPLITS) & (LEAVES - 1)];
                    continue;
                }
                // All lanes walk; lanes past the last row read leftover inputs and are not added.
                let mut at = [0u32; LANES];
                for _ in 0..HEIGHT {
                    for (lane, i) in at.iter_mut().enumerate() {
                        *i = step::<NAN>(tree, group, lane, *i);
                    }
                }
                for (sum, &i) in lane_sums.iter_mut().zip(&at) {
                    *sum += tree.leaves[(i as usize).wrapping_sub(SPLITS) & (LEAVES - 1)];
                }
            }
        }
    }
}

/// One traversal step of row `lane` of `group` from split slot `i`: the child slot it goes to.
#[inline(always)]
fn step<const NAN: bool>(
    tree: &DenseTree,
    group: &[[f32; LANES]; FEATURES],
    lane: usize,
    i: u32,
) -> u32 {
    // `i` is below SPLITS here: the mask only tells the compiler so.
    let slot = i as usize & SPLITS;
    let code = tree.features[slot];
    let x = group[usize::from(code) & (FEATURES - 1)][lane];
    // NaN compares false: it goes right unless the split says left.
    let left = x <= tree.thresholds[slot];
    let mut right = !left;
    if NAN && x.is_nan() {
        right = code & NAN_LEFT == 0;
    }
    (2 * slot + 1 + usize::from(right)) as u32
}

impl Sink for Vec<DenseTree> {
    fn start_tree(&mut self, _first: u32) {
        self.push(DenseTree::new());
    }

    fn split(&mut self, at: Position, _: u32, split: Split) -> bool {
        let Split { feature, threshold, nan_left } = split;
        // A split at the last level would put its children beyond the layout.
        if at.depth >= HEIGHT {
            return false;
        }
        if let Some(tree) = self.last_mut() {
            tree.set_split(at.slot, feature, threshold, nan_left);
        }
        true
    }

    fn leaf(&mut self, at: Position, _: u32, value: f64, _: u64) -> bool {
        if at.depth > HEIGHT {
            return false;
        }
        if let Some(tree) = self.last_mut() {
            tree.set_leaf(at.slot, at.depth, value);
        }
        true
    }

    fn end_tree(&mut self, _height: u32) {}
}
