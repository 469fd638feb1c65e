#!/usr/bin/env python3
"""Trains the side-by-side benchmark's scikit-learn models, one per device, and exports them.

For each device of a partitioned input (`device_id=N/*.parquet`, as `batchscore generate
--partition device` writes it): fit `IsolationForest(n_estimators=100, max_samples=256,
contamination="auto", random_state=N)` on the device's readings, save it with `joblib.dump` as
MODELS/model_N.joblib (what the peer loads), and write its interchange file EXPORTED/N.json with
scripts/export_sklearn.py's `export` (what `batchscore models import` reads), so both sides
score the same forests. Runs on all cores; prints the sensors (the feature order) as JSON.

  prepare.py --input DIR --models DIR --exported DIR [--jobs N]
"""

import argparse
import json
import os
import sys
import warnings

import joblib
import numpy as np
import pyarrow.parquet as pq
from sklearn.ensemble import IsolationForest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import export_sklearn  # noqa: E402
from peer import sensor_matrix  # noqa: E402  (this script's directory is on sys.path)


def train(devices, args):
    warnings.simplefilter("ignore")
    sensors = None
    for d in devices:
        table = pq.read_table(os.path.join(args.input, f"device_id={d}"))
        sensors, x = sensor_matrix(table)
        model = IsolationForest(n_estimators=100, max_samples=256, contamination="auto",
                                random_state=d).fit(x)
        path = os.path.join(args.models, f"model_{d}.joblib")
        joblib.dump(model, path)
        with open(os.path.join(args.exported, f"{d}.json"), "w") as f:
            json.dump(export_sklearn.export(model, path), f, separators=(",", ":"))
    return sensors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--models", required=True)
    parser.add_argument("--exported", required=True)
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    os.makedirs(args.models, exist_ok=True)
    os.makedirs(args.exported, exist_ok=True)
    devices = sorted(int(e.split("=", 1)[1]) for e in os.listdir(args.input)
                     if e.startswith("device_id="))
    batches = [list(map(int, b)) for b in np.array_split(np.array(devices), args.jobs * 16) if len(b)]
    sensors = joblib.Parallel(n_jobs=args.jobs)(joblib.delayed(train)(b, args) for b in batches)
    print(json.dumps({"sensors": sensors[0], "models": len(devices)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
