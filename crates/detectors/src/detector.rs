//! The `Detector` trait: one interface for every outlier detector.

use crate::DetectorError;

/// Scores of one batch, in scikit-learn's conventions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scored {
    /// `score_samples`: lower is more abnormal.
    pub score: Vec<f64>,
    /// `decision_function`: `score - offset`, negative for anomalies.
    pub decision: Vec<f64>,
    /// `predict == -1`: true exactly where [`Detector::is_anomaly`] holds for the decision.
    pub is_anomaly: Vec<bool>,
}

/// An outlier detector trained for one model key.
///
/// A batch is given as feature columns (one slice per feature, in the order the detector was
/// trained on, all of the same length), because readings arrive column by column from Parquet and
/// a column layout lets a detector walk one feature at a time.
pub trait Detector: Send + Sync {
    /// Short name of the algorithm, as stored in model metadata (e.g. `isolation_forest`).
    fn kind(&self) -> &'static str;

    /// Number of feature columns the detector expects.
    fn n_features(&self) -> usize;

    /// The threshold subtracted from scores: `decision = score - offset`.
    fn offset(&self) -> f64;

    /// The outlier rule on a decision value: scikit-learn's IsolationForest predicts an outlier
    /// where `decision < 0`; libsvm's one-class SVM unless `decision > 0` (so also at 0 and NaN).
    fn is_anomaly(&self, decision: f64) -> bool {
        decision < 0.0
    }

    /// Writes `score_samples` of every row of `columns` into `out`.
    fn score_samples_into(&self, columns: &[&[f64]], out: &mut [f64]) -> Result<(), DetectorError>;

    /// Scores, decisions and anomaly flags of a batch.
    fn score(&self, columns: &[&[f64]]) -> Result<Scored, DetectorError> {
        let rows = batch_rows(columns, self.n_features())?;
        let mut score = vec![0.0; rows];
        self.score_samples_into(columns, &mut score)?;
        let offset = self.offset();
        let decision: Vec<f64> = score.iter().map(|s| s - offset).collect();
        let is_anomaly = decision.iter().map(|d| self.is_anomaly(*d)).collect();
        Ok(Scored { score, decision, is_anomaly })
    }
}

/// Checks a batch's shape against the expected feature count and returns its row count.
pub(crate) fn batch_rows(columns: &[&[f64]], n_features: usize) -> Result<usize, DetectorError> {
    if columns.len() != n_features {
        return Err(DetectorError::FeatureCount { expected: n_features, got: columns.len() });
    }
    let rows = columns.first().map_or(0, |c| c.len());
    for (column, values) in columns.iter().enumerate() {
        if values.len() != rows {
            return Err(DetectorError::RaggedColumns { column, expected: rows, got: values.len() });
        }
    }
    Ok(rows)
}
