//! Drift of scored data against the data a model was trained on, from summaries alone.
//!
//! Training stores a [`FeatureBins`] per feature: the deciles (and the 1st, 5th, 95th, 99th
//! percentiles) of the training values as bin edges, the share of training values in each bin (ties make shares differ from 0.1), and the
//! training mean and standard deviation ([`DriftReference`] holds one per feature). Scoring
//! observes each feature's values into a [`Partial`]: counts per bin plus two open-ended
//! overflow bins, the sum, and the exact distance mass beyond the training range. Partials of
//! one series merge across units and shards (counts add), and [`Figures::of`] turns the merged
//! partial into PSI over the stored bins, the normalised Wasserstein distance approximated from
//! the bins, and the mean shift in training standard deviations.
//!
//! Figures come from summaries, not raw training data; the method names in the output
//! (`psi_decile`, `wasserstein_norm_q`) say so. Conventions follow Evidently (PSI with an
//! epsilon of 1e-4 for empty bins, Wasserstein divided by `max(std_ref, 0.001)`) and the usual
//! PSI bands (< 0.1 stable, 0.1-0.25 moderate, > 0.25 significant).

mod bins;
mod figures;
mod partial;

pub use bins::{BINS, DriftReference, FeatureBins, LEVELS};
pub use figures::{Band, Figures, PSI_EPSILON, STD_FLOOR};
pub use partial::{COUNTS, Partial};
