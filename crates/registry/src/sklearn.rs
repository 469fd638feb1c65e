//! Import of scikit-learn models from the interchange files of `scripts/export_sklearn.py`.
//!
//! The interchange format (`docs/sklearn-interchange.md`) is JSON: the fitted state of an
//! `IsolationForest`, a `OneClassSVM`, a `StandardScaler`, or a `Pipeline` of a scaler and one
//! of the detectors, with every float written exactly (Python's `repr`). Parsing is strict
//! (unknown fields are errors); the fitted state then becomes a detector only through the same
//! validation as a model file, so a malformed export is an error naming what is wrong.

use batchscore_detectors::{
    IsolationForest, Kernel, OneClassSvm, RawForest, RawNode, RawOneClassSvm, RawStandardScaler,
    Scaled, StandardScaler,
};
use serde::Deserialize;

use crate::{DetectorModel, Model, ModelKey, RegistryError, TrainingInfo};

/// The `format` field of an interchange file.
pub const INTERCHANGE_FORMAT: &str = "batchscore-sklearn-interchange";
/// The interchange version this build reads.
pub const INTERCHANGE_VERSION: u32 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Interchange {
    format: String,
    version: u32,
    /// Versions of scikit-learn, numpy and Python, and the source file: kept in the metadata.
    producer: serde_json::Value,
    n_features: u32,
    feature_names: Option<Vec<String>>,
    /// Rows the model was fitted on, when the estimator records it.
    n_samples_fit: Option<u64>,
    estimator: Estimator,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Estimator {
    IsolationForest {
        params: serde_json::Value,
        max_samples: u64,
        offset: f64,
        estimators: Vec<Tree>,
    },
    OneClassSvm {
        params: serde_json::Value,
        kernel: String,
        gamma: f64,
        coef0: f64,
        degree: u32,
        support_vectors: Vec<Vec<f64>>,
        dual_coef: Vec<f64>,
        intercept: f64,
    },
    StandardScaler {
        params: serde_json::Value,
        mean: Option<Vec<f64>>,
        scale: Option<Vec<f64>>,
    },
    Pipeline {
        steps: Vec<Step>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    name: String,
    estimator: Estimator,
}

/// One tree of an IsolationForest: `estimators_features_[t]` and its `tree_` arrays.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tree {
    features: Vec<u32>,
    children_left: Vec<i64>,
    children_right: Vec<i64>,
    feature: Vec<i64>,
    threshold: Vec<f64>,
    n_node_samples: Vec<u64>,
    missing_go_to_left: Vec<u8>,
}

fn bad(source: &str, reason: impl Into<String>) -> RegistryError {
    RegistryError::Interchange { source_name: source.to_string(), reason: reason.into() }
}

fn tree_nodes(source: &str, t: usize, tree: Tree) -> Result<Vec<RawNode>, RegistryError> {
    let n = tree.children_left.len();
    let lengths = [
        tree.children_right.len(),
        tree.feature.len(),
        tree.threshold.len(),
        tree.n_node_samples.len(),
        tree.missing_go_to_left.len(),
    ];
    if lengths.iter().any(|&l| l != n) {
        return Err(bad(source, format!("tree {t}: node arrays of different lengths")));
    }
    let child = |c: i64| -> Result<u32, RegistryError> {
        match c {
            -1 => Ok(batchscore_detectors::LEAF),
            c if (0..i64::from(u32::MAX)).contains(&c) => Ok(c as u32),
            c => Err(bad(source, format!("tree {t}: child index {c}"))),
        }
    };
    (0..n)
        .map(|i| {
            let (left, right) = (child(tree.children_left[i])?, child(tree.children_right[i])?);
            let leaf = left == batchscore_detectors::LEAF && right == batchscore_detectors::LEAF;
            // Internal nodes name a column of the tree's feature subset; map it to the model's.
            let feature = if leaf {
                0
            } else {
                let local = usize::try_from(tree.feature[i]).map_err(|_| {
                    bad(source, format!("tree {t} node {i}: feature {}", tree.feature[i]))
                })?;
                *tree.features.get(local).ok_or_else(|| {
                    bad(source, format!("tree {t} node {i}: feature {local} outside the subset"))
                })?
            };
            Ok(RawNode {
                feature,
                threshold: if leaf { 0.0 } else { tree.threshold[i] },
                left,
                right,
                missing_go_to_left: tree.missing_go_to_left[i] != 0,
                n_node_samples: tree.n_node_samples[i],
            })
        })
        .collect()
}

/// A detector estimator, and its parameters for the metadata.
fn detector(
    source: &str,
    n_features: u32,
    estimator: Estimator,
) -> Result<(DetectorModel, serde_json::Value), RegistryError> {
    let invalid = |e: batchscore_detectors::DetectorError| bad(source, e.to_string());
    match estimator {
        Estimator::IsolationForest { params, max_samples, offset, estimators } => {
            let trees = estimators
                .into_iter()
                .enumerate()
                .map(|(t, tree)| tree_nodes(source, t, tree))
                .collect::<Result<Vec<_>, _>>()?;
            let raw = RawForest { n_features, max_samples, offset, trees };
            let forest = IsolationForest::try_from(raw).map_err(invalid)?;
            Ok((DetectorModel::IsolationForest(forest), params))
        }
        Estimator::OneClassSvm {
            params,
            kernel,
            gamma,
            coef0,
            degree,
            support_vectors,
            dual_coef,
            intercept,
        } => {
            let kernel = match kernel.as_str() {
                "rbf" => Kernel::Rbf { gamma },
                "linear" => Kernel::Linear,
                "poly" => Kernel::Poly { gamma, coef0, degree },
                "sigmoid" => Kernel::Sigmoid { gamma, coef0 },
                other => {
                    return Err(bad(
                        source,
                        format!(
                            "OneClassSVM kernel `{other}` is not supported (rbf, linear, poly, sigmoid)"
                        ),
                    ));
                }
            };
            if support_vectors.iter().any(|sv| sv.len() != n_features as usize) {
                return Err(bad(source, "support vectors of the wrong width"));
            }
            let raw = RawOneClassSvm {
                n_features,
                kernel,
                support_vectors: support_vectors.into_iter().flatten().collect(),
                dual_coef,
                intercept,
            };
            Ok((DetectorModel::OneClassSvm(OneClassSvm::try_from(raw).map_err(invalid)?), params))
        }
        Estimator::StandardScaler { .. } => {
            Err(bad(source, "a StandardScaler alone is not a detector; export the Pipeline"))
        }
        Estimator::Pipeline { steps } => {
            let mut steps = steps.into_iter();
            let (first, second) = match (steps.next(), steps.next(), steps.next()) {
                (Some(a), Some(b), None) => (a, b),
                (Some(a), None, None) => return detector(source, n_features, a.estimator),
                _ => {
                    return Err(bad(
                        source,
                        "a Pipeline must be [StandardScaler, detector] or [detector]",
                    ));
                }
            };
            let Estimator::StandardScaler { params: scaler_params, mean, scale } = first.estimator
            else {
                return Err(bad(
                    source,
                    format!("pipeline step `{}` must be a StandardScaler", first.name),
                ));
            };
            let scaler = StandardScaler::try_from(RawStandardScaler { n_features, mean, scale })
                .map_err(invalid)?;
            let (inner, params) = detector(source, n_features, second.estimator)?;
            let params = serde_json::json!({
                first.name: scaler_params,
                second.name: params,
            });
            let model = match inner {
                DetectorModel::IsolationForest(d) => {
                    DetectorModel::ScaledIsolationForest(Scaled::new(scaler, d).map_err(invalid)?)
                }
                DetectorModel::OneClassSvm(d) => {
                    DetectorModel::ScaledOneClassSvm(Scaled::new(scaler, d).map_err(invalid)?)
                }
                _ => return Err(bad(source, "nested pipelines are not supported")),
            };
            Ok((model, params))
        }
    }
}

/// Turns one interchange file into a registry model for `key`.
///
/// `features` names the input columns in model order; `None` takes the names stored in the file
/// (`feature_names_in_`). A model fitted on a plain array has none: a univariate model of a
/// (device, sensor) key (`7.3`) is then named after its sensor, any other needs `features`.
pub fn import_sklearn(
    source: &str,
    bytes: &[u8],
    key: ModelKey,
    features: Option<Vec<String>>,
    created_at: String,
) -> Result<Model, RegistryError> {
    let file: Interchange =
        serde_json::from_slice(bytes).map_err(|e| bad(source, e.to_string()))?;
    if file.format != INTERCHANGE_FORMAT {
        return Err(bad(
            source,
            format!("format `{}`, expected `{INTERCHANGE_FORMAT}`", file.format),
        ));
    }
    if file.version != INTERCHANGE_VERSION {
        return Err(bad(
            source,
            format!("interchange version {}, this build reads {INTERCHANGE_VERSION}", file.version),
        ));
    }
    let sensor_feature = match (key.sensor(), file.n_features) {
        (Some(sensor), 1) => Some(vec![sensor.to_string()]),
        _ => None,
    };
    let features = match features.or(file.feature_names).or(sensor_feature) {
        Some(names) => names,
        None => {
            return Err(bad(
                source,
                "the model has no feature names (fitted on an array): give them with --features",
            ));
        }
    };
    if features.len() != file.n_features as usize {
        return Err(bad(
            source,
            format!("{} feature names for a model of {} features", features.len(), file.n_features),
        ));
    }
    let (detector, params) = detector(source, file.n_features, file.estimator)?;
    let params = serde_json::json!({ "sklearn": params, "producer": file.producer });
    let training = TrainingInfo {
        rows: file.n_samples_fit.unwrap_or(0),
        from_us: None,
        to_us: None,
        summaries: vec![None; features.len()],
    };
    Model::new(key, params.to_string(), features, training, detector, created_at)
}

#[cfg(test)]
mod tests {
    use batchscore_detectors::Detector;

    use super::*;

    fn svm(kernel: &str) -> serde_json::Value {
        serde_json::json!({
            "type": "one_class_svm", "params": {"nu": 0.1}, "kernel": kernel,
            "gamma": 0.5, "coef0": 1.0, "degree": 3,
            "support_vectors": [[0.0, 1.0], [2.0, -1.0]], "dual_coef": [0.7, 0.3], "intercept": -0.2,
        })
    }

    fn file(estimator: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "format": INTERCHANGE_FORMAT, "version": 1, "producer": {"sklearn": "1.9.1"},
            "n_features": 2, "feature_names": ["a", "b"], "n_samples_fit": 10,
            "estimator": estimator,
        }))
        .unwrap()
    }

    fn import(bytes: &[u8]) -> Result<Model, RegistryError> {
        import_sklearn("t.json", bytes, ModelKey::device(1), None, "2026-01-01T00:00:00Z".into())
    }

    fn forest() -> serde_json::Value {
        serde_json::json!({
            "type": "isolation_forest", "params": {}, "max_samples": 4, "offset": -0.5,
            "estimators": [{
                "features": [1, 0], "children_left": [1, -1, -1], "children_right": [2, -1, -1],
                "feature": [0, -2, -2], "threshold": [0.5, -2.0, -2.0],
                "n_node_samples": [4, 1, 3], "missing_go_to_left": [1, 0, 0],
            }],
        })
    }

    /// `Pipeline(StandardScaler, inner)`.
    fn pipeline(inner: serde_json::Value) -> serde_json::Value {
        let scaler = serde_json::json!({
            "type": "standard_scaler", "params": {}, "mean": [1.0, 2.0], "scale": [2.0, 1.0],
        });
        serde_json::json!({"type": "pipeline", "steps": [
            {"name": "scaler", "estimator": scaler},
            {"name": "detector", "estimator": inner},
        ]})
    }

    #[test]
    fn every_family_imports_and_survives_the_model_file() {
        for estimator in [
            svm("rbf"),
            svm("linear"),
            svm("poly"),
            svm("sigmoid"),
            forest(),
            pipeline(svm("rbf")),
            pipeline(forest()),
        ] {
            let model = import(&file(estimator)).unwrap();
            let decoded = Model::decode("m", &model.encode().unwrap()).unwrap();
            assert_eq!(decoded, model);
            let x: [&[f64]; 2] = [&[0.0, 3.0, -1.0], &[1.0, 0.25, 9.0]];
            assert_eq!(decoded.detector.score(&x).unwrap(), model.detector.score(&x).unwrap());
            assert_eq!(model.meta.training.rows, 10);
        }
    }

    #[test]
    fn malformed_exports_are_errors_naming_the_problem() {
        let cases = [
            (file(svm("precomputed")), "kernel `precomputed`"),
            (b"{".to_vec(), "EOF"),
            (
                file(
                    serde_json::json!({"type": "standard_scaler", "params": {}, "mean": null, "scale": null}),
                ),
                "not a detector",
            ),
            (file(serde_json::json!({"type": "lof"})), "unknown variant"),
            (
                serde_json::to_vec(
                    &serde_json::json!({"format": "x", "version": 1, "producer": {},
                    "n_features": 2, "feature_names": null, "n_samples_fit": null,
                    "estimator": svm("rbf")}),
                )
                .unwrap(),
                "format `x`",
            ),
        ];
        for (bytes, expected) in cases {
            let err = import(&bytes).unwrap_err().to_string();
            assert!(err.contains("t.json") && err.contains(expected), "{err}");
        }
        let mut doc: serde_json::Value = serde_json::from_slice(&file(svm("rbf"))).unwrap();
        doc["feature_names"] = serde_json::Value::Null;
        let err = import(&serde_json::to_vec(&doc).unwrap()).unwrap_err().to_string();
        assert!(err.contains("--features"), "{err}");
        doc["surprise"] = 1.into();
        assert!(import(&serde_json::to_vec(&doc).unwrap()).is_err());
    }

    /// The families of [`every_family_imports_and_survives_the_model_file`], as documents.
    fn documents() -> Vec<serde_json::Value> {
        [svm("rbf"), svm("poly"), forest(), pipeline(forest())]
            .into_iter()
            .map(|e| serde_json::from_slice(&file(e)).unwrap())
            .collect()
    }

    /// Paths to every leaf (number, string, bool, null) of a document.
    fn leaf_paths(value: &serde_json::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    path.push(k.clone());
                    leaf_paths(v, path, out);
                    path.pop();
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    path.push(i.to_string());
                    leaf_paths(v, path, out);
                    path.pop();
                }
            }
            _ => out.push(path.clone()),
        }
    }

    fn leaf_mut<'a>(
        value: &'a mut serde_json::Value,
        path: &[String],
    ) -> Option<&'a mut serde_json::Value> {
        path.iter().try_fold(value, |v, key| match v {
            serde_json::Value::Object(map) => map.get_mut(key),
            serde_json::Value::Array(items) => items.get_mut(key.parse::<usize>().ok()?),
            _ => None,
        })
    }

    /// Values a hostile or damaged export may hold where a valid one has a number.
    fn hostile_values() -> Vec<serde_json::Value> {
        use serde_json::json;
        vec![
            json!(-1),
            json!(0),
            json!(1),
            json!(3),
            json!(65_536),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(-1e308),
            json!(1e308),
            json!(5e-324),
            json!(0.5),
            json!("x"),
            json!(null),
            json!(true),
            json!([]),
            json!([[]]),
            json!({}),
            serde_json::Value::Array(vec![json!(1); 300]),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(256))]

        /// No interchange file, however damaged, makes the import or the model it yields panic:
        /// any leaf of a valid export replaced by a hostile value either imports into a model
        /// that round-trips and scores, or is an error.
        #[test]
        fn hostile_exports_are_errors_or_working_models(
            doc in 0..4usize,
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), 0..18usize), 1..4),
        ) {
            let mut document = documents().swap_remove(doc);
            let mut paths = Vec::new();
            leaf_paths(&document, &mut Vec::new(), &mut paths);
            let values = hostile_values();
            for (at, value) in edits {
                let path = &paths[at % paths.len()];
                if let Some(leaf) = leaf_mut(&mut document, path) {
                    *leaf = values[value].clone();
                }
            }
            if let Ok(model) = import(&serde_json::to_vec(&document).unwrap()) {
                let decoded = Model::decode("m", &model.encode().unwrap()).unwrap();
                proptest::prop_assert_eq!(&decoded, &model);
                let x: [&[f64]; 2] = [&[0.0, 3.0, f64::NAN], &[1.0, f64::INFINITY, 9.0]];
                let _ = model.detector.score(&x);
            }
        }

        /// Arbitrary bytes are an error, never a panic.
        #[test]
        fn arbitrary_bytes_are_an_error(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            proptest::prop_assert!(import(&bytes).is_err());
        }
    }
}
