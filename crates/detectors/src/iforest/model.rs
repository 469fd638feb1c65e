//! The validated forest: its stored form, the one scoring layout decoded from it, and the choice
//! of kernel that walks that layout.
//!
//! A forest is built only by decoding a stored form (`stored.rs`), whether it comes from a model
//! file or from scikit-learn's layout (`raw.rs`), so a corrupt or hostile model is an error value
//! and scoring never indexes out of bounds. Each kernel sits in its own file beside the tests
//! that pin it to the others: `dense.rs` (complete trees, portable), `avx512.rs` (complete
//! trees, AVX-512) and `preorder.rs` (any tree); the tests here pin every kernel to a
//! row-at-a-time reading of scikit-learn's algorithm.

use serde::{Deserialize, Serialize};

use crate::detector::batch_rows;
use crate::iforest::dense::{self, DenseTree};
use crate::iforest::path_length::average_path_length;
use crate::iforest::preorder::PreOrder;
use crate::iforest::stored::{Header, OFFSET_AT, Reader, invalid, walk_stored};
use crate::{Detector, DetectorError};

/// Rows scored together by every tree (their f32 inputs: 8 features x 512 rows = 16 KiB).
pub(crate) const BLOCK_ROWS: usize = 512;

/// The kernels that walk a forest's trees. Every kernel gives the same sums, bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForestKernel {
    /// Eight rows per tree step in scalar code, on every CPU (SSE2 at most).
    Portable,
    /// Sixteen rows per vector step with AVX-512 gathers, for forests in the complete-tree
    /// layout on CPUs with AVX-512F; other forests take the portable kernel.
    Avx512,
}

impl ForestKernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        if Self::Avx512.is_available() { Self::Avx512 } else { Self::Portable }
    }

    /// Whether this CPU runs the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => super::avx512::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx512 => false,
        }
    }

    /// The kernel's name, for benchmarks and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx512 => "avx512",
        }
    }
}

/// A validated IsolationForest, ready to score.
///
/// The stored form (see `stored`) is the forest's one source of truth: the model keeps those
/// bytes (equality, re-encoding and the raw layout read them) beside a single scoring layout
/// decoded from them in one pass. That layout is the complete-tree one (`dense.rs`) when every
/// tree fits it, which scikit-learn's default forests do, and the pre-order one otherwise.
/// Keeping one layout, not both, halves the work of loading a model.
#[derive(Debug, Clone)]
pub struct IsolationForest {
    pub(super) n_features: u32,
    pub(super) max_samples: u64,
    pub(super) offset: f64,
    pub(super) n_trees: usize,
    n_nodes: usize,
    /// `n_trees * c(max_samples)`, the normaliser of the path-length sum.
    denominator: f64,
    /// The stored form these fields and the layout were decoded from, little-endian:
    /// `n_features: u32, max_samples: u64, offset: f64, n_trees: u32`, then per tree
    /// `n_nodes: u32` and its nodes in pre-order: an internal node is `code: u16` (the feature,
    /// plus bit 15 when a NaN goes left) and `threshold: f32`; a leaf is `0xFFFF` and its
    /// training rows as LEB128. About 6 bytes per internal node and 3 per leaf.
    pub(super) stored: Vec<u8>,
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

impl IsolationForest {
    /// Decodes and validates the stored form in one pass, straight into the scoring layout.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, DetectorError> {
        Self::decode_owned(bytes.to_vec())
    }

    pub(super) fn decode_owned(stored: Vec<u8>) -> Result<Self, DetectorError> {
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
                let mut layout = PreOrder::with_capacity(header.n_trees, hint);
                let n = walk_stored(&mut r, header.n_trees, header.n_features, &mut layout)?;
                (n.unwrap_or(layout.n_nodes()), Scoring::PreOrder(layout))
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

    /// Sum over trees of each row's path term, in tree order, into `sums`: the layout's kernel
    /// adds every tree's term to each row in scikit-learn's order, so every kernel gives the
    /// same sums.
    fn path_sums(&self, kernel: ForestKernel, columns: &[&[f64]], sums: &mut [f64]) {
        match &self.scoring {
            Scoring::Dense(trees) => dense::path_sums(trees, kernel, columns, sums),
            Scoring::PreOrder(layout) => layout.path_sums(columns, sums),
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
        self.score_samples_with(ForestKernel::detect(), columns, out)
    }
}

impl IsolationForest {
    /// [`Detector::score_samples_into`] with a chosen kernel (benchmarks compare them); an
    /// unavailable kernel falls back to the portable one.
    pub fn score_samples_with(
        &self,
        kernel: ForestKernel,
        columns: &[&[f64]],
        out: &mut [f64],
    ) -> Result<(), DetectorError> {
        let rows = batch_rows(columns, self.n_features())?;
        if out.len() != rows {
            return Err(DetectorError::OutputLength { expected: rows, got: out.len() });
        }
        self.path_sums(kernel, columns, out);
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
    use crate::iforest::path_length::EULER_GAMMA;
    use crate::iforest::raw::RawForest;
    use crate::iforest::testing::{bits, fitted, hand_forest, leaf, reference_scores, split};

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

    proptest::proptest! {
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

    /// Every kernel's scores of `columns`: the portable and AVX-512 kernels of the forest's
    /// layout (the latter falls back to the former on a CPU without AVX-512), then the pre-order
    /// kernel of the same forest.
    fn every_kernel(forest: &IsolationForest, columns: &[&[f64]]) -> Vec<(&'static str, Vec<f64>)> {
        let mut scored = Vec::new();
        for kernel in [ForestKernel::Portable, ForestKernel::Avx512] {
            let mut out = vec![0.0; columns[0].len()];
            forest.score_samples_with(kernel, columns, &mut out).unwrap();
            scored.push((kernel.name(), out));
        }
        scored.push(("pre-order", forest.general().score(columns).unwrap().score));
        scored
    }

    proptest::proptest! {
        /// Every kernel gives the reference's scores bit for bit, for any batch size (partial
        /// lane groups, the AVX-512 kernel's interleaved remainders) and values including NaN,
        /// infinities and huge magnitudes.
        #[test]
        fn every_kernel_equals_reference_traversal(
            seed in 0u64..1000,
            rows in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::prop_oneof![
                        8 => -1.0f64..5.0,
                        1 => proptest::sample::select(vec![
                            f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e39, -1e39, 0.0, -0.0, 5e-324,
                        ]),
                    ],
                    3,
                ),
                1..300,
            ),
            trees in 1usize..12,
        ) {
            let forest = fitted(seed, 3, 200, trees, 4.0);
            let columns: Vec<Vec<f64>> = (0..3).map(|f| rows.iter().map(|r| r[f]).collect()).collect();
            let column_refs: Vec<&[f64]> = columns.iter().map(Vec::as_slice).collect();
            let expected = bits(&reference_scores(&forest.clone().into(), &rows));
            // These forests are shallow: the complete-tree layout, and the pre-order one.
            proptest::prop_assert!(forest.is_dense());
            for (kernel, got) in every_kernel(&forest, &column_refs) {
                proptest::prop_assert_eq!(&bits(&got), &expected, "kernel {}", kernel);
            }
        }
    }

    /// Over several blocks (and a partial last one), every kernel agrees bit for bit; NaN rows
    /// in some blocks take the NaN-aware step there only.
    #[test]
    fn kernels_agree_over_many_blocks() {
        use rand::{Rng, SeedableRng};
        let forest = fitted(11, 5, 2000, 20, 10.0);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        let n = 3 * BLOCK_ROWS + 77;
        let mut columns: Vec<Vec<f64>> =
            (0..5).map(|_| (0..n).map(|_| rng.random::<f64>() * 12.0 - 1.0).collect()).collect();
        columns[2][BLOCK_ROWS + 3] = f64::NAN;
        columns[4][n - 1] = f64::NAN;
        assert!(forest.is_dense());
        // Every batch size from one row to a block and a bit, as a real-time request or a
        // short series brings them, then the whole batch.
        for rows in (1..=40).chain([63, 64, 65, 127, 128, 129, 200, 511, 512, 513, n]) {
            let column_refs: Vec<&[f64]> = columns.iter().map(|c| &c[n - rows..]).collect();
            let scored = every_kernel(&forest, &column_refs);
            for (kernel, got) in &scored[1..] {
                assert_eq!(bits(got), bits(&scored[0].1), "{kernel} on {rows} rows");
            }
        }
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
        assert_eq!(layout.heights(), [depth]);
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
