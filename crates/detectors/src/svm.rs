//! One-class SVM scoring, exactly as scikit-learn's libsvm computes it.
//!
//! `decision_function(x) = Σ_i dual_coef[i] · K(sv_i, x) + intercept`, summed over the support
//! vectors in order; `score_samples = decision_function + offset` where scikit-learn's
//! `offset_ = -intercept_`. libsvm predicts an inlier only where the decision is `> 0`: zero and
//! NaN (a kernel overflowing to ∞ − ∞) are outliers, unlike IsolationForest's `decision < 0`. Kernels follow libsvm: RBF `exp(-γ‖x−y‖²)`, linear `x·y`, polynomial
//! `(γ x·y + coef0)^degree` by repeated squaring, sigmoid `tanh(γ x·y + coef0)`.
//!
//! scikit-learn refuses rows with NaN or infinite values for this model; batchscore scores such a
//! row as NaN (score and decision), an outlier by libsvm's rule, so one broken reading neither
//! stops a batch nor passes as normal.

use serde::{Deserialize, Serialize};

use crate::detector::batch_rows;
use crate::{Detector, DetectorError};

/// Upper bound on support vectors × features: a bigger model is hostile, not a model.
const MAX_SV_VALUES: usize = 1 << 26;
/// Upper bound on the polynomial degree (libsvm takes any int; large degrees only overflow).
const MAX_DEGREE: u32 = 64;

/// A kernel with its resolved parameters (scikit-learn's `_gamma`, `coef0`, `degree`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kernel {
    Rbf { gamma: f64 },
    Linear,
    Poly { gamma: f64, coef0: f64, degree: u32 },
    Sigmoid { gamma: f64, coef0: f64 },
}

/// A one-class SVM as stored: unvalidated until converted into a [`OneClassSvm`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawOneClassSvm {
    pub n_features: u32,
    pub kernel: Kernel,
    /// Support vectors, row after row (`n_support × n_features` values).
    pub support_vectors: Vec<f64>,
    /// scikit-learn's `dual_coef_[0]`, one per support vector.
    pub dual_coef: Vec<f64>,
    /// scikit-learn's `intercept_[0]` (libsvm's `-rho`).
    pub intercept: f64,
}

/// A validated one-class SVM, ready to score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawOneClassSvm", into = "RawOneClassSvm")]
pub struct OneClassSvm {
    raw: RawOneClassSvm,
}

impl TryFrom<RawOneClassSvm> for OneClassSvm {
    type Error = DetectorError;

    fn try_from(raw: RawOneClassSvm) -> Result<Self, Self::Error> {
        let invalid = |msg: String| Err(DetectorError::InvalidModel(msg));
        let n = raw.n_features as usize;
        if n == 0 {
            return invalid("a one-class SVM needs at least one feature".into());
        }
        if raw.dual_coef.is_empty() {
            return invalid("no support vectors".into());
        }
        if raw.support_vectors.len() > MAX_SV_VALUES
            || raw.support_vectors.len() != raw.dual_coef.len() * n
        {
            return invalid(format!(
                "{} support-vector values for {} support vectors of {n} features",
                raw.support_vectors.len(),
                raw.dual_coef.len()
            ));
        }
        if !raw.support_vectors.iter().chain(&raw.dual_coef).all(|v| v.is_finite())
            || !raw.intercept.is_finite()
        {
            return invalid("support vectors, coefficients and intercept must be finite".into());
        }
        let gamma_ok = |g: f64| g.is_finite() && g > 0.0;
        match raw.kernel {
            Kernel::Rbf { gamma } if !gamma_ok(gamma) => {
                return invalid(format!("gamma {gamma} must be positive and finite"));
            }
            Kernel::Poly { gamma, coef0, degree }
                if !gamma_ok(gamma) || !coef0.is_finite() || degree > MAX_DEGREE =>
            {
                return invalid(format!(
                    "poly kernel needs gamma > 0, finite coef0 and degree <= {MAX_DEGREE}"
                ));
            }
            Kernel::Sigmoid { gamma, coef0 } if !gamma_ok(gamma) || !coef0.is_finite() => {
                return invalid("sigmoid kernel needs gamma > 0 and a finite coef0".into());
            }
            _ => {}
        }
        Ok(Self { raw })
    }
}

impl From<OneClassSvm> for RawOneClassSvm {
    fn from(svm: OneClassSvm) -> Self {
        svm.raw
    }
}

/// libsvm's `powi`: integer power by repeated squaring, in its order of multiplications.
fn powi(base: f64, times: u32) -> f64 {
    let (mut tmp, mut ret) = (base, 1.0);
    let mut t = times;
    while t > 0 {
        if t % 2 == 1 {
            ret *= tmp;
        }
        tmp *= tmp;
        t /= 2;
    }
    ret
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl OneClassSvm {
    /// Number of support vectors.
    pub fn n_support(&self) -> usize {
        self.raw.dual_coef.len()
    }

    /// The kernel and its parameters.
    pub fn kernel(&self) -> Kernel {
        self.raw.kernel
    }

    fn kernel_value(&self, sv: &[f64], x: &[f64]) -> f64 {
        match self.raw.kernel {
            Kernel::Rbf { gamma } => {
                let sum: f64 = sv.iter().zip(x).map(|(s, v)| (v - s) * (v - s)).sum();
                (-gamma * sum).exp()
            }
            Kernel::Linear => dot(x, sv),
            Kernel::Poly { gamma, coef0, degree } => powi(gamma * dot(x, sv) + coef0, degree),
            Kernel::Sigmoid { gamma, coef0 } => (gamma * dot(x, sv) + coef0).tanh(),
        }
    }

    /// scikit-learn's `decision_function` of every row of a batch.
    fn decisions(&self, columns: &[&[f64]]) -> Result<Vec<f64>, DetectorError> {
        let rows = batch_rows(columns, self.n_features())?;
        let mut x = vec![0.0; columns.len()];
        Ok((0..rows)
            .map(|r| {
                for (value, column) in x.iter_mut().zip(columns) {
                    *value = column[r];
                }
                self.decision(&x)
            })
            .collect())
    }

    /// scikit-learn's `decision_function` of one row.
    fn decision(&self, x: &[f64]) -> f64 {
        if !x.iter().all(|v| v.is_finite()) {
            return f64::NAN;
        }
        let n = self.raw.n_features as usize;
        let mut sum = 0.0;
        for (coef, sv) in self.raw.dual_coef.iter().zip(self.raw.support_vectors.chunks_exact(n)) {
            sum += coef * self.kernel_value(sv, x);
        }
        sum + self.raw.intercept
    }
}

impl Detector for OneClassSvm {
    fn kind(&self) -> &'static str {
        "one_class_svm"
    }

    fn n_features(&self) -> usize {
        self.raw.n_features as usize
    }

    /// scikit-learn's `offset_ = -intercept_`.
    fn offset(&self) -> f64 {
        -self.raw.intercept
    }

    fn is_anomaly(&self, decision: f64) -> bool {
        // libsvm: `(dec_value > 0) ? 1 : -1`, so NaN is an outlier too.
        decision.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
    }

    fn score_samples_into(&self, columns: &[&[f64]], out: &mut [f64]) -> Result<(), DetectorError> {
        let decisions = self.decisions(columns)?;
        if out.len() != decisions.len() {
            return Err(DetectorError::OutputLength { expected: decisions.len(), got: out.len() });
        }
        for (slot, decision) in out.iter_mut().zip(decisions) {
            *slot = decision + self.offset();
        }
        Ok(())
    }

    fn score(&self, columns: &[&[f64]]) -> Result<crate::Scored, DetectorError> {
        // The decision is kept as computed (not recomputed as score - offset) so that it is
        // libsvm's value bit for bit, and the outlier rule sees exactly that value.
        let decision = self.decisions(columns)?;
        let score = decision.iter().map(|d| d + self.offset()).collect();
        let is_anomaly = decision.iter().map(|d| self.is_anomaly(*d)).collect();
        Ok(crate::Scored { score, decision, is_anomaly })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svm(kernel: Kernel) -> OneClassSvm {
        OneClassSvm::try_from(RawOneClassSvm {
            n_features: 2,
            kernel,
            support_vectors: vec![0.0, 0.0, 1.0, 2.0],
            dual_coef: vec![0.5, 0.25],
            intercept: -0.3,
        })
        .unwrap()
    }

    #[test]
    fn kernels_follow_libsvm() {
        let x: [&[f64]; 2] = [&[1.0], &[1.0]];
        let rbf = svm(Kernel::Rbf { gamma: 0.5 }).score(&x).unwrap();
        let expected = 0.5 * (-0.5f64 * 2.0).exp() + 0.25 * (-0.5f64 * 1.0).exp() - 0.3;
        assert_eq!(rbf.decision, vec![expected]);
        assert_eq!(rbf.score, vec![expected + 0.3]);
        let lin = svm(Kernel::Linear).score(&x).unwrap();
        assert_eq!(lin.decision, vec![0.25 * 3.0 - 0.3]);
        let poly = svm(Kernel::Poly { gamma: 1.0, coef0: 1.0, degree: 3 }).score(&x).unwrap();
        assert_eq!(poly.decision, vec![0.5 * 1.0 + 0.25 * 64.0 - 0.3]);
        let sig = svm(Kernel::Sigmoid { gamma: 1.0, coef0: 0.0 }).score(&x).unwrap();
        assert_eq!(sig.decision, vec![0.25 * 3f64.tanh() - 0.3]);
        assert_eq!(powi(3.0, 0), 1.0);
        assert_eq!(powi(3.0, 5), 243.0);
    }

    #[test]
    fn zero_decision_is_an_outlier_and_non_finite_rows_score_nan() {
        // Linear kernel, one SV (1, 0), coefficient 1, intercept -0.5: x = (0.5, 0) decides 0.
        let s = OneClassSvm::try_from(RawOneClassSvm {
            n_features: 2,
            kernel: Kernel::Linear,
            support_vectors: vec![1.0, 0.0],
            dual_coef: vec![1.0],
            intercept: -0.5,
        })
        .unwrap();
        let out = s.score(&[&[0.5, 0.6, f64::INFINITY], &[0.0, 0.0, 0.0]]).unwrap();
        assert_eq!(out.decision[0], 0.0);
        assert_eq!(out.is_anomaly, vec![true, false, true]);
        assert!(out.score[2].is_nan() && out.decision[2].is_nan());
    }

    #[test]
    fn rejects_inconsistent_models() {
        let ok = RawOneClassSvm {
            n_features: 2,
            kernel: Kernel::Rbf { gamma: 1.0 },
            support_vectors: vec![0.0; 4],
            dual_coef: vec![1.0; 2],
            intercept: 0.0,
        };
        assert!(OneClassSvm::try_from(ok.clone()).is_ok());
        let bad = [
            RawOneClassSvm { support_vectors: vec![0.0; 3], ..ok.clone() },
            RawOneClassSvm { kernel: Kernel::Rbf { gamma: 0.0 }, ..ok.clone() },
            RawOneClassSvm { intercept: f64::NAN, ..ok.clone() },
            RawOneClassSvm { dual_coef: vec![], support_vectors: vec![], ..ok.clone() },
            RawOneClassSvm { n_features: 0, ..ok.clone() },
            RawOneClassSvm {
                kernel: Kernel::Poly { gamma: 1.0, coef0: 0.0, degree: 1000 },
                ..ok.clone()
            },
        ];
        for raw in bad {
            assert!(OneClassSvm::try_from(raw.clone()).is_err(), "{raw:?}");
        }
    }
}
