//! The complete-tree kernel in AVX-512: sixteen rows walk a tree together, one vector step per
//! level. The one module of the workspace allowed `unsafe`.
//!
//! The portable kernel (`dense.rs`) spends about eleven instructions per row and level. Here a
//! level costs a handful of vector instructions for sixteen rows: the split of each lane's slot
//! is taken from registers for the top seven levels (127 slots: two-register permutes, two of
//! them and a blend for level 6) and gathered for the last one, the lane's input is gathered
//! from the block, one compare gives the direction, and `i = 2i + 2 - went_left` moves every
//! lane down at once. Eight groups of sixteen rows walk a tree together: each level waits on a
//! gather, and eight independent chains keep the core busy meanwhile (one chain alone ran at
//! 1.4 M rows/s, eight at 3.5-4 M; a batch's last few groups walk several trees at once).
//! After `HEIGHT` levels each lane's slot names its leaf, whose path term is gathered and added
//! to the row's sum, tree after tree in order: the same additions in the same order as the
//! portable kernel, so the sums are equal bit for bit (pinned in `model.rs`'s tests against the
//! row-at-a-time reference, with NaN and infinite inputs).
//!
//! Why memory stays in bounds, whatever the forest's bytes: slots follow from the traversal
//! alone (after `k` levels a lane's slot is in `2^k - 1 ..= 2^(k+1) - 2`, so below 255 at every
//! split and `255..=510` at the leaves, minus 255 into the 256 leaf slots); the one index taken
//! from data, a split's feature, is masked to six bits and gathered only where it is below the
//! block's feature count (lanes above read 0.0, as the portable kernel's zeroed padding gives);
//! and every slice's length is checked against the block's shape before any vector code runs.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::{
    __m512, __m512d, __m512i, _CMP_LE_OQ, _CMP_UNORD_Q, _mm_loadu_si128, _mm512_add_epi32,
    _mm512_add_pd, _mm512_and_si512, _mm512_castsi512_si256, _mm512_cmp_ps_mask,
    _mm512_cmplt_epu32_mask, _mm512_cvtepu8_epi32, _mm512_extracti64x4_epi64,
    _mm512_i32gather_epi32, _mm512_i32gather_pd, _mm512_i32gather_ps, _mm512_loadu_pd,
    _mm512_loadu_ps, _mm512_mask_blend_epi32, _mm512_mask_blend_ps, _mm512_mask_i32gather_ps,
    _mm512_mask_loadu_pd, _mm512_mask_storeu_pd, _mm512_mask_sub_epi32, _mm512_permutex2var_epi32,
    _mm512_permutex2var_ps, _mm512_set1_epi32, _mm512_setr_epi32, _mm512_setzero_pd,
    _mm512_setzero_ps, _mm512_setzero_si512, _mm512_slli_epi32, _mm512_srli_epi32,
    _mm512_storeu_pd, _mm512_sub_epi32, _mm512_test_epi32_mask,
};

use super::dense::{DenseTree, FEATURES, HEIGHT, LEAVES, NAN_LEFT, SPLITS};

/// Rows one vector step moves: sixteen f32 lanes of a 512-bit register.
pub(crate) const LANES: usize = 16;

/// Whether this CPU runs the kernel (AVX-512 Foundation; std caches the answer).
pub(crate) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Inputs of one block of rows as f32, by groups of [`LANES`] rows: value `f` of row
/// `g * LANES + lane` sits at `(g * n_features + f) * LANES + lane`, so a group's inputs are one
/// contiguous run a gather indexes by `feature * LANES + lane`.
#[derive(Debug)]
pub(crate) struct Block {
    values: Vec<f32>,
    n_features: usize,
    groups: usize,
}

impl Block {
    /// A block for up to `rows` rows of `n_features` features (at most [`FEATURES`]).
    pub(crate) fn new(n_features: usize, rows: usize) -> Self {
        let n_features = n_features.min(FEATURES);
        let groups = rows.div_ceil(LANES);
        Self { values: vec![0.0; groups * n_features * LANES], n_features, groups }
    }

    /// Loads rows `first..first + rows` of the columns as f32 (scikit-learn's dtype: values
    /// beyond f32 range become ±inf); returns whether any is NaN. Rows past `rows` in the last
    /// group keep older values: their lanes walk but are never added.
    pub(crate) fn load(&mut self, columns: &[&[f64]], first: usize, rows: usize) -> bool {
        let stride = self.n_features * LANES;
        let mut nan = false;
        for (f, column) in columns.iter().enumerate().take(self.n_features) {
            let Some(values) = column.get(first..first + rows) else { continue };
            for (group, chunk) in self.values.chunks_mut(stride).zip(values.chunks(LANES)) {
                for (lane, &v) in group[f * LANES..(f + 1) * LANES].iter_mut().zip(chunk) {
                    *lane = v as f32;
                    nan |= v.is_nan();
                }
            }
        }
        nan
    }

    /// Adds each tree's path term to the sums of the block's first `sums.len()` rows, tree by
    /// tree in order. `nan` selects the step that sends NaN inputs their split's way; without
    /// NaN both steps take the same paths. Returns `false`, having added nothing, on a CPU
    /// without AVX-512F or when `sums` has more rows than the block: the caller then uses the
    /// portable kernel.
    #[must_use]
    pub(crate) fn walk(&self, trees: &[DenseTree], sums: &mut [f64], nan: bool) -> bool {
        // The gathers' bounds rest on the block's shape: checked here, once.
        let shaped = self.n_features > 0
            && sums.len() <= self.groups * LANES
            && self.values.len() == self.groups * self.n_features * LANES;
        if !available() || !shaped {
            return false;
        }
        // SAFETY: the CPU has AVX-512F (checked above), `values` holds `groups` whole groups
        // of `n_features` features, and `sums` has at most `groups * LANES` rows.
        unsafe {
            if nan {
                walk::<true>(trees, &self.values, self.n_features, sums);
            } else {
                walk::<false>(trees, &self.values, self.n_features, sums);
            }
        }
        true
    }
}

/// Groups walked through a tree together: their traversals are independent chains of gathers,
/// so the core overlaps their latencies instead of waiting out each level's gather.
const INTERLEAVE: usize = 8;

/// Vector constants of the step, set once per block.
#[derive(Clone, Copy)]
struct Consts {
    lane: __m512i,
    one: __m512i,
    two: __m512i,
    feature_bits: __m512i,
    feature_count: __m512i,
    nan_left: __m512i,
}

/// A tree's top seven levels (slots 0..127), thresholds and feature codes, in registers.
#[derive(Clone, Copy)]
struct Top {
    thresholds: [__m512; 8],
    codes: [__m512i; 8],
}

impl Top {
    #[target_feature(enable = "avx512f")]
    fn of(tree: &DenseTree) -> Self {
        let (thresholds, codes, _) = tree.parts();
        // Sixteen slots from each offset, all inside the 256-entry arrays: levels 0..=4 (slots
        // 0..31) from 0 and 16, level 5 (31..63) from 31 and 47, level 6 (63..127) from 63, 79,
        // 95 and 111.
        let at = [0, 16, 31, 47, 63, 79, 95, 111];
        let t = at.map(|a| {
            let chunk: &[f32; 16] = thresholds[a..a + 16].try_into().unwrap_or(&[0.0; 16]);
            // SAFETY: reads the 16 f32 of `chunk`.
            unsafe { _mm512_loadu_ps(chunk.as_ptr()) }
        });
        let c = at.map(|a| {
            let chunk: &[u8; 16] = codes[a..a + 16].try_into().unwrap_or(&[0; 16]);
            // SAFETY: reads the 16 bytes of `chunk`.
            _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) })
        });
        Self { thresholds: t, codes: c }
    }
}

/// The kernel behind [`Block::walk`].
///
/// # Safety
/// The CPU supports AVX-512F; `values.len() >= sums.len().div_ceil(LANES) * n_features * LANES`
/// and `1 <= n_features <= FEATURES`.
#[target_feature(enable = "avx512f")]
unsafe fn walk<const NAN: bool>(
    trees: &[DenseTree],
    values: &[f32],
    n_features: usize,
    sums: &mut [f64],
) {
    let k = Consts {
        lane: _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        one: _mm512_set1_epi32(1),
        two: _mm512_set1_epi32(2),
        feature_bits: _mm512_set1_epi32(FEATURES as i32 - 1),
        feature_count: _mm512_set1_epi32(n_features as i32),
        nan_left: _mm512_set1_epi32(i32::from(NAN_LEFT)),
    };
    let stride = n_features * LANES;
    let group = |g: usize| values[g * stride..(g + 1) * stride].as_ptr();
    let groups = sums.len().div_ceil(LANES);
    let whole = groups - groups % INTERLEAVE;
    let (head, tail) = sums.split_at_mut((whole * LANES).min(sums.len()));
    // Whole chunks: each tree walks INTERLEAVE groups at a time, its top levels in registers.
    for tree in trees {
        let top = Top::of(tree);
        for (c, chunk) in head.chunks_mut(LANES * INTERLEAVE).enumerate() {
            let jobs =
                std::array::from_fn(|g| Job { tree, top: &top, group: group(c * INTERLEAVE + g) });
            // SAFETY: each job's group pointer starts the `stride` inputs of one group of
            // `values` (the indexing checked it), as `leaves` requires.
            let leaves = unsafe { leaves::<NAN, true, INTERLEAVE>(jobs, k) };
            for (sums, leaves) in chunk.chunks_mut(LANES).zip(leaves) {
                add_leaves(sums, tree, leaves);
            }
        }
    }
    // The last few groups (a short batch, a 200-row series): too few to hide a walk's latency
    // alone, so several trees walk them together. Each row still adds its trees in order.
    let rest = tail.len().div_ceil(LANES);
    if rest == 0 {
        return;
    }
    let per_batch = (INTERLEAVE / rest).max(1);
    for batch in trees.chunks(per_batch) {
        let last = batch.len() - 1;
        let tops: [Top; INTERLEAVE] = std::array::from_fn(|j| Top::of(&batch[j.min(last)]));
        // Job `q` walks tree `q / rest` of the batch through group `q % rest`; jobs past the
        // batch repeat the first and are not added.
        let jobs = std::array::from_fn(|q| {
            let (j, g) = if q / rest <= last { (q / rest, q % rest) } else { (0, 0) };
            Job { tree: &batch[j], top: &tops[j], group: group(whole + g) }
        });
        // SAFETY: as above.
        let leaves = unsafe { leaves::<NAN, false, INTERLEAVE>(jobs, k) };
        for (q, leaves) in leaves.into_iter().enumerate().take(batch.len() * rest) {
            let (j, g) = (q / rest, q % rest);
            let end = ((g + 1) * LANES).min(tail.len());
            add_leaves(&mut tail[g * LANES..end], &batch[j], leaves);
        }
    }
}

/// One walk of the kernel: a tree, its top levels, and the inputs of one group of rows.
#[derive(Clone, Copy)]
struct Job<'a> {
    tree: &'a DenseTree,
    top: &'a Top,
    group: *const f32,
}

/// Walks `G` jobs (a tree through a group of sixteen rows each): each lane's leaf slot (0..256).
///
/// # Safety
/// The CPU supports AVX-512F, and each job's `group` points at the `n_features * LANES` inputs
/// of one group, where `n_features` is `k.feature_count`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn leaves<const NAN: bool, const SHARED: bool, const G: usize>(
    jobs: [Job<'_>; G],
    k: Consts,
) -> [__m512i; G] {
    // One tree for every job (`SHARED`): its top levels load once, into registers.
    let shared = *jobs[0].top;
    let mut i = [_mm512_setzero_si512(); G];
    for level in 0..HEIGHT {
        for g in 0..G {
            let Job { tree, top, group } = jobs[g];
            let top = if SHARED { &shared } else { top };
            let (threshold, code) = match level {
                0..=4 => (
                    _mm512_permutex2var_ps(top.thresholds[0], i[g], top.thresholds[1]),
                    _mm512_permutex2var_epi32(top.codes[0], i[g], top.codes[1]),
                ),
                5 => {
                    let at = _mm512_sub_epi32(i[g], _mm512_set1_epi32(31));
                    (
                        _mm512_permutex2var_ps(top.thresholds[2], at, top.thresholds[3]),
                        _mm512_permutex2var_epi32(top.codes[2], at, top.codes[3]),
                    )
                }
                6 => {
                    let at = _mm512_sub_epi32(i[g], _mm512_set1_epi32(63));
                    let high = _mm512_test_epi32_mask(at, _mm512_set1_epi32(32));
                    (
                        _mm512_mask_blend_ps(
                            high,
                            _mm512_permutex2var_ps(top.thresholds[4], at, top.thresholds[5]),
                            _mm512_permutex2var_ps(top.thresholds[6], at, top.thresholds[7]),
                        ),
                        _mm512_mask_blend_epi32(
                            high,
                            _mm512_permutex2var_epi32(top.codes[4], at, top.codes[5]),
                            _mm512_permutex2var_epi32(top.codes[6], at, top.codes[7]),
                        ),
                    )
                }
                // SAFETY: `i` is a slot of the last level (127..=254): f32 reads of
                // `thresholds[i]` are inside its 256 entries, and the four bytes ending at
                // `codes[i]` (read from `codes - 3`) start at 124 or later.
                _ => unsafe {
                    let (thresholds, codes, _) = tree.parts();
                    let threshold = _mm512_i32gather_ps::<4>(i[g], thresholds.as_ptr());
                    let bytes = _mm512_i32gather_epi32::<1>(i[g], codes.as_ptr().sub(3).cast());
                    (threshold, _mm512_srli_epi32::<24>(bytes))
                },
            };
            let feature = _mm512_and_si512(code, k.feature_bits);
            let present = _mm512_cmplt_epu32_mask(feature, k.feature_count);
            let at = _mm512_add_epi32(_mm512_slli_epi32::<4>(feature), k.lane);
            // SAFETY: lanes in `present` read `group[feature * LANES + lane]` with
            // `feature < n_features` and `lane < LANES`: inside the group's inputs; other
            // lanes read nothing and hold 0.0.
            let x =
                unsafe { _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), present, at, group) };
            // NaN compares false (unordered): it goes right unless the split says left.
            let mut left = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(x, threshold);
            if NAN {
                let missing = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
                left |= missing & _mm512_test_epi32_mask(code, k.nan_left);
            }
            let right_child = _mm512_add_epi32(_mm512_add_epi32(i[g], i[g]), k.two);
            i[g] = _mm512_mask_sub_epi32(right_child, left, right_child, k.one);
        }
    }
    i.map(|i| _mm512_sub_epi32(i, _mm512_set1_epi32(SPLITS as i32)))
}

/// Adds the path terms of the leaves in `slots` (0..256, one per lane) to `sums` (at most
/// sixteen rows: a last group may hold fewer).
#[target_feature(enable = "avx512f")]
fn add_leaves(sums: &mut [f64], tree: &DenseTree, slots: __m512i) {
    let (_, _, leaves) = tree.parts();
    // Every slot is below LEAVES: a masked index never changes a valid one.
    let slots = _mm512_and_si512(slots, _mm512_set1_epi32(LEAVES as i32 - 1));
    // SAFETY: both gathers read `leaves[slot]` with `slot < LEAVES`.
    let (low, high) = unsafe {
        (
            _mm512_i32gather_pd::<8>(_mm512_castsi512_si256(slots), leaves.as_ptr()),
            _mm512_i32gather_pd::<8>(_mm512_extracti64x4_epi64::<1>(slots), leaves.as_ptr()),
        )
    };
    add_to(sums, low, high);
}

/// `sums[..16] += (low, high)`, for a last group of fewer than sixteen rows too.
#[target_feature(enable = "avx512f")]
fn add_to(sums: &mut [f64], low: __m512d, high: __m512d) {
    let rows = sums.len().min(LANES);
    let p = sums.as_mut_ptr();
    if rows == LANES {
        // SAFETY: `sums` has 16 elements: two unaligned 8-wide reads and writes.
        unsafe {
            _mm512_storeu_pd(p, _mm512_add_pd(_mm512_loadu_pd(p), low));
            _mm512_storeu_pd(p.add(8), _mm512_add_pd(_mm512_loadu_pd(p.add(8)), high));
        }
        return;
    }
    let mask = (1u32 << rows) - 1;
    let (m_low, m_high) = (mask as u8, (mask >> 8) as u8);
    // SAFETY: masked loads and stores touch only the first `rows` elements, all in `sums`
    // (masked-off elements are neither read nor written, nor can they fault).
    unsafe {
        let zero = _mm512_setzero_pd();
        let s = _mm512_add_pd(_mm512_mask_loadu_pd(zero, m_low, p), low);
        _mm512_mask_storeu_pd(p, m_low, s);
        let s = _mm512_add_pd(_mm512_mask_loadu_pd(zero, m_high, p.add(8)), high);
        _mm512_mask_storeu_pd(p.add(8), m_high, s);
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::iforest::dense::DenseBlock;
    use crate::iforest::testing::bits;

    /// A tree of arbitrary content, as no validated model holds it: features up to the layout's
    /// 64 whatever the block's count, NaN and infinite thresholds, some leaves above the last
    /// level (covering their subtree).
    fn arbitrary_tree(rng: &mut impl Rng) -> DenseTree {
        let thresholds = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1.0];
        let mut tree = DenseTree::new();
        for slot in 0..SPLITS {
            let threshold = if rng.random_bool(0.1) {
                thresholds[rng.random_range(0..thresholds.len())]
            } else {
                rng.random::<f32>() * 4.0 - 1.0
            };
            tree.set_split(slot, rng.random_range(0..FEATURES as u32), threshold, rng.random());
        }
        for slot in SPLITS..SPLITS + LEAVES {
            tree.set_leaf(slot, HEIGHT, rng.random::<f64>() * 10.0);
        }
        // A leaf at depth 3 (slots 7..15) covers 32 leaf slots.
        tree.set_leaf(rng.random_range(7..15), 3, -1.5);
        tree
    }

    proptest::proptest! {
        /// The vector kernel adds exactly what the portable kernel adds, on any tree content and
        /// any row count: out-of-range features read 0.0 in both, NaN goes its split's way.
        #[test]
        fn vector_kernel_equals_portable_kernel(
            seed in 0u64..10_000,
            rows in 1usize..300,
            n_features in 1usize..9,
            n_trees in 1usize..10,
        ) {
            if !available() {
                return Ok(());
            }
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let trees: Vec<DenseTree> = (0..n_trees).map(|_| arbitrary_tree(&mut rng)).collect();
            let specials = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e39, -0.0];
            let columns: Vec<Vec<f64>> = (0..n_features)
                .map(|_| {
                    (0..rows)
                        .map(|_| {
                            if rng.random_bool(0.05) {
                                specials[rng.random_range(0..specials.len())]
                            } else {
                                rng.random::<f64>() * 4.0 - 1.0
                            }
                        })
                        .collect()
                })
                .collect();
            let refs: Vec<&[f64]> = columns.iter().map(Vec::as_slice).collect();

            let mut portable = DenseBlock::new(rows);
            let mut expected = vec![0.0; rows];
            if portable.load(&refs, 0, rows) {
                portable.walk::<true>(&trees, &mut expected);
            } else {
                portable.walk::<false>(&trees, &mut expected);
            }
            let mut block = Block::new(n_features, rows);
            let mut got = vec![0.0; rows];
            let nan = block.load(&refs, 0, rows);
            proptest::prop_assert!(block.walk(&trees, &mut got, nan));
            proptest::prop_assert_eq!(bits(&got), bits(&expected));
        }
    }

    /// A block refuses sums longer than its rows instead of walking past its inputs.
    #[test]
    fn more_sums_than_rows_are_left_alone() {
        let block = Block::new(2, 16);
        let mut sums = vec![7.0; 17];
        assert!(!block.walk(&[DenseTree::new()], &mut sums, false));
        assert!(sums.iter().all(|&s| s == 7.0));
    }
}
