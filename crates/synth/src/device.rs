//! One device's time series.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Realistic sensor names with a typical mean and scale each; more sensors get `sensor_N`.
const SENSORS: [(&str, f64, f64); 12] = [
    ("temperature", 65.0, 6.0),
    ("pressure", 5.0, 0.6),
    ("vibration", 1.2, 0.25),
    ("humidity", 45.0, 8.0),
    ("rpm", 1800.0, 150.0),
    ("voltage", 230.0, 4.0),
    ("current", 25.0, 3.0),
    ("flow_rate", 60.0, 7.0),
    ("torque", 120.0, 15.0),
    ("noise_db", 70.0, 5.0),
    ("oil_level", 80.0, 5.0),
    ("power_kw", 15.0, 2.0),
];

/// The column names of `n` sensors.
pub fn sensor_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match SENSORS.get(i) {
            Some((name, _, _)) => (*name).to_string(),
            None => format!("sensor_{}", i + 1),
        })
        .collect()
}

/// The kind of an injected anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnomalyKind {
    Spike,
    LevelShift,
    Stuck,
}

impl AnomalyKind {
    /// Label text stored in `labels.parquet`.
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::Spike => "spike",
            AnomalyKind::LevelShift => "level_shift",
            AnomalyKind::Stuck => "stuck",
        }
    }
}

/// One device's readings: one vector per sensor, plus a label per row.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSeries {
    pub values: Vec<Vec<f64>>,
    pub labels: Vec<Option<AnomalyKind>>,
}

const LATENT: usize = 2;

impl DeviceSeries {
    /// Generates `rows` readings of `sensors` sensors for `device`, sampled every
    /// `interval_s` seconds, with about `anomaly_rate` of the rows anomalous.
    pub fn generate(
        seed: u64,
        device: i64,
        sensors: usize,
        rows: usize,
        interval_s: f64,
        anomaly_rate: f64,
    ) -> Self {
        // One stream per device, so devices can be generated in any order on any thread.
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ (device as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let normal = move |rng: &mut ChaCha8Rng| -> f64 { rng.sample(StandardNormal) };

        let mut means = Vec::with_capacity(sensors);
        let mut scales = Vec::with_capacity(sensors);
        let mut loadings = Vec::with_capacity(sensors);
        let mut noise = Vec::with_capacity(sensors);
        let mut drift = Vec::with_capacity(sensors);
        for s in 0..sensors {
            let (_, mean, scale) = SENSORS.get(s).copied().unwrap_or(("", 10.0, 1.0));
            means.push(mean * (1.0 + 0.2 * normal(&mut rng)));
            scales.push(scale * rng.random_range(0.5..1.5));
            let l: [f64; LATENT] = [0.8 * normal(&mut rng), 0.6 * normal(&mut rng)];
            loadings.push(l);
            noise.push(rng.random_range(0.3..0.6));
            drift.push(rng.random_range(-0.5..0.5));
        }
        // Standard deviation of each sensor's unscaled signal (latent factors have variance 1).
        let sigma: Vec<f64> = (0..sensors)
            .map(|s| {
                let l = loadings[s];
                (l[0] * l[0] + l[1] * l[1] + noise[s] * noise[s]).sqrt()
            })
            .collect();

        let phi: f64 = 0.95;
        let innovation = (1.0 - phi * phi).sqrt();
        let day_phase = rng.random_range(0.0..std::f64::consts::TAU);
        let mut z = [normal(&mut rng), normal(&mut rng)];
        let mut values = vec![Vec::with_capacity(rows); sensors];
        for t in 0..rows {
            for zi in z.iter_mut() {
                *zi = phi * *zi + innovation * normal(&mut rng);
            }
            let seconds = t as f64 * interval_s;
            let daily = (seconds / 86_400.0 * std::f64::consts::TAU + day_phase).sin();
            let progress = if rows > 1 { t as f64 / (rows - 1) as f64 } else { 0.0 };
            for s in 0..sensors {
                let l = loadings[s];
                let signal = l[0] * (0.8 * z[0] + 0.6 * daily)
                    + l[1] * z[1]
                    + noise[s] * normal(&mut rng)
                    + drift[s] * sigma[s] * progress;
                values[s].push(means[s] + scales[s] * signal);
            }
        }

        let mut labels = vec![None; rows];
        let target = (rows as f64 * anomaly_rate).round() as usize;
        let mut labelled = 0;
        let mut attempts = 0;
        while labelled < target && attempts < 10 * rows.max(1) && sensors > 0 {
            attempts += 1;
            let kind = match rng.random_range(0..10) {
                0..=4 => AnomalyKind::Spike,
                5..=7 => AnomalyKind::LevelShift,
                _ => AnomalyKind::Stuck,
            };
            let len = match kind {
                AnomalyKind::Spike => 1,
                _ => rng.random_range(3..=8).min(target - labelled).max(1),
            };
            if len > rows {
                continue;
            }
            let start = rng.random_range(0..=rows - len);
            if labels[start..start + len].iter().any(Option::is_some) {
                continue;
            }
            let affected = match kind {
                AnomalyKind::Spike => rng.random_range(1..=3usize.min(sensors)),
                AnomalyKind::LevelShift => rng.random_range(1..=2usize.min(sensors)),
                AnomalyKind::Stuck => 1,
            };
            let chosen = rand::seq::index::sample(&mut rng, sensors, affected).into_vec();
            for &s in &chosen {
                let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                let sd = scales[s] * sigma[s];
                match kind {
                    AnomalyKind::Spike => {
                        values[s][start] += sign * rng.random_range(6.0..10.0) * sd;
                    }
                    AnomalyKind::LevelShift => {
                        let shift = sign * rng.random_range(5.0..8.0) * sd;
                        for v in &mut values[s][start..start + len] {
                            *v += shift;
                        }
                    }
                    AnomalyKind::Stuck => {
                        // A saturated sensor reads its rail, far outside the normal band.
                        let rail = means[s] + sign * 8.0 * sd;
                        for v in &mut values[s][start..start + len] {
                            *v = rail;
                        }
                    }
                }
            }
            for label in &mut labels[start..start + len] {
                *label = Some(kind);
            }
            labelled += len;
        }
        Self { values, labels }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_device_and_about_one_percent_anomalies() {
        let a = DeviceSeries::generate(1, 5, 8, 2000, 60.0, 0.01);
        assert_eq!(a, DeviceSeries::generate(1, 5, 8, 2000, 60.0, 0.01));
        assert_ne!(a, DeviceSeries::generate(1, 6, 8, 2000, 60.0, 0.01));
        let anomalies = a.labels.iter().filter(|l| l.is_some()).count();
        assert_eq!(anomalies, 20);
        assert!(a.values.iter().flatten().all(|v| v.is_finite()));
    }

    #[test]
    fn sensors_are_correlated() {
        let s = DeviceSeries::generate(3, 1, 8, 5000, 60.0, 0.0);
        let corr = |a: &[f64], b: &[f64]| {
            let n = a.len() as f64;
            let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
            let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
            let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
            let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
            cov / (va * vb).sqrt()
        };
        let strongest = (1..8).map(|j| corr(&s.values[0], &s.values[j]).abs()).fold(0.0, f64::max);
        assert!(strongest > 0.3, "max |corr| with sensor 0 = {strongest}");
    }

    #[test]
    fn names() {
        assert_eq!(sensor_names(2), vec!["temperature", "pressure"]);
        assert_eq!(sensor_names(13)[12], "sensor_13");
    }
}
