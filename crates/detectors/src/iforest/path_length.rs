//! `c(n)`, the average path length of an unsuccessful search in a binary search tree: the
//! term a leaf of `n` training rows adds to a path, and the normaliser of the score.

/// Euler's constant as numpy spells it (`np.euler_gamma`).
pub(crate) const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// `c(n)`: the average path length of an unsuccessful search in a binary search tree of `n`
/// items, in scikit-learn's exact floating-point order.
pub fn average_path_length(n: f64) -> f64 {
    if n <= 1.0 {
        0.0
    } else if n == 2.0 {
        1.0
    } else {
        2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
    }
}

/// `c(n)` for leaf sizes, memoised: leaves repeat a few small sizes, and `ln` is the costliest
/// step of loading a model.
pub(crate) struct PathLengths(Vec<f64>);

impl PathLengths {
    const CACHED: usize = 1024;

    pub(crate) fn new() -> Self {
        Self(vec![f64::NAN; Self::CACHED])
    }

    pub(crate) fn get(&mut self, n: u64) -> f64 {
        match self.0.get_mut(n as usize) {
            Some(slot) if slot.is_nan() => {
                *slot = average_path_length(n as f64);
                *slot
            }
            Some(slot) => *slot,
            None => average_path_length(n as f64),
        }
    }
}
