#!/usr/bin/env python3
"""Fits scikit-learn models for the parity test and records scikit-learn's own outputs.

  parity.py OUT

writes OUT/models/model_<name>.joblib (one fitted model per parameter combination) and
OUT/cases.parquet: for every model and test row, the model name, the row's features x0..x2,
and scikit-learn's score_samples, decision_function and predict. Test rows mix in-distribution
values, outliers, values exactly at split thresholds and one float32 step either side, zeros,
subnormals, values beyond float32 range and infinities (for IsolationForest, which accepts
them), and a constant training feature. Rows scikit-learn refuses for a model are not recorded.
"""

import os
import sys
import warnings

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

D = 3


def models():
    iforests = {
        "if_default": dict(),
        "if_small": dict(n_estimators=7, max_samples=32),
        "if_fraction": dict(n_estimators=25, max_samples=0.4),
        "if_features_half": dict(n_estimators=20, max_features=0.5),
        "if_features_two": dict(n_estimators=15, max_features=2),
        "if_bootstrap": dict(n_estimators=30, bootstrap=True),
        "if_contamination": dict(n_estimators=40, contamination=0.05),
        "if_everything": dict(n_estimators=33, max_samples=100, max_features=0.7, bootstrap=True,
                              contamination=0.2),
    }
    out = {k: IsolationForest(random_state=i, **p) for i, (k, p) in enumerate(iforests.items())}
    svms = {
        "svm_rbf_scale": dict(kernel="rbf", gamma="scale", nu=0.1),
        "svm_rbf_auto": dict(kernel="rbf", gamma="auto", nu=0.05),
        "svm_rbf_reference": dict(kernel="rbf", gamma=0.01, nu=0.0001),
        "svm_linear": dict(kernel="linear", nu=0.2),
        "svm_poly2": dict(kernel="poly", degree=2, gamma=0.5, coef0=1.0, nu=0.1),
        "svm_poly3": dict(kernel="poly", degree=3, gamma="scale", coef0=0.0, nu=0.3),
        "svm_sigmoid": dict(kernel="sigmoid", gamma=0.1, coef0=0.5, nu=0.5),
    }
    out.update({k: OneClassSVM(**p) for k, p in svms.items()})
    out["pipe_reference"] = Pipeline([("scaler", StandardScaler()),
                                      ("classifier", OneClassSVM(nu=0.0001, kernel="rbf", gamma=0.01))])
    out["pipe_svm_no_std"] = Pipeline([("scaler", StandardScaler(with_std=False)),
                                       ("svm", OneClassSVM(nu=0.1, gamma="scale"))])
    out["pipe_if_no_mean"] = Pipeline([("scaler", StandardScaler(with_mean=False)),
                                       ("iforest", IsolationForest(n_estimators=20, random_state=5))])
    out["pipe_if"] = Pipeline([("scaler", StandardScaler()),
                               ("iforest", IsolationForest(n_estimators=50, max_features=0.6,
                                                           random_state=9, contamination=0.1))])
    return out


def test_rows(model, rng, X_train):
    rows = [X_train[:20], rng.normal(0.0, 1.0, (40, D)) * [1.0, 10.0, 0.1] + [0.0, 50.0, 5.0],
            rng.normal(0.0, 8.0, (20, D))]
    special = [0.0, -0.0, 5e-324, -1e-310, 1e-40, 3.4028234e38, 1e39, -1e39, 1e300]
    for v in special:
        rows.append(np.array([[v, 50.0, 5.0], [0.0, v, 5.0], [0.0, 50.0, v]]))
    iforest = model[-1] if isinstance(model, Pipeline) else model
    if isinstance(iforest, IsolationForest) and not isinstance(model, Pipeline):
        rows.append(np.array([[np.inf, 50.0, 5.0], [-np.inf, 50.0, 5.0], [0.0, np.inf, -np.inf]]))
        # Values at split thresholds and one float32 step either side of them.
        for tree, features in list(zip(iforest.estimators_, iforest.estimators_features_))[:3]:
            t = tree.tree_
            for node in range(min(t.node_count, 12)):
                if t.children_left[node] == -1:
                    continue
                f = features[t.feature[node]]
                thr = np.float32(t.threshold[node])
                for x in (np.nextafter(thr, np.float32(-np.inf)), thr,
                          np.nextafter(thr, np.float32(np.inf)), t.threshold[node]):
                    row = X_train[node % len(X_train)].copy()
                    row[f] = float(x)
                    rows.append(row[None, :])
    return np.vstack(rows)


def main(out):
    rng = np.random.default_rng(2026)
    X_train = rng.normal(0.0, 1.0, (400, D)) * [1.0, 10.0, 0.1] + [0.0, 50.0, 5.0]
    X_const = X_train.copy()
    X_const[:, 2] = 5.0  # a constant feature: zero variance for the scaler
    os.makedirs(os.path.join(out, "models"), exist_ok=True)
    columns = {"model": [], "row": [], "score": [], "decision": [], "predict": []}
    columns.update({f"x{i}": [] for i in range(D)})
    for name, model in models().items():
        X = X_const if name.startswith("pipe_") else X_train
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X)
        joblib.dump(model, os.path.join(out, "models", f"model_{name}.joblib"))
        rows = test_rows(model, rng, X)
        kept = []
        for r in rows:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model.score_samples(r[None, :])
                kept.append(r)
            except ValueError:
                pass  # scikit-learn refuses this row for this model (non-finite input)
        R = np.array(kept)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            score, decision, predict = (model.score_samples(R), model.decision_function(R),
                                        model.predict(R))
        for i, r in enumerate(R):
            columns["model"].append(name)
            columns["row"].append(i)
            for f in range(D):
                columns[f"x{f}"].append(float(r[f]))
            columns["score"].append(float(score[i]))
            columns["decision"].append(float(decision[i]))
            columns["predict"].append(int(predict[i]))
    pq.write_table(pa.table(columns), os.path.join(out, "cases.parquet"))
    # A model the interchange format cannot hold, for the exporter's error.
    from sklearn.neighbors import LocalOutlierFactor
    os.makedirs(os.path.join(out, "unsupported"), exist_ok=True)
    lof = LocalOutlierFactor(novelty=True).fit(X_train)
    joblib.dump(lof, os.path.join(out, "unsupported", "model_lof.joblib"))
    print(f"{len(models())} models, {len(columns['row'])} rows")


if __name__ == "__main__":
    main(sys.argv[1])
