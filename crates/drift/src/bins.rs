//! The reference a model keeps of its training data: decile edges and bin shares per feature.

use serde::{Deserialize, Serialize};

use crate::Partial;

/// The quantile levels of the stored edges: the deciles, plus the 1st, 5th, 95th and 99th
/// percentiles. The extra tail edges keep the Wasserstein approximation close where a decile
/// bin would stretch over a long thin tail; PSI groups the bins back into deciles.
pub const LEVELS: [f64; BINS + 1] =
    [0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0];
/// Bins between the training minimum and maximum.
pub const BINS: usize = 14;
/// The decile each bin belongs to, for PSI.
pub(crate) const DECILE_OF_BIN: [usize; BINS] = [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9];

/// One feature's training distribution, as scoring compares against it.
///
/// Bin `i` holds values in `[edges[i], edges[i + 1])`; the last bin includes the maximum.
/// Edges are training values at [`LEVELS`], so repeated values make some bins empty (zero
/// width) and their neighbours heavier: `shares` are the actual fractions, not 0.1 each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureBins {
    /// `edges[0]` is the training minimum, `edges[BINS]` the maximum.
    pub edges: [f64; BINS + 1],
    /// Fraction of the finite training values in each bin; sums to 1.
    pub shares: [f64; BINS],
    /// Mean and (population) standard deviation of the finite training values.
    pub mean: f64,
    pub std: f64,
    /// Finite training values the bins were built from.
    pub rows: u64,
}

impl FeatureBins {
    /// The bins of a training column's finite values; `None` when it has none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let last = sorted.len() - 1;
        let mut edges = [0.0; BINS + 1];
        for (edge, level) in edges.iter_mut().zip(LEVELS) {
            // Nearest rank: an edge is a training value, so ties land on an edge exactly.
            let at = (level * last as f64).round() as usize;
            *edge = sorted[at.min(last)];
        }
        let n = sorted.len() as f64;
        // Divided first, so values near f64's limits do not overflow the sum.
        let mean = sorted.iter().map(|x| x / n).sum::<f64>();
        if !(edges[BINS] - edges[0]).is_finite() || !mean.is_finite() {
            // A range wider than f64 holds: the figures would be infinite. No reference for
            // this feature (its drift is unknown), rather than no model.
            return None;
        }
        // Deviations scaled by the largest, so their squares cannot overflow.
        let scale = sorted.iter().map(|x| (x - mean).abs()).fold(0.0, f64::max);
        let std = match scale > 0.0 {
            true => {
                let sum = sorted.iter().map(|x| ((x - mean) / scale).powi(2)).sum::<f64>();
                scale * (sum / n).sqrt()
            }
            false => 0.0,
        };
        let mut bins = Self { edges, shares: [0.0; BINS], mean, std, rows: sorted.len() as u64 };
        // The shares follow from the same binning rule scoring uses, so a training set scored
        // against its own bins has a PSI of exactly 0.
        let observed = bins.observe(&sorted);
        for (share, count) in bins.shares.iter_mut().zip(&observed.counts[1..=BINS]) {
            *share = *count as f64 / n;
        }
        Some(bins)
    }

    /// Structural checks for bins read from a file: finite, ordered edges; shares in [0, 1]
    /// that sum to 1; a finite mean and a non-negative standard deviation.
    pub fn check(&self) -> Result<(), String> {
        if self.edges.iter().any(|e| !e.is_finite()) || self.edges.windows(2).any(|w| w[0] > w[1]) {
            return Err("drift bin edges must be finite and ascending".into());
        }
        let total: f64 = self.shares.iter().sum();
        if self.shares.iter().any(|s| !(0.0..=1.0).contains(s)) || (total - 1.0).abs() > 1e-6 {
            return Err("drift bin shares must lie in [0, 1] and sum to 1".into());
        }
        if !self.mean.is_finite() || !self.std.is_finite() || self.std < 0.0 || self.rows == 0 {
            return Err("drift reference needs a finite mean, std >= 0 and rows > 0".into());
        }
        Ok(())
    }

    /// Counts `values` into a partial against these bins.
    pub fn observe(&self, values: &[f64]) -> Partial {
        let mut partial = Partial::default();
        self.observe_into(values, &mut partial);
        partial
    }

    /// Adds `values` to `partial`. Non-finite values are counted apart, not binned.
    ///
    /// Each value is compared with every edge in turn and the compiler vectorises
    /// across values; the bins of a block then go to four count tables, and the sums are
    /// selects, not branches. About 3.5 ns per value on x86-64's baseline SSE2, a few per cent
    /// of what scoring the same row costs (docs/benchmarks.md). Measured slower on the same
    /// data: one pass over the block per edge (4.8 ns: a load and store of the bin per edge),
    /// counting per threshold and differencing (3.8 ns), and a branchless binary search per
    /// value (9 ns: its loads and updates form one dependency chain per value). Wider SIMD
    /// (AVX2, AVX-512) would need runtime dispatch and `unsafe`.
    pub fn observe_into(&self, values: &[f64], partial: &mut Partial) {
        const BLOCK: usize = 512;
        // Bin of a non-finite value: past the overflow bin, counted apart.
        const APART: u64 = (BINS + 2) as u64;
        let (lo, hi) = (self.edges[0], self.edges[BINS]);
        // 64-bit bins, as wide as the compared values: each pass is one compare, mask and add
        // per lane. Sized to the values: most series are shorter than a block, and zeroing a
        // whole one per series and feature showed in profiles of 200-row series.
        let mut bins = vec![0u64; values.len().min(BLOCK)];
        let mut inner = [0.0f64; BINS - 1];
        inner.copy_from_slice(&self.edges[1..BINS]);
        // Four tables, so that runs of values in one bin do not wait on the same counter.
        let mut counts = [[0u64; BINS + 3]; 4];
        let (mut sum, mut below, mut above) = ([0.0f64; 4], [0.0f64; 4], [0.0f64; 4]);
        for block in values.chunks(BLOCK) {
            let bins = &mut bins[..block.len()];
            // 0 below the minimum, 1 + (inner edges at or below) inside, BINS + 1 above.
            for (b, &x) in bins.iter_mut().zip(block) {
                let mut n = u64::from(x >= lo) + u64::from(x > hi);
                for &edge in &inner {
                    n += u64::from(x >= edge);
                }
                *b = if x.is_finite() { n } else { APART };
            }
            let mut quads = bins.chunks_exact(4);
            for q in &mut quads {
                for (table, b) in counts.iter_mut().zip(q) {
                    table[*b as usize] += 1;
                }
            }
            for b in quads.remainder() {
                counts[0][*b as usize] += 1;
            }
            let mut quads = block.chunks_exact(4);
            for q in &mut quads {
                for lane in 0..4 {
                    // Selects, not branches: a non-finite value adds nothing (it stands in as
                    // the minimum for the distances, which are then 0).
                    let x = q[lane];
                    let finite = x.is_finite();
                    let inside = if finite { x } else { lo };
                    sum[lane] += if finite { x } else { 0.0 };
                    let (d_below, d_above) = (lo - inside, inside - hi);
                    below[lane] += if d_below > 0.0 { d_below } else { 0.0 };
                    above[lane] += if d_above > 0.0 { d_above } else { 0.0 };
                }
            }
            for &x in quads.remainder() {
                if x.is_finite() {
                    sum[0] += x;
                    below[0] += if x < lo { lo - x } else { 0.0 };
                    above[0] += if x > hi { x - hi } else { 0.0 };
                }
            }
        }
        let add = |lanes: [f64; 4]| (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
        partial.sum += add(sum);
        partial.below += add(below);
        partial.above += add(above);
        for (i, total) in partial.counts.iter_mut().enumerate() {
            *total += counts.iter().map(|t| t[i]).sum::<u64>();
        }
        partial.non_finite += counts.iter().map(|t| t[APART as usize]).sum::<u64>();
    }
}

/// The drift reference of a model: one entry per feature, in feature order (`None` where the
/// feature had no finite training value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReference {
    pub features: Vec<Option<FeatureBins>>,
}

impl DriftReference {
    /// The reference of training columns (feature order).
    pub fn of(columns: &[&[f64]]) -> Self {
        Self { features: columns.iter().map(|c| FeatureBins::of(c)).collect() }
    }

    /// Checks every feature's bins and that there is one entry per of `n_features`.
    pub fn check(&self, n_features: usize) -> Result<(), String> {
        if self.features.len() != n_features {
            return Err(format!(
                "drift reference of {} features for a model of {n_features}",
                self.features.len()
            ));
        }
        self.features.iter().flatten().try_for_each(FeatureBins::check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_of_distinct_values_hold_their_level_spans() {
        let v: Vec<f64> = (0..1000).map(f64::from).collect();
        let b = FeatureBins::of(&v).unwrap();
        assert_eq!((b.edges[0], b.edges[BINS]), (0.0, 999.0));
        for (i, share) in b.shares.iter().enumerate() {
            let span = LEVELS[i + 1] - LEVELS[i];
            assert!((share - span).abs() < 0.002, "bin {i}: {share} for {span}");
        }
        b.check().unwrap();
    }

    #[test]
    fn ties_give_empty_bins_and_actual_shares() {
        // 70 % zeros: the edges up to the 70th percentile are all 0, so the zeros fall in the
        // bin starting at the last of them, [p70, p80) = [0, 100), with the values 1..=99.
        let mut v = vec![0.0; 700];
        v.extend((1..=300).map(f64::from));
        let b = FeatureBins::of(&v).unwrap();
        assert!(b.edges[..=9].iter().all(|e| *e == 0.0));
        assert_eq!(b.edges[10], 100.0);
        assert!(b.shares[..9].iter().all(|s| *s == 0.0));
        assert!((b.shares[9] - 0.799).abs() < 1e-12, "{:?}", b.shares);
        b.check().unwrap();
    }

    proptest::proptest! {
        /// The blocked passes count what the plain definition counts: below the minimum,
        /// 1 + inner edges at or below inside, above the maximum, non-finite apart.
        #[test]
        fn blocked_counting_equals_the_definition(
            train in proptest::collection::vec(-100f64..100.0, 1..300),
            current in proptest::collection::vec(proptest::prop_oneof![
                -300f64..300.0,
                proptest::strategy::Just(f64::NAN),
                proptest::strategy::Just(f64::INFINITY),
                proptest::strategy::Just(f64::NEG_INFINITY),
            ], 0..3000),
        ) {
            let b = FeatureBins::of(&train).unwrap();
            // Values on the edges and a float either side of them, where a comparison goes wrong.
            let mut current = current;
            for e in b.edges {
                current.extend([e, e.next_down(), e.next_up()]);
            }
            current.extend(&train);
            let mut expected = Partial::default();
            let (lo, hi) = (b.edges[0], b.edges[BINS]);
            for &x in &current {
                if !x.is_finite() {
                    expected.non_finite += 1;
                    continue;
                }
                expected.sum += x;
                if x < lo {
                    expected.counts[0] += 1;
                    expected.below += lo - x;
                } else if x > hi {
                    expected.counts[BINS + 1] += 1;
                    expected.above += x - hi;
                } else {
                    expected.counts[1 + b.edges[1..BINS].iter().filter(|e| x >= **e).count()] += 1;
                }
            }
            let got = b.observe(&current);
            proptest::prop_assert_eq!(got.counts, expected.counts);
            proptest::prop_assert_eq!(got.non_finite, expected.non_finite);
            for (g, e) in [(got.sum, expected.sum), (got.below, expected.below), (got.above, expected.above)] {
                proptest::prop_assert!((g - e).abs() <= 1e-9 * (1.0 + e.abs()), "{} vs {}", g, e);
            }
        }
    }

    #[test]
    fn non_finite_values_are_counted_apart() {
        let b = FeatureBins::of(&[1.0, 2.0, 3.0, f64::NAN]).unwrap();
        assert_eq!(b.rows, 3);
        let p = b.observe(&[f64::NAN, f64::INFINITY, 0.0, 5.0, 2.0]);
        assert_eq!(p.non_finite, 2);
        assert_eq!((p.counts[0], p.counts[BINS + 1], p.rows()), (1, 1, 3));
        assert_eq!((p.below, p.above), (1.0, 2.0));
        assert_eq!(FeatureBins::of(&[f64::NAN]), None);
    }

    #[test]
    fn values_near_the_limits_give_no_reference_instead_of_infinities() {
        assert_eq!(FeatureBins::of(&[-1e308, 1e308, 0.0]), None);
        let b = FeatureBins::of(&[1e308, 1e308, 9e307]).unwrap();
        assert!(b.mean.is_finite() && b.std.is_finite());
        b.check().unwrap();
    }

    #[test]
    fn check_refuses_damaged_bins() {
        let good = FeatureBins::of(&[1.0, 2.0, 3.0]).unwrap();
        let mut b = good.clone();
        b.edges.swap(0, BINS);
        assert!(b.check().is_err());
        let mut b = good.clone();
        b.shares[0] += 0.5;
        assert!(b.check().is_err());
        let mut b = good;
        b.std = f64::NAN;
        assert!(b.check().is_err());
        assert!(DriftReference { features: vec![None] }.check(2).is_err());
    }
}
