//! Drift figures of one series' feature: PSI, normalised Wasserstein, mean shift.

use serde::{Deserialize, Serialize};

use crate::bins::DECILE_OF_BIN;
use crate::{BINS, FeatureBins, Partial};

/// Share used for an empty bin in PSI (Evidently's fill), so `ln` stays finite.
pub const PSI_EPSILON: f64 = 1e-4;
/// Floor of the training standard deviation when normalising (Evidently's
/// `max(std_ref, 0.001)`): a constant training feature still gives finite figures.
pub const STD_FLOOR: f64 = 0.001;

/// The usual PSI bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    /// PSI < 0.1: no significant change.
    Stable,
    /// 0.1 <= PSI <= 0.25: some change, worth a look.
    Moderate,
    /// PSI > 0.25: the distribution moved; the model may no longer fit.
    Significant,
}

impl Band {
    pub fn of(psi: f64) -> Self {
        if psi < 0.1 {
            Band::Stable
        } else if psi <= 0.25 {
            Band::Moderate
        } else {
            Band::Significant
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Band::Stable => "stable",
            Band::Moderate => "moderate",
            Band::Significant => "significant",
        }
    }
}

/// What a series' feature looked like in a run against its training reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Finite values scored.
    pub rows: u64,
    /// Population stability index over the training deciles plus the two overflow bins.
    pub psi: f64,
    pub band: Band,
    /// First Wasserstein distance between the training and scored distributions, treating
    /// values as spread evenly inside each bin (exact beyond the training range), divided by
    /// `max(std_ref, STD_FLOOR)`.
    pub wasserstein_norm: f64,
    /// Mean of the scored finite values.
    pub mean: f64,
    /// `(mean - mean_ref) / max(std_ref, STD_FLOOR)`.
    pub mean_shift_sd: f64,
}

impl Figures {
    /// The figures of `partial` against `bins`; `None` when no finite value was scored.
    pub fn of(bins: &FeatureBins, partial: &Partial) -> Option<Self> {
        let rows = partial.rows();
        if rows == 0 {
            return None;
        }
        let n = rows as f64;
        let current: Vec<f64> = partial.counts.iter().map(|c| *c as f64 / n).collect();
        // Deciles plus the two overflow bins; the reference has nothing beyond its own
        // minimum and maximum.
        let (mut reference, mut scored) = ([0.0; 12], [0.0; 12]);
        scored[0] = current[0];
        scored[11] = current[BINS + 1];
        for (bin, decile) in DECILE_OF_BIN.iter().enumerate() {
            reference[decile + 1] += bins.shares[bin];
            scored[decile + 1] += current[bin + 1];
        }
        let psi = reference
            .iter()
            .zip(&scored)
            .map(|(r, c)| {
                let (r, c) = (r.max(PSI_EPSILON), c.max(PSI_EPSILON));
                (c - r) * (c / r).ln()
            })
            .sum::<f64>();
        let scale = bins.std.max(STD_FLOOR);
        let mean = partial.sum / n;
        Some(Self {
            rows,
            psi,
            band: Band::of(psi),
            wasserstein_norm: wasserstein(bins, partial, &current) / scale,
            mean,
            mean_shift_sd: (mean - bins.mean) / scale,
        })
    }
}

/// W1 = integral of |F_ref - F_cur| over the line. Inside the training range both CDFs are
/// taken as linear within each bin (exact at the edges, where the counts are known), so each
/// bin contributes the integral of |a linear function|; beyond the range the reference CDF is
/// 0 or 1 and the scored values' distance mass was summed exactly.
fn wasserstein(bins: &FeatureBins, partial: &Partial, current: &[f64]) -> f64 {
    let n = partial.rows() as f64;
    let mut total = partial.below / n + partial.above / n;
    let (mut f_ref, mut f_cur) = (0.0, current[0]);
    for i in 0..BINS {
        let width = bins.edges[i + 1] - bins.edges[i];
        let d0 = f_ref - f_cur;
        f_ref += bins.shares[i];
        f_cur += current[i + 1];
        let d1 = f_ref - f_cur;
        total += width * abs_linear_integral(d0, d1);
    }
    total
}

/// The mean of |d| over a segment where d goes linearly from `d0` to `d1`.
fn abs_linear_integral(d0: f64, d1: f64) -> f64 {
    if d0 * d1 >= 0.0 {
        (d0.abs() + d1.abs()) / 2.0
    } else {
        (d0 * d0 + d1 * d1) / (2.0 * (d0.abs() + d1.abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn normal(n: usize, mean: f64, sd: f64, seed: u64) -> Vec<f64> {
        // Box-Muller over a small LCG: no dependency for test data.
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (u, v) = (next(), next());
                mean + sd * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
            })
            .collect()
    }

    /// The exact W1 of two samples of equal size: the mean distance of the sorted pairs.
    fn exact_w1(a: &[f64], b: &[f64]) -> f64 {
        let (mut a, mut b) = (a.to_vec(), b.to_vec());
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
    }

    #[test]
    fn training_data_against_itself_has_no_drift() {
        let train = normal(5000, 10.0, 2.0, 1);
        let bins = FeatureBins::of(&train).unwrap();
        let f = Figures::of(&bins, &bins.observe(&train)).unwrap();
        assert!(f.psi.abs() < 1e-12, "{f:?}");
        assert_eq!(f.band, Band::Stable);
        assert!(f.wasserstein_norm < 1e-9, "{f:?}");
        assert!(f.mean_shift_sd.abs() < 1e-9);
    }

    #[test]
    fn a_shift_of_one_sd_is_significant_and_measured() {
        let train = normal(20_000, 0.0, 1.0, 2);
        let bins = FeatureBins::of(&train).unwrap();
        let same = Figures::of(&bins, &bins.observe(&normal(20_000, 0.0, 1.0, 3))).unwrap();
        assert_eq!(same.band, Band::Stable, "{same:?}");
        let shifted_values = normal(20_000, 1.0, 1.0, 4);
        let shifted = Figures::of(&bins, &bins.observe(&shifted_values)).unwrap();
        assert_eq!(shifted.band, Band::Significant, "{shifted:?}");
        assert!((shifted.mean_shift_sd - 1.0).abs() < 0.05, "{shifted:?}");
        // Within 5 % of the exact distance of the two samples.
        let exact = exact_w1(&train, &shifted_values);
        let approx = shifted.wasserstein_norm * bins.std;
        assert!((approx - exact).abs() < 0.05 * exact, "{approx} vs {exact}");
    }

    #[test]
    fn constant_training_feature_stays_finite() {
        let bins = FeatureBins::of(&[5.0; 100]).unwrap();
        let f = Figures::of(&bins, &bins.observe(&[5.0, 5.5, 4.0])).unwrap();
        assert!(f.psi.is_finite() && f.wasserstein_norm.is_finite() && f.mean_shift_sd.is_finite());
        // Two of three values lie off the single point: (0.5 + 1.0) / 3 / 0.001.
        assert!((f.wasserstein_norm - 500.0).abs() < 1e-9, "{f:?}");
        assert_eq!(Figures::of(&bins, &bins.observe(&[f64::NAN])), None);
    }

    #[test]
    fn bands() {
        assert_eq!(Band::of(0.0999), Band::Stable);
        assert_eq!(Band::of(0.1), Band::Moderate);
        assert_eq!(Band::of(0.25), Band::Moderate);
        assert_eq!(Band::of(0.2501), Band::Significant);
    }

    proptest! {
        /// Against the exact sample W1, the binned approximation errs by at most the widest
        /// training bin (each value moves at most within its bin, on both sides).
        #[test]
        fn wasserstein_is_within_a_bin_width_of_exact(
            train in proptest::collection::vec(-100f64..100.0, 10..300),
            shift in -50f64..50.0,
            scale in 0.2f64..3.0,
        ) {
            let current: Vec<f64> = train.iter().map(|x| x * scale + shift).collect();
            let bins = FeatureBins::of(&train).unwrap();
            let f = Figures::of(&bins, &bins.observe(&current)).unwrap();
            let norm = bins.std.max(STD_FLOOR);
            let widest = bins.edges.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
            let exact = exact_w1(&train, &current);
            prop_assert!(f.psi >= 0.0);
            prop_assert!((f.wasserstein_norm * norm - exact).abs() <= widest + 1e-9,
                "approx {} exact {} widest {}", f.wasserstein_norm * norm, exact, widest);
        }
    }
}
