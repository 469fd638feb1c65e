//! StandardScaler and pipelines of a scaler and a detector, as scikit-learn applies them.
//!
//! scikit-learn's `StandardScaler.transform` computes `x -= mean_` (if `with_mean`), then
//! `x /= scale_` (if `with_std`), in float64, where a zero-variance feature has `scale_ = 1`.
//! A [`Scaled`] detector applies that to every row before its inner detector, as
//! `Pipeline([("scaler", StandardScaler()), ("detector", ...)])` does.

use serde::{Deserialize, Serialize};

use crate::detector::batch_rows;
use crate::{Detector, DetectorError, Scored};

/// A fitted StandardScaler: `None` for a step that is switched off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawStandardScaler", into = "RawStandardScaler")]
pub struct StandardScaler {
    raw: RawStandardScaler,
}

/// A StandardScaler as stored: unvalidated until converted into a [`StandardScaler`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawStandardScaler {
    pub n_features: u32,
    /// `mean_` when `with_mean`, else `None`.
    pub mean: Option<Vec<f64>>,
    /// `scale_` when `with_std` (zero-variance features already 1), else `None`.
    pub scale: Option<Vec<f64>>,
}

impl TryFrom<RawStandardScaler> for StandardScaler {
    type Error = DetectorError;

    fn try_from(raw: RawStandardScaler) -> Result<Self, Self::Error> {
        let n = raw.n_features as usize;
        let invalid = |msg: String| Err(DetectorError::InvalidModel(msg));
        if n == 0 {
            return invalid("a scaler needs at least one feature".into());
        }
        for (name, values) in [("mean", &raw.mean), ("scale", &raw.scale)] {
            if let Some(v) = values {
                if v.len() != n {
                    return invalid(format!(
                        "scaler {name} has {} values for {n} features",
                        v.len()
                    ));
                }
                if !v.iter().all(|x| x.is_finite()) {
                    return invalid(format!("scaler {name} values must be finite"));
                }
            }
        }
        if raw.scale.as_ref().is_some_and(|s| s.contains(&0.0)) {
            return invalid("scaler scale values must not be 0".into());
        }
        Ok(Self { raw })
    }
}

impl From<StandardScaler> for RawStandardScaler {
    fn from(s: StandardScaler) -> Self {
        s.raw
    }
}

impl StandardScaler {
    /// Fits `mean_` and `scale_` (the population standard deviation, as scikit-learn's
    /// `StandardScaler()`) on the finite values of each column; a feature without spread, or
    /// without finite values, gets mean 0 and scale 1, so it passes through unscaled.
    pub fn fit(columns: &[&[f64]]) -> Result<Self, DetectorError> {
        batch_rows(columns, columns.len())?;
        let mut mean = Vec::with_capacity(columns.len());
        let mut scale = Vec::with_capacity(columns.len());
        for column in columns {
            let finite: Vec<f64> = column.iter().copied().filter(|x| x.is_finite()).collect();
            let n = finite.len() as f64;
            let m = if finite.is_empty() { 0.0 } else { finite.iter().sum::<f64>() / n };
            let var = if finite.is_empty() {
                0.0
            } else {
                finite.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n
            };
            let sd = var.sqrt();
            mean.push(if m.is_finite() { m } else { 0.0 });
            scale.push(if sd.is_finite() && sd > 0.0 { sd } else { 1.0 });
        }
        Self::try_from(RawStandardScaler {
            n_features: u32::try_from(columns.len()).unwrap_or(u32::MAX),
            mean: Some(mean),
            scale: Some(scale),
        })
    }

    /// Transforms every column, as a pipeline's first step does.
    pub fn transform_columns(&self, columns: &[&[f64]]) -> Result<Vec<Vec<f64>>, DetectorError> {
        batch_rows(columns, self.n_features())?;
        Ok(columns.iter().enumerate().map(|(f, c)| self.transform(f, c)).collect())
    }

    /// Number of features it transforms.
    pub fn n_features(&self) -> usize {
        self.raw.n_features as usize
    }

    /// Transforms one column (feature `f`) in scikit-learn's order of operations.
    fn transform(&self, f: usize, column: &[f64]) -> Vec<f64> {
        let mean = self.raw.mean.as_ref().map(|m| m[f]);
        let scale = self.raw.scale.as_ref().map(|s| s[f]);
        column
            .iter()
            .map(|&x| {
                let x = mean.map_or(x, |m| x - m);
                scale.map_or(x, |s| x / s)
            })
            .collect()
    }
}

/// A detector behind a StandardScaler: scikit-learn's `Pipeline(scaler, detector)`.
///
/// Decoding checks that both steps take the same number of features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    try_from = "RawScaled<D>",
    bound(deserialize = "D: Detector + Deserialize<'de>", serialize = "D: Serialize")
)]
pub struct Scaled<D> {
    scaler: StandardScaler,
    detector: D,
}

/// A pipeline as stored, checked by [`Scaled::new`] on decoding.
#[derive(Deserialize)]
struct RawScaled<D> {
    scaler: StandardScaler,
    detector: D,
}

impl<D: Detector> TryFrom<RawScaled<D>> for Scaled<D> {
    type Error = DetectorError;

    fn try_from(raw: RawScaled<D>) -> Result<Self, Self::Error> {
        Scaled::new(raw.scaler, raw.detector)
    }
}

impl<D: Detector> Scaled<D> {
    /// Joins a scaler and a detector trained on the scaler's output.
    pub fn new(scaler: StandardScaler, detector: D) -> Result<Self, DetectorError> {
        if scaler.n_features() != detector.n_features() {
            return Err(DetectorError::InvalidModel(format!(
                "scaler of {} features before a detector of {}",
                scaler.n_features(),
                detector.n_features()
            )));
        }
        Ok(Self { scaler, detector })
    }

    /// The detector after the scaler.
    pub fn detector(&self) -> &D {
        &self.detector
    }

    fn scaled(&self, columns: &[&[f64]]) -> Result<Vec<Vec<f64>>, DetectorError> {
        self.scaler.transform_columns(columns)
    }
}

impl<D: Detector> Detector for Scaled<D> {
    fn kind(&self) -> &'static str {
        match self.detector.kind() {
            "isolation_forest" => "standard_scaler+isolation_forest",
            "one_class_svm" => "standard_scaler+one_class_svm",
            "pca" => "standard_scaler+pca",
            _ => "standard_scaler+detector",
        }
    }

    fn n_features(&self) -> usize {
        self.scaler.n_features()
    }

    fn offset(&self) -> f64 {
        self.detector.offset()
    }

    fn is_anomaly(&self, decision: f64) -> bool {
        self.detector.is_anomaly(decision)
    }

    fn score_samples_into(&self, columns: &[&[f64]], out: &mut [f64]) -> Result<(), DetectorError> {
        let scaled = self.scaled(columns)?;
        let views: Vec<&[f64]> = scaled.iter().map(Vec::as_slice).collect();
        self.detector.score_samples_into(&views, out)
    }

    fn score(&self, columns: &[&[f64]]) -> Result<Scored, DetectorError> {
        let scaled = self.scaled(columns)?;
        let views: Vec<&[f64]> = scaled.iter().map(Vec::as_slice).collect();
        self.detector.score(&views)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transforms_like_scikit_learn_and_validates() {
        let s = StandardScaler::try_from(RawStandardScaler {
            n_features: 2,
            mean: Some(vec![1.0, 2.0]),
            scale: Some(vec![2.0, 1.0]),
        })
        .unwrap();
        assert_eq!(s.transform(0, &[3.0, f64::INFINITY]), vec![1.0, f64::INFINITY]);
        let no_mean = StandardScaler::try_from(RawStandardScaler {
            n_features: 1,
            mean: None,
            scale: Some(vec![4.0]),
        })
        .unwrap();
        assert_eq!(no_mean.transform(0, &[2.0]), vec![0.5]);
        // Fitting: population standard deviation over finite values; no spread or no finite
        // value scales by 1; ragged columns are an error.
        let nan = f64::NAN;
        let fitted =
            StandardScaler::fit(&[&[1.0, 5.0, nan], &[5.0, 5.0, 5.0], &[nan, nan, nan]]).unwrap();
        assert_eq!(fitted.raw.mean, Some(vec![3.0, 5.0, 0.0]));
        assert_eq!(fitted.raw.scale, Some(vec![2.0, 1.0, 1.0]));
        let columns = fitted.transform_columns(&[&[7.0], &[6.0], &[2.0]]).unwrap();
        assert_eq!(columns, vec![vec![2.0], vec![1.0], vec![2.0]]);
        assert!(StandardScaler::fit(&[&[1.0, 2.0], &[1.0]]).is_err());
        for bad in [
            RawStandardScaler { n_features: 2, mean: Some(vec![1.0]), scale: None },
            RawStandardScaler { n_features: 1, mean: None, scale: Some(vec![0.0]) },
            RawStandardScaler { n_features: 1, mean: Some(vec![f64::NAN]), scale: None },
        ] {
            assert!(StandardScaler::try_from(bad).is_err());
        }
    }
}
