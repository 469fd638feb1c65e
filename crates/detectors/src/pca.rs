//! PCA reconstruction error: the anomaly score of the Azure Databricks anomaly sample, per key.
//!
//! Training centres the rows, fits a PCA with smartcore, and keeps the first `k` components
//! (`k` given, or the fewest that explain a target share of the variance). A row's score is
//! minus its squared reconstruction error, `-‖(x − μ) − PᵀP(x − μ)‖²`, so lower is more abnormal
//! as in scikit-learn's `score_samples`; the offset is the `contamination` percentile of the
//! training scores, `decision = score − offset`, an anomaly where `decision < 0`.
//!
//! Each row is scored on its own: unlike the Databricks sample, which min-max normalises the
//! errors of each batch, a row's score never depends on which other rows share its batch. A row
//! with a NaN scores NaN (not an anomaly); one with an infinite value scores −∞ (an anomaly).

use serde::{Deserialize, Serialize};
use smartcore::decomposition::pca::{PCA, PCAParameters};
use smartcore::linalg::basic::arrays::Array;
use smartcore::linalg::basic::matrix::DenseMatrix;

use crate::detector::batch_rows;
use crate::iforest::percentile_linear;
use crate::{Detector, DetectorError, Scaled, StandardScaler};

/// How many principal components a model keeps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PcaComponents {
    /// Exactly this many (at most the number of features).
    Count(usize),
    /// The fewest components whose explained variance reaches this share, in (0, 1].
    Variance(f64),
}

/// PCA hyper-parameters, before validation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PcaParams {
    pub components: PcaComponents,
    /// Share of training rows expected to be anomalies, in (0, 0.5]: sets the offset.
    pub contamination: f64,
    /// Standardise each feature (training mean and standard deviation) before the PCA, so
    /// that sensors on large scales do not own the components ([`ValidPcaParams::fit_standardized`]).
    #[serde(default)]
    pub standardize: bool,
}

impl Default for PcaParams {
    fn default() -> Self {
        Self { components: PcaComponents::Variance(0.95), contamination: 0.01, standardize: false }
    }
}

/// Checked PCA hyper-parameters: the only way to fit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ValidPcaParams(PcaParams);

impl PcaParams {
    /// Validates the parameters.
    pub fn check(self) -> Result<ValidPcaParams, DetectorError> {
        let invalid = |name, reason: String| Err(DetectorError::InvalidParameter { name, reason });
        match self.components {
            PcaComponents::Count(0) => return invalid("components", "must be at least 1".into()),
            PcaComponents::Variance(v) if !(v > 0.0 && v <= 1.0) => {
                return invalid("components", format!("variance share {v} is outside (0, 1]"));
            }
            _ => {}
        }
        if !(self.contamination > 0.0 && self.contamination <= 0.5) {
            return invalid("contamination", format!("{} is outside (0, 0.5]", self.contamination));
        }
        Ok(ValidPcaParams(self))
    }
}

impl ValidPcaParams {
    /// The parameters.
    pub fn params(&self) -> &PcaParams {
        &self.0
    }

    /// Fits a StandardScaler on the training rows, then the PCA on the scaled rows: the
    /// pipeline `Pipeline(StandardScaler(), PCA)` of scikit-learn terms.
    pub fn fit_standardized(&self, columns: &[&[f64]]) -> Result<Scaled<Pca>, DetectorError> {
        let scaler = StandardScaler::fit(columns)?;
        let scaled = scaler.transform_columns(columns)?;
        let views: Vec<&[f64]> = scaled.iter().map(Vec::as_slice).collect();
        Scaled::new(scaler, self.fit(&views)?)
    }

    /// Fits on the rows without NaN or infinite values.
    pub fn fit(&self, columns: &[&[f64]]) -> Result<Pca, DetectorError> {
        let d = columns.len();
        if d == 0 {
            return Err(DetectorError::FeatureCount { expected: 1, got: 0 });
        }
        let rows = batch_rows(columns, d)?;
        let keep: Vec<usize> =
            (0..rows).filter(|&r| columns.iter().all(|c| c[r].is_finite())).collect();
        let n = keep.len();
        if n < 2 {
            return Err(DetectorError::NoTrainingRows { rows });
        }
        if let PcaComponents::Count(k) = self.0.components
            && k > d
        {
            return Err(DetectorError::InvalidParameter {
                name: "components",
                reason: format!("{k} components for {d} features"),
            });
        }
        // A covariance entry is bounded by the product of its features' root sums of squares
        // (Cauchy-Schwarz): where every sum of squares is finite, so is the whole covariance.
        // Values near f64's limits (±1e308) overflow it, and the eigen decomposition of an
        // infinite matrix is meaningless (smartcore panicked on it).
        for (feature, column) in columns.iter().enumerate() {
            if !keep.iter().map(|&r| column[r] * column[r]).sum::<f64>().is_finite() {
                return Err(DetectorError::Overflow { feature });
            }
        }
        // Column-major, as the columns arrive.
        let values: Vec<f64> = columns.iter().flat_map(|c| keep.iter().map(|&r| c[r])).collect();
        let fit_error = |e: smartcore::error::Failed| DetectorError::InvalidModel(e.to_string());
        let matrix = DenseMatrix::new(n, d, values, true).map_err(fit_error)?;
        let pca =
            PCA::fit(&matrix, PCAParameters::default().with_n_components(d)).map_err(fit_error)?;
        // Explained variance of each component: the variance of the training rows along it.
        let projected = pca.transform(&matrix).map_err(fit_error)?;
        let variances: Vec<f64> = (0..d)
            .map(|j| {
                let col: Vec<f64> = (0..n).map(|r| *projected.get((r, j))).collect();
                let mean = col.iter().sum::<f64>() / n as f64;
                col.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64
            })
            .collect();
        let total: f64 = variances.iter().sum();
        let k = match self.0.components {
            PcaComponents::Count(k) => k,
            // Constant data explains nothing: keep no component, every deviation is error.
            PcaComponents::Variance(_) if total <= 0.0 => 0,
            PcaComponents::Variance(share) => {
                let mut sum = 0.0;
                variances
                    .iter()
                    .position(|v| {
                        sum += v;
                        sum / total >= share - 1e-12
                    })
                    .map_or(d, |i| i + 1)
            }
        };
        let components_matrix = pca.components();
        let mut components = Vec::with_capacity(k * d);
        for j in 0..k {
            components.extend((0..d).map(|f| *components_matrix.get((f, j))));
        }
        let mean: Vec<f64> =
            columns.iter().map(|c| keep.iter().map(|&r| c[r]).sum::<f64>() / n as f64).collect();
        let mut pca = Pca::try_from(RawPca {
            n_features: d as u32,
            mean,
            components,
            explained_variance: variances[..k].to_vec(),
            offset: 0.0,
        })?;
        let kept: Vec<Vec<f64>> =
            columns.iter().map(|c| keep.iter().map(|&r| c[r]).collect()).collect();
        let views: Vec<&[f64]> = kept.iter().map(Vec::as_slice).collect();
        let mut scores = vec![0.0; n];
        pca.score_samples_into(&views, &mut scores)?;
        pca.raw.offset = percentile_linear(&mut scores, 100.0 * self.0.contamination);
        Ok(pca)
    }
}

/// A PCA model as stored: unvalidated until converted into a [`Pca`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawPca {
    pub n_features: u32,
    /// Training mean of each feature.
    pub mean: Vec<f64>,
    /// The kept components, one after another (`k × n_features` values, unit vectors).
    pub components: Vec<f64>,
    /// Training variance along each kept component.
    pub explained_variance: Vec<f64>,
    pub offset: f64,
}

/// A validated PCA reconstruction-error detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawPca", into = "RawPca")]
pub struct Pca {
    raw: RawPca,
}

impl TryFrom<RawPca> for Pca {
    type Error = DetectorError;

    fn try_from(raw: RawPca) -> Result<Self, Self::Error> {
        let d = raw.n_features as usize;
        let invalid = |msg: String| Err(DetectorError::InvalidModel(msg));
        if d == 0 || d > 1 << 16 {
            return invalid(format!("PCA of {d} features"));
        }
        if raw.mean.len() != d || !raw.components.len().is_multiple_of(d) {
            return invalid("PCA mean or components of the wrong length".into());
        }
        let k = raw.components.len() / d;
        if k > d || raw.explained_variance.len() != k {
            return invalid(format!("{k} components for {d} features"));
        }
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        if !finite(&raw.mean) || !finite(&raw.components) || !finite(&raw.explained_variance) {
            return invalid("PCA values must be finite".into());
        }
        if !raw.offset.is_finite() {
            return invalid(format!("offset {} is not finite", raw.offset));
        }
        Ok(Self { raw })
    }
}

impl From<Pca> for RawPca {
    fn from(p: Pca) -> Self {
        p.raw
    }
}

impl Pca {
    /// Number of kept components.
    pub fn n_components(&self) -> usize {
        self.raw.components.len() / self.raw.n_features as usize
    }

    /// Training variance along each kept component.
    pub fn explained_variance(&self) -> &[f64] {
        &self.raw.explained_variance
    }

    /// Minus the squared reconstruction error of one centred row.
    fn score_row(&self, centred: &[f64]) -> f64 {
        if centred.iter().any(|v| v.is_nan()) {
            return f64::NAN;
        }
        if centred.iter().any(|v| v.is_infinite()) {
            return f64::NEG_INFINITY;
        }
        let d = centred.len();
        let mut residual = centred.to_vec();
        for component in self.raw.components.chunks_exact(d) {
            let projection: f64 = component.iter().zip(centred).map(|(c, x)| c * x).sum();
            for (r, c) in residual.iter_mut().zip(component) {
                *r -= projection * c;
            }
        }
        -residual.iter().map(|r| r * r).sum::<f64>()
    }
}

impl Detector for Pca {
    fn kind(&self) -> &'static str {
        "pca"
    }

    fn n_features(&self) -> usize {
        self.raw.n_features as usize
    }

    fn offset(&self) -> f64 {
        self.raw.offset
    }

    fn score_samples_into(&self, columns: &[&[f64]], out: &mut [f64]) -> Result<(), DetectorError> {
        let rows = batch_rows(columns, self.n_features())?;
        if out.len() != rows {
            return Err(DetectorError::OutputLength { expected: rows, got: out.len() });
        }
        let mut centred = vec![0.0; columns.len()];
        for (r, slot) in out.iter_mut().enumerate() {
            for ((value, column), mean) in centred.iter_mut().zip(columns).zip(&self.raw.mean) {
                *value = column[r] - mean;
            }
            *slot = self.score_row(&centred);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows near the plane z = x + y, with a little noise.
    fn plane(n: usize) -> Vec<Vec<f64>> {
        let x: Vec<f64> = (0..n).map(|i| ((i * 37) % 101) as f64 / 10.0).collect();
        let y: Vec<f64> = (0..n).map(|i| ((i * 53) % 97) as f64 / 10.0).collect();
        let z: Vec<f64> = (0..n).map(|i| x[i] + y[i] + ((i % 7) as f64 - 3.0) * 0.01).collect();
        vec![x, y, z]
    }

    fn refs(cols: &[Vec<f64>]) -> Vec<&[f64]> {
        cols.iter().map(Vec::as_slice).collect()
    }

    #[test]
    fn off_plane_rows_are_anomalies_and_scores_do_not_depend_on_the_batch() {
        let cols = plane(500);
        let params = PcaParams {
            components: PcaComponents::Variance(0.99),
            contamination: 0.01,
            standardize: false,
        };
        let pca = params.check().unwrap().fit(&refs(&cols)).unwrap();
        assert_eq!(pca.n_components(), 2);
        // Rows (1, 1, 2) on the plane, (2, NaN, 1), and (4, 3, 10) off it; given as columns.
        let test: Vec<Vec<f64>> =
            vec![vec![1.0, 2.0, 4.0], vec![1.0, f64::NAN, 3.0], vec![2.0, 1.0, 10.0]];
        let scored = pca.score(&refs(&test)).unwrap();
        assert!(!scored.is_anomaly[0], "on the plane");
        assert!(scored.is_anomaly[2], "off the plane");
        assert!(scored.score[1].is_nan() && !scored.is_anomaly[1]);
        let inf: Vec<Vec<f64>> = vec![vec![f64::INFINITY], vec![1.0], vec![2.0]];
        assert!(pca.score(&refs(&inf)).unwrap().is_anomaly[0]);
        // One row alone scores the same as in a batch.
        let alone: Vec<Vec<f64>> = test.iter().map(|c| vec![c[2]]).collect();
        assert_eq!(pca.score(&refs(&alone)).unwrap().score[0], scored.score[2]);
        // About `contamination` of the training rows fall below the offset.
        let train = pca.score(&refs(&cols)).unwrap();
        let flagged = train.is_anomaly.iter().filter(|a| **a).count();
        assert!(flagged <= 10, "{flagged}");
    }

    /// Regression: values near f64's limits made smartcore panic inside the fit, taking every
    /// other device's training down with it.
    #[test]
    fn values_near_the_f64_limit_are_an_error_not_a_panic() {
        let mut cols = plane(50);
        cols[1][3] = 1e308;
        cols[1][4] = -1e308;
        let params = PcaParams::default().check().unwrap();
        assert_eq!(params.fit(&refs(&cols)).unwrap_err(), DetectorError::Overflow { feature: 1 });
        assert!(matches!(
            params.fit_standardized(&refs(&cols)).unwrap_err(),
            DetectorError::Overflow { .. }
        ));
        // Large but representable values still fit.
        let big: Vec<Vec<f64>> =
            plane(50).into_iter().map(|c| c.into_iter().map(|v| v * 1e100).collect()).collect();
        assert!(params.fit(&refs(&big)).is_ok());
    }

    #[test]
    fn standardized_pca_scales_each_feature_before_the_components() {
        // The plane, with z in thousandths: unscaled, z's share of the variance is negligible.
        let mut cols = plane(500);
        cols[2].iter_mut().for_each(|z| *z *= 1000.0);
        let params = PcaParams { components: PcaComponents::Count(2), ..PcaParams::default() };
        let pipeline = params.check().unwrap().fit_standardized(&refs(&cols)).unwrap();
        assert_eq!(pipeline.kind(), "standard_scaler+pca");
        // The pipeline scores what its PCA scores on the scaled rows, offset included.
        let test: Vec<Vec<f64>> = vec![vec![1.0, 4.0], vec![1.0, 3.0], vec![2000.0, 10000.0]];
        let scaler = StandardScaler::fit(&refs(&cols)).unwrap();
        let scaled = scaler.transform_columns(&refs(&test)).unwrap();
        let direct = pipeline.detector().score(&refs(&scaled)).unwrap();
        let piped = pipeline.score(&refs(&test)).unwrap();
        assert_eq!(piped.score, direct.score);
        assert_eq!(pipeline.offset(), pipeline.detector().offset());
        assert!(!piped.is_anomaly[0] && piped.is_anomaly[1], "on and off the scaled plane");
    }

    #[test]
    fn parameters_and_models_are_validated() {
        let bad = [
            PcaParams { components: PcaComponents::Count(0), ..PcaParams::default() },
            PcaParams { components: PcaComponents::Variance(1.5), ..PcaParams::default() },
            PcaParams { contamination: 0.0, ..PcaParams::default() },
        ];
        for p in bad {
            assert!(p.check().is_err(), "{p:?}");
        }
        let three = PcaParams { components: PcaComponents::Count(4), ..PcaParams::default() };
        assert!(three.check().unwrap().fit(&refs(&plane(50))).is_err());
        assert!(
            Pca::try_from(RawPca {
                n_features: 2,
                mean: vec![0.0; 2],
                components: vec![1.0; 3],
                explained_variance: vec![1.0],
                offset: 0.0,
            })
            .is_err()
        );
        let constant = vec![vec![1.0; 20], vec![2.0; 20]];
        let pca = PcaParams::default().check().unwrap().fit(&refs(&constant)).unwrap();
        assert_eq!(pca.n_components(), 0);
        let s = pca.score(&[&[1.0, 1.0], &[2.0, 2.5]]).unwrap();
        assert!(!s.is_anomaly[0] && s.is_anomaly[1]);
    }
}
