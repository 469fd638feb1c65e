//! What scoring accumulates per series and feature: mergeable across units and shards.

use serde::{Deserialize, Serialize};

use crate::BINS;

/// Counts per bin: below the training minimum, the [`BINS`] training bins, above the maximum.
pub const COUNTS: usize = BINS + 2;

/// One feature's scored values, summarised against its training bins. Counts add exactly;
/// the sums are added in a fixed order by whoever merges, so results do not depend on which
/// process merged what.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    pub counts: [u64; COUNTS],
    /// NaN and infinite values: not binned, not in `rows`.
    pub non_finite: u64,
    /// Sum of the finite values.
    pub sum: f64,
    /// Sum of `(min - x)` over values below the training minimum.
    pub below: f64,
    /// Sum of `(x - max)` over values above the training maximum.
    pub above: f64,
}

impl Partial {
    /// Finite values observed.
    pub fn rows(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Partial) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.non_finite += other.non_finite;
        self.sum += other.sum;
        self.below += other.below;
        self.above += other.above;
    }
}

#[cfg(test)]
mod tests {
    use crate::FeatureBins;
    use proptest::prelude::*;

    proptest! {
        /// Observing two halves and merging counts what observing the whole counts.
        #[test]
        fn merging_halves_equals_observing_the_whole(
            train in proptest::collection::vec(-1e3f64..1e3, 1..200),
            current in proptest::collection::vec(prop_oneof![-2e3f64..2e3, Just(f64::NAN)], 0..200),
            split in any::<prop::sample::Index>(),
        ) {
            let bins = FeatureBins::of(&train).unwrap();
            let at = split.index(current.len() + 1);
            let mut merged = bins.observe(&current[..at]);
            merged.merge(&bins.observe(&current[at..]));
            let whole = bins.observe(&current);
            prop_assert_eq!(merged.counts, whole.counts);
            prop_assert_eq!(merged.non_finite, whole.non_finite);
            prop_assert!((merged.sum - whole.sum).abs() <= 1e-9 * (1.0 + whole.sum.abs()) * 200.0);
            prop_assert_eq!(merged.rows() + merged.non_finite, current.len() as u64);
        }
    }
}
