//! Fitting an IsolationForest: scikit-learn's algorithm with a seeded, thread-independent RNG.
//!
//! Each tree draws `max_samples_` rows (without replacement, or with replacement when
//! `bootstrap`), and grows to depth `ceil(log2(max_samples_))`. At each node it picks a random
//! feature that is not constant on the node's rows and a threshold uniform in `[min, max)` of that
//! feature, both as float32 values like scikit-learn's `ExtraTreeRegressor(splitter="random")`.
//! The trees differ from scikit-learn's for the same seed (another RNG), but have the same
//! distribution; scoring of any given trees is exact.

use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::detector::batch_rows;
use crate::iforest::params::{Contamination, ValidIsolationForestParams};
use crate::iforest::raw::LEAF;
use crate::{Detector, DetectorError, IsolationForest, RawForest, RawNode};

impl ValidIsolationForestParams {
    /// Fits a forest on `columns` (one slice per feature, equal lengths).
    ///
    /// Rows with a NaN or infinite value are left out of training. The result depends only on the
    /// parameters (including the seed) and the data, never on threads or timing.
    pub fn fit(&self, columns: &[&[f64]]) -> Result<IsolationForest, DetectorError> {
        let p = &self.0;
        let n_features = columns.len();
        if n_features == 0 {
            return Err(DetectorError::FeatureCount { expected: 1, got: 0 });
        }
        let rows = batch_rows(columns, n_features)?;
        let data = TrainingRows::new(columns, rows);
        if data.n_rows == 0 {
            return Err(DetectorError::NoTrainingRows { rows });
        }
        let max_samples = p.max_samples.resolve(data.n_rows);
        let max_features = p.max_features.resolve(n_features)?;
        // ceil(log2(max(max_samples, 2))) as in scikit-learn.
        let max_depth = (max_samples.max(2) as f64).log2().ceil() as usize;

        let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
        let mut trees = Vec::with_capacity(p.n_estimators);
        for _ in 0..p.n_estimators {
            let mut tree_rng = ChaCha8Rng::seed_from_u64(rng.next_u64());
            let features: Vec<usize> = if max_features < n_features {
                rand::seq::index::sample(&mut tree_rng, n_features, max_features).into_vec()
            } else {
                (0..n_features).collect()
            };
            let mut sample: Vec<usize> = if p.bootstrap {
                // Duplicates do not change min/max splits, and scikit-learn's n_node_samples
                // counts distinct rows, so a deduplicated bootstrap sample is equivalent.
                let mut s: Vec<usize> =
                    (0..max_samples).map(|_| tree_rng.random_range(0..data.n_rows)).collect();
                s.sort_unstable();
                s.dedup();
                s
            } else {
                rand::seq::index::sample(&mut tree_rng, data.n_rows, max_samples).into_vec()
            };
            trees.push(grow_tree(&data, &features, &mut sample, max_depth, &mut tree_rng));
        }
        let forest = IsolationForest::try_from(RawForest {
            n_features: n_features as u32,
            max_samples: max_samples as u64,
            offset: -0.5,
            trees,
        })?;
        match p.contamination {
            Contamination::Auto => Ok(forest),
            Contamination::Fraction(c) => {
                let usable = data.columns_f64();
                let refs: Vec<&[f64]> = usable.iter().map(Vec::as_slice).collect();
                let mut scores = vec![0.0; data.n_rows];
                forest.score_samples_into(&refs, &mut scores)?;
                let offset = percentile_linear(&mut scores, 100.0 * c);
                Ok(forest.with_offset(offset))
            }
        }
    }
}

/// Training rows without non-finite values, row-major as float32 (scikit-learn's dtype).
struct TrainingRows {
    values: Vec<f32>,
    n_rows: usize,
    n_features: usize,
}

impl TrainingRows {
    fn new(columns: &[&[f64]], rows: usize) -> Self {
        let n_features = columns.len();
        let mut values = Vec::with_capacity(rows * n_features);
        let mut n_rows = 0;
        for row in 0..rows {
            if columns.iter().all(|c| c[row].is_finite() && (c[row] as f32).is_finite()) {
                values.extend(columns.iter().map(|c| c[row] as f32));
                n_rows += 1;
            }
        }
        Self { values, n_rows, n_features }
    }

    fn get(&self, row: usize, feature: usize) -> f32 {
        self.values[row * self.n_features + feature]
    }

    fn columns_f64(&self) -> Vec<Vec<f64>> {
        (0..self.n_features)
            .map(|f| (0..self.n_rows).map(|r| f64::from(self.get(r, f))).collect())
            .collect()
    }
}

/// Grows one tree over `sample` (reordered in place) in depth-first pre-order, so every child
/// comes after its parent and the left child directly follows it, as in scikit-learn.
fn grow_tree(
    data: &TrainingRows,
    features: &[usize],
    sample: &mut [usize],
    max_depth: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<RawNode> {
    struct Pending {
        start: usize,
        end: usize,
        depth: usize,
        parent: Option<(usize, bool)>,
    }
    let mut nodes: Vec<RawNode> = Vec::new();
    let mut stack = vec![Pending { start: 0, end: sample.len(), depth: 0, parent: None }];
    let mut order = features.to_vec();
    while let Some(p) = stack.pop() {
        let id = nodes.len();
        if let Some((parent, is_left)) = p.parent {
            if is_left {
                nodes[parent].left = id as u32;
            } else {
                nodes[parent].right = id as u32;
            }
        }
        let rows = &mut sample[p.start..p.end];
        let n = rows.len();
        let mut node = RawNode {
            feature: 0,
            threshold: -2.0,
            left: LEAF,
            right: LEAF,
            missing_go_to_left: false,
            n_node_samples: n as u64,
        };
        let split = if p.depth >= max_depth || n <= 1 {
            None
        } else {
            order.shuffle(rng);
            choose_split(data, &order, rows, rng)
        };
        if let Some((feature, threshold)) = split {
            let n_left = partition(rows, |r| f64::from(data.get(r, feature)) <= threshold);
            node.feature = feature as u32;
            node.threshold = threshold;
            // Without missing values in training, scikit-learn sends NaN to the larger child,
            // the right one on ties.
            node.missing_go_to_left = n_left > n - n_left;
            // Placeholders until the children are created; right is pushed first so the left
            // subtree is emitted first.
            node.left = 0;
            node.right = 0;
            let mid = p.start + n_left;
            stack.push(Pending {
                start: mid,
                end: p.end,
                depth: p.depth + 1,
                parent: Some((id, false)),
            });
            stack.push(Pending {
                start: p.start,
                end: mid,
                depth: p.depth + 1,
                parent: Some((id, true)),
            });
        }
        nodes.push(node);
    }
    nodes
}

/// The first feature in `order` that is not constant on `rows`, with a random threshold.
fn choose_split(
    data: &TrainingRows,
    order: &[usize],
    rows: &[usize],
    rng: &mut ChaCha8Rng,
) -> Option<(usize, f64)> {
    for &feature in order {
        let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
        for &r in rows {
            let v = data.get(r, feature);
            min = min.min(v);
            max = max.max(v);
        }
        if max > min {
            let (lo, hi) = (f64::from(min), f64::from(max));
            let mut threshold = lo + rng.random::<f64>() * (hi - lo);
            // scikit-learn: a threshold equal to the max would leave the right side empty.
            if threshold >= hi {
                threshold = lo;
            }
            return Some((feature, threshold));
        }
    }
    None
}

/// Moves the rows satisfying `left` to the front; returns how many there are.
fn partition(rows: &mut [usize], left: impl Fn(usize) -> bool) -> usize {
    let mut next = 0;
    for i in 0..rows.len() {
        if left(rows[i]) {
            rows.swap(i, next);
            next += 1;
        }
    }
    next
}

/// `np.percentile(values, q)` with numpy's default linear method, to the bit.
pub(crate) fn percentile_linear(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let quantile = q / 100.0;
    // numpy: n * q + (alpha + q * (1 - alpha - beta)) - 1 with alpha = beta = 1, evaluated in
    // that order so the rounding matches.
    let (alpha, beta) = (1.0, 1.0);
    let virtual_index = (n as f64 * quantile + (alpha + quantile * (1.0 - alpha - beta))) - 1.0;
    let virtual_index = virtual_index.clamp(0.0, (n - 1) as f64);
    let previous = virtual_index.floor();
    let gamma = virtual_index - previous;
    let lo = previous as usize;
    let hi = (lo + 1).min(n - 1);
    let (a, b) = (values[lo], values[hi]);
    let diff = b - a;
    if gamma >= 0.5 { b - diff * (1.0 - gamma) } else { a + diff * gamma }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IsolationForestParams, MaxFeatures, MaxSamples};

    fn blob(n: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..3).map(|_| (0..n).map(|_| rng.random::<f64>()).collect()).collect()
    }

    fn refs(cols: &[Vec<f64>]) -> Vec<&[f64]> {
        cols.iter().map(Vec::as_slice).collect()
    }

    #[test]
    fn percentile_matches_numpy() {
        // np.percentile([1, 2, 3, 4], 10) == 1.3; np.percentile([1, 2, 3, 4], 90) == 3.7
        assert!((percentile_linear(&mut [4.0, 1.0, 3.0, 2.0], 10.0) - 1.3).abs() < 1e-15);
        assert!((percentile_linear(&mut [4.0, 1.0, 3.0, 2.0], 90.0) - 3.7).abs() < 1e-15);
        assert_eq!(percentile_linear(&mut [5.0], 10.0), 5.0);
    }

    #[test]
    fn fit_is_deterministic_and_isolates_outliers() {
        let mut cols = blob(500, 1);
        cols[0][7] = 25.0;
        let params = IsolationForestParams { seed: 42, ..Default::default() }.check().unwrap();
        let a = params.fit(&refs(&cols)).unwrap();
        let b = params.fit(&refs(&cols)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.n_trees(), 100);
        assert_eq!(a.max_samples(), 256);
        let scored = a.score(&refs(&cols)).unwrap();
        let min = scored.score.iter().copied().fold(f64::INFINITY, f64::min);
        assert_eq!(scored.score[7], min, "the outlier has the lowest score");
        assert!(scored.is_anomaly[7]);
        let other = IsolationForestParams { seed: 43, ..Default::default() }.check().unwrap();
        assert_ne!(other.fit(&refs(&cols)).unwrap(), a);
    }

    #[test]
    fn contamination_sets_the_share_of_anomalies() {
        let cols = blob(1000, 2);
        let params = IsolationForestParams {
            contamination: Contamination::Fraction(0.1),
            ..Default::default()
        }
        .check()
        .unwrap();
        let forest = params.fit(&refs(&cols)).unwrap();
        let flagged = forest.score(&refs(&cols)).unwrap().is_anomaly.iter().filter(|a| **a).count();
        assert!((95..=105).contains(&flagged), "{flagged} of 1000 flagged");
    }

    #[test]
    fn every_parameter_combination_trains_a_valid_forest() {
        let cols = blob(300, 3);
        for bootstrap in [false, true] {
            for max_samples in [MaxSamples::Auto, MaxSamples::Count(64), MaxSamples::Fraction(0.3)]
            {
                for max_features in
                    [MaxFeatures::All, MaxFeatures::Count(1), MaxFeatures::Fraction(0.5)]
                {
                    let params = IsolationForestParams {
                        n_estimators: 10,
                        max_samples,
                        max_features,
                        bootstrap,
                        ..Default::default()
                    };
                    let forest = params.check().unwrap().fit(&refs(&cols)).unwrap();
                    let raw: RawForest = forest.clone().into();
                    assert_eq!(IsolationForest::try_from(raw).unwrap(), forest);
                }
            }
        }
    }

    #[test]
    fn skips_non_finite_rows_and_handles_constant_data() {
        let cols = vec![vec![1.0, f64::NAN, 1.0, f64::INFINITY, 1.0]];
        let forest = IsolationForestParams::default().check().unwrap().fit(&refs(&cols)).unwrap();
        assert_eq!(forest.max_samples(), 3);
        // Constant data: every tree is a single leaf and every row scores the same.
        let s = forest.score(&[&[1.0, 100.0]]).unwrap().score;
        assert_eq!(s[0], s[1]);
        let none = vec![vec![f64::NAN, f64::INFINITY]];
        assert_eq!(
            IsolationForestParams::default().check().unwrap().fit(&refs(&none)),
            Err(DetectorError::NoTrainingRows { rows: 2 })
        );
    }
}
