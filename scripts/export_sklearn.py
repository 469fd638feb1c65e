#!/usr/bin/env python3
"""Export scikit-learn outlier models to batchscore's interchange format.

Reads joblib (or pickle: .pkl/.pickle) files holding an IsolationForest, a OneClassSVM, or a
Pipeline of a StandardScaler and one of them, and writes one JSON file per model in the format
documented in docs/sklearn-interchange.md. Then `batchscore models import` turns the files into
registry models. Needs Python >= 3.9 and scikit-learn >= 1.3 (the version the model was saved
with).

  export_sklearn.py model.joblib --out exported/
  export_sklearn.py models/ --out exported/ --key-pattern 'model_{device}_{sensor}'

A directory is read for files with the extensions .joblib, .pkl and .pickle. With --key-pattern,
a file named model_1_3.joblib is written as 1.3.json (the key of device 1, sensor 3), so
`batchscore models import exported/` needs no pattern; without it the file keeps its name.
A model this format cannot represent is an error naming the class or parameter.
"""

import argparse
import json
import os
import pickle
import platform
import re
import sys

FORMAT = "batchscore-sklearn-interchange"
VERSION = 1


class ExportError(Exception):
    pass


def _floats(values):
    import numpy

    # numpy's tolist() makes the Python floats in C: a 100-tree forest has ~60,000 of them.
    array = numpy.asarray(values, dtype=numpy.float64).ravel()
    bad = array[~numpy.isfinite(array)]
    if bad.size:
        raise ExportError(f"non-finite value {bad[0]} in the fitted state")
    return array.tolist()


def _ints(values):
    import numpy

    return numpy.asarray(values).astype(numpy.int64).ravel().tolist()


def _params(est):
    """get_params(deep=False), with values JSON can hold."""
    def plain(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if hasattr(v, "item"):
            return v.item()
        return repr(v)
    return {k: plain(v) for k, v in sorted(est.get_params(deep=False).items())}


def export_isolation_forest(est):
    trees = []
    for tree, features in zip(est.estimators_, est.estimators_features_):
        t = tree.tree_
        missing = getattr(t, "missing_go_to_left", None)
        trees.append({
            "features": _ints(features),
            "children_left": _ints(t.children_left),
            "children_right": _ints(t.children_right),
            "feature": _ints(t.feature),
            # Leaves hold -2 as threshold (TREE_UNDEFINED); finite, kept as is.
            "threshold": _floats(t.threshold),
            "n_node_samples": _ints(t.n_node_samples),
            "missing_go_to_left": _ints(missing) if missing is not None
            else [0] * t.node_count,
        })
    return {
        "type": "isolation_forest",
        "params": _params(est),
        "max_samples": int(est.max_samples_),
        "offset": float(est.offset_),
        "estimators": trees,
    }


def export_one_class_svm(est):
    kernel = est.kernel
    if callable(kernel) or kernel not in ("rbf", "linear", "poly", "sigmoid"):
        raise ExportError(f"OneClassSVM kernel={kernel!r} is not supported (rbf, linear, poly, sigmoid)")
    if hasattr(est.support_vectors_, "toarray"):
        raise ExportError("OneClassSVM fitted on sparse input is not supported")
    return {
        "type": "one_class_svm",
        "params": _params(est),
        "kernel": kernel,
        "gamma": float(est._gamma),
        "coef0": float(est.coef0),
        "degree": int(est.degree),
        "support_vectors": [_floats(sv) for sv in est.support_vectors_],
        "dual_coef": _floats(est.dual_coef_[0]),
        "intercept": float(est.intercept_[0]),
    }


def export_standard_scaler(est):
    return {
        "type": "standard_scaler",
        "params": _params(est),
        "mean": _floats(est.mean_) if est.with_mean else None,
        "scale": _floats(est.scale_) if est.with_std else None,
    }


def export_estimator(est):
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    if isinstance(est, Pipeline):
        steps = []
        for name, step in est.steps:
            if step is None or step == "passthrough":
                continue
            steps.append({"name": name, "estimator": export_estimator(step)})
        return {"type": "pipeline", "steps": steps}
    if isinstance(est, IsolationForest):
        return export_isolation_forest(est)
    if isinstance(est, OneClassSVM):
        return export_one_class_svm(est)
    if isinstance(est, StandardScaler):
        return export_standard_scaler(est)
    raise ExportError(
        f"{type(est).__module__}.{type(est).__name__} is not supported "
        "(IsolationForest, OneClassSVM, StandardScaler, Pipeline of them)"
    )


def _fitted_rows(est):
    for attr in ("n_samples_seen_", "shape_fit_"):
        value = getattr(est, attr, None)
        if value is not None:
            return int(value[0] if isinstance(value, tuple) else value)
    if hasattr(est, "steps"):
        for _, step in est.steps:
            rows = _fitted_rows(step)
            if rows is not None:
                return rows
    return None


def export(est, source):
    """The interchange document of a fitted estimator."""
    import numpy
    import sklearn

    n_features = getattr(est, "n_features_in_", None)
    if n_features is None:
        raise ExportError(f"{type(est).__name__} is not fitted")
    names = getattr(est, "feature_names_in_", None)
    return {
        "format": FORMAT,
        "version": VERSION,
        "producer": {
            "sklearn": sklearn.__version__,
            "numpy": numpy.__version__,
            "python": platform.python_version(),
            "source": os.path.basename(source),
        },
        "n_features": int(n_features),
        "feature_names": [str(n) for n in names] if names is not None else None,
        "n_samples_fit": _fitted_rows(est),
        "estimator": export_estimator(est),
    }


def load(path):
    if path.endswith((".pkl", ".pickle")):
        with open(path, "rb") as f:
            return pickle.load(f)
    import joblib
    return joblib.load(path)


def pattern_regex(pattern):
    """`model_{device}_{sensor}` -> an anchored regex with shortest-match groups."""
    out, rest = "", pattern
    for literal, name in re.findall(r"([^{]*)(?:\{(device|sensor|key)\})?", pattern):
        out += re.escape(literal)
        if name:
            out += f"(?P<{name}>.+?)"
    return re.compile(f"^{out}$")


def key_for(stem, regex):
    m = regex.match(stem)
    if not m:
        return None
    g = m.groupdict()
    if g.get("key"):
        return g["key"]
    return f"{g['device']}.{g['sensor']}" if g.get("sensor") else g["device"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="model files or directories of them")
    parser.add_argument("--out", required=True, help="directory for the interchange files")
    parser.add_argument("--key-pattern", help="map file names to keys, e.g. model_{device}_{sensor}")
    args = parser.parse_args(argv)
    regex = pattern_regex(args.key_pattern) if args.key_pattern else None
    files = []
    for path in args.paths:
        if os.path.isdir(path):
            files += sorted(
                os.path.join(path, f) for f in os.listdir(path)
                if f.endswith((".joblib", ".pkl", ".pickle"))
            )
        else:
            files.append(path)
    os.makedirs(args.out, exist_ok=True)
    written, failed = 0, 0
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        name = stem
        if regex is not None:
            name = key_for(stem, regex)
            if name is None:
                print(f"skipped (name does not match the pattern): {path}", file=sys.stderr)
                continue
        try:
            doc = export(load(path), path)
        except ExportError as e:
            print(f"cannot export {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        with open(os.path.join(args.out, f"{name}.json"), "w") as f:
            json.dump(doc, f, allow_nan=False, separators=(",", ":"))
        written += 1
    print(f"exported {written} models to {args.out}" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
