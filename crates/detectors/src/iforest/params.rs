//! Hyper-parameters of IsolationForest, validated into a checked type before fitting.

use serde::{Deserialize, Serialize};

use crate::DetectorError;

/// How many training rows each tree sees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MaxSamples {
    /// `min(256, n_rows)`, scikit-learn's `"auto"`.
    #[default]
    Auto,
    /// A row count, capped at the number of training rows.
    Count(usize),
    /// A fraction of the training rows in `(0, 1]`.
    Fraction(f64),
}

/// How many features each tree draws its splits from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MaxFeatures {
    /// Every feature (scikit-learn's default `1.0`).
    #[default]
    All,
    /// A feature count in `1..=n_features`.
    Count(usize),
    /// A fraction of the features in `(0, 1]`.
    Fraction(f64),
}

/// The share of anomalies expected in the training data, which sets the offset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Contamination {
    /// Offset `-0.5`, as in the original paper (scikit-learn's `"auto"`).
    #[default]
    Auto,
    /// A fraction in `(0, 0.5]`: the offset is that percentile of the training scores.
    Fraction(f64),
}

/// IsolationForest hyper-parameters as given; call [`IsolationForestParams::check`] to fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IsolationForestParams {
    pub n_estimators: usize,
    pub max_samples: MaxSamples,
    pub max_features: MaxFeatures,
    pub bootstrap: bool,
    pub contamination: Contamination,
    pub seed: u64,
}

impl Default for IsolationForestParams {
    fn default() -> Self {
        Self {
            n_estimators: 100,
            max_samples: MaxSamples::Auto,
            max_features: MaxFeatures::All,
            bootstrap: false,
            contamination: Contamination::Auto,
            seed: 0,
        }
    }
}

/// Parameters that passed validation; the only way to train an [`crate::IsolationForest`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidIsolationForestParams(pub(crate) IsolationForestParams);

impl ValidIsolationForestParams {
    /// The validated parameters.
    pub fn params(&self) -> &IsolationForestParams {
        &self.0
    }
}

/// Upper bound on trees per forest: keeps a model's size and scoring cost sane and lets a
/// hostile config fail at validation instead of exhausting memory.
pub(crate) const MAX_ESTIMATORS: usize = 10_000;
/// Upper bound on samples per tree, for the same reason.
pub(crate) const MAX_SAMPLES_PER_TREE: usize = 1 << 20;

impl IsolationForestParams {
    /// Validates every parameter's domain.
    pub fn check(self) -> Result<ValidIsolationForestParams, DetectorError> {
        let invalid = |name, reason: String| Err(DetectorError::InvalidParameter { name, reason });
        if self.n_estimators == 0 || self.n_estimators > MAX_ESTIMATORS {
            return invalid(
                "n_estimators",
                format!("{} is outside 1..={MAX_ESTIMATORS}", self.n_estimators),
            );
        }
        match self.max_samples {
            MaxSamples::Count(n) if n == 0 || n > MAX_SAMPLES_PER_TREE => {
                return invalid(
                    "max_samples",
                    format!("{n} is outside 1..={MAX_SAMPLES_PER_TREE}"),
                );
            }
            MaxSamples::Fraction(f) if !(f > 0.0 && f <= 1.0) => {
                return invalid("max_samples", format!("fraction {f} is outside (0, 1]"));
            }
            _ => {}
        }
        match self.max_features {
            MaxFeatures::Count(0) => return invalid("max_features", "0 features".into()),
            MaxFeatures::Fraction(f) if !(f > 0.0 && f <= 1.0) => {
                return invalid("max_features", format!("fraction {f} is outside (0, 1]"));
            }
            _ => {}
        }
        if let Contamination::Fraction(c) = self.contamination
            && !(c > 0.0 && c <= 0.5)
        {
            return invalid("contamination", format!("{c} is outside (0, 0.5]"));
        }
        Ok(ValidIsolationForestParams(self))
    }
}

impl MaxSamples {
    /// scikit-learn's `max_samples_` for `n_rows` training rows.
    pub(crate) fn resolve(self, n_rows: usize) -> usize {
        let n = match self {
            MaxSamples::Auto => n_rows.min(256),
            MaxSamples::Count(k) => k.min(n_rows),
            // scikit-learn: int(max_samples * n_samples); at least one row so a tiny fraction of
            // a small set still trains.
            MaxSamples::Fraction(f) => ((f * n_rows as f64) as usize).max(1),
        };
        n.max(1)
    }
}

impl MaxFeatures {
    /// Number of features each tree draws from, given `n_features`.
    pub(crate) fn resolve(self, n_features: usize) -> Result<usize, DetectorError> {
        let k = match self {
            MaxFeatures::All => n_features,
            MaxFeatures::Count(k) => k,
            MaxFeatures::Fraction(f) => ((f * n_features as f64) as usize).max(1),
        };
        if k == 0 || k > n_features {
            return Err(DetectorError::InvalidParameter {
                name: "max_features",
                reason: format!("{k} features requested, the data has {n_features}"),
            });
        }
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_out_of_domain_values() {
        let bad = [
            IsolationForestParams { n_estimators: 0, ..Default::default() },
            IsolationForestParams { max_samples: MaxSamples::Fraction(1.5), ..Default::default() },
            IsolationForestParams { max_samples: MaxSamples::Count(0), ..Default::default() },
            IsolationForestParams {
                max_features: MaxFeatures::Fraction(0.0),
                ..Default::default()
            },
            IsolationForestParams {
                contamination: Contamination::Fraction(0.7),
                ..Default::default()
            },
            IsolationForestParams {
                contamination: Contamination::Fraction(f64::NAN),
                ..Default::default()
            },
        ];
        for params in bad {
            assert!(params.clone().check().is_err(), "{params:?} should be rejected");
        }
        assert!(IsolationForestParams::default().check().is_ok());
    }

    #[test]
    fn resolves_sample_counts_like_scikit_learn() {
        assert_eq!(MaxSamples::Auto.resolve(1000), 256);
        assert_eq!(MaxSamples::Auto.resolve(100), 100);
        assert_eq!(MaxSamples::Count(500).resolve(100), 100);
        assert_eq!(MaxSamples::Fraction(0.5).resolve(101), 50);
        assert_eq!(MaxFeatures::Fraction(0.5).resolve(8), Ok(4));
        assert!(MaxFeatures::Count(9).resolve(8).is_err());
    }
}
