#!/usr/bin/env python3
"""The Python peer of the side-by-side benchmark: per-device scikit-learn IsolationForests.

Written the way a competent user of today's stack writes it: a joblib pool of `--jobs`
processes (default: all cores) over batches of devices; each task reads its devices' readings
with pyarrow (one file per device when the input is partitioned `device_id=N/`, else a
`device_id` range filter that pyarrow pushes down to row-group statistics), loads each device's
model with `joblib.load`, scores each device with one `score_samples` traversal (decision and
prediction follow from it without a second pass: `decision = score - offset_`, anomaly when
`decision < 0`, exactly scikit-learn's `decision_function` and `predict`), and writes one
Parquet file per task with the same columns batchscore writes: the input columns, `score`,
`decision`, `is_anomaly`.

  peer.py --input DIR --models DIR --output DIR [--jobs N]

Prints one JSON line: rows, devices, files written.
"""

import argparse
import json
import os
import sys

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def discover(input_dir):
    """(partitioned, devices, files): the devices and the files that hold them."""
    entries = sorted(os.listdir(input_dir))
    parts = [e for e in entries if e.startswith("device_id=")]
    if parts:
        devices = sorted(int(e.split("=", 1)[1]) for e in parts)
        return True, devices, None
    files = [os.path.join(input_dir, e) for e in entries if e.endswith(".parquet")]
    devices = set()
    for f in files:
        column = pq.read_table(f, columns=["device_id"]).column(0)
        devices.update(pc.unique(column).to_pylist())
    return False, sorted(devices), files


def sensor_matrix(table):
    """(sensor names, rows x sensors array): the feature order of training and of scoring."""
    sensors = [n for n in table.column_names if n not in ("device_id", "timestamp")]
    return sensors, np.column_stack([table.column(n).to_numpy() for n in sensors])


def score_device(model, table):
    _, x = sensor_matrix(table)
    score = model.score_samples(x)
    decision = score - model.offset_
    return table.append_column("score", pa.array(score)) \
        .append_column("decision", pa.array(decision)) \
        .append_column("is_anomaly", pa.array(decision < 0))


def run_task(task, devices, args, partitioned, files):
    out = []
    if partitioned:
        for d in devices:
            table = pq.read_table(os.path.join(args.input, f"device_id={d}"))
            table = table.add_column(0, "device_id", pa.array(np.full(table.num_rows, d, np.int64)))
            out.append((d, table))
    else:
        lo, hi = devices[0], devices[-1]
        filters = [("device_id", ">=", lo), ("device_id", "<=", hi)]
        tables = [pq.read_table(f, filters=filters) for f in files]
        table = pa.concat_tables(tables)
        ids = table.column("device_id").to_numpy()
        # The input is sorted by device: each device is one contiguous slice.
        bounds = np.flatnonzero(np.diff(ids)) + 1
        starts = np.concatenate(([0], bounds))
        ends = np.concatenate((bounds, [len(ids)]))
        for s, e in zip(starts, ends):
            out.append((int(ids[s]), table.slice(s, e - s)))
    scored = []
    for d, table in out:
        model = joblib.load(os.path.join(args.models, f"model_{d}.joblib"))
        scored.append(score_device(model, table))
    result = pa.concat_tables(scored)
    path = os.path.join(args.output, f"part-{task:05}.parquet")
    pq.write_table(result, path)
    return result.num_rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--models", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--tasks-per-job", type=int, default=8,
                        help="device batches per worker (load balance vs per-task overhead)")
    args = parser.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    partitioned, devices, files = discover(args.input)
    n_tasks = min(len(devices), args.jobs * args.tasks_per_job)
    batches = [list(b) for b in np.array_split(np.array(devices), n_tasks) if len(b)]
    rows = joblib.Parallel(n_jobs=args.jobs)(
        joblib.delayed(run_task)(i, [int(d) for d in b], args, partitioned, files)
        for i, b in enumerate(batches)
    )
    print(json.dumps({"rows": int(sum(rows)), "devices": len(devices), "files": len(batches)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
