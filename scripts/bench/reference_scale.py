#!/usr/bin/env python3
"""The reference workload at scale: long-format readings of many (device, tag) series, one
StandardScaler + OneClassSVM pipeline per series, scored by the reference's pandas code and by
`batchscore run --profile reference`.

Called by scripts/bench/reference-scale.sh. Steps:

1. writes the readings (`TS,Device,Tag,Value` on a 5-second grid, as tests/reference/
   reference_flow.py writes them) and fits one pipeline per series on its values (the
   reference's create_model.py; grouped once instead of filtering the whole frame per model,
   which gives the same models), cached under --work;
2. times the reference's predict.py as it runs: per model, read the whole CSV, keep one series,
   predict, write its CSV. At scale that is hours, so it runs for the first --reference-models
   models and the total is extrapolated from their mean (said so in the table);
3. times a single-read pandas loop (read the CSV once, group, predict each series with its
   pickle, write one CSV): what a careful Python rewrite of the same step would do;
4. exports and imports the pickles into a batchscore registry (once) and times `batchscore run`;
5. checks that batchscore's predictions equal the single-read loop's for every row, and prints
   a Markdown table.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
from reference_flow import (  # noqa: E402  (the reference's own steps, shared with the tests)
    STEP_S, fit_pipeline, load_model, predict_one, predictions, save_model)
from side_by_side import fmt_mb, measure  # noqa: E402  (wall time, peak RSS of a process tree)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def readings(rng, devices, tags, hours):
    """The reference flow's readings, built column-wise (the same distribution and rounding)."""
    periods = hours * 3600 // STEP_S
    times = pd.date_range("2018-08-28 23:00:05", periods=periods, freq=f"{STEP_S}s")
    stamps = np.repeat(times.strftime("%Y-%m-%d %H:%M:%S.000").to_numpy(), devices * tags)
    device = np.tile(np.repeat(np.arange(1, devices + 1), tags), periods)
    tag = np.tile(np.arange(1, tags + 1), devices * periods)
    mean, sd = 10.0 * tag + device, 0.5 + 0.1 * tag
    value = np.round(rng.normal(mean, sd), 2)
    return pd.DataFrame({"TS": stamps, "Device": device, "Tag": tag, "Value": value})


def prepare(work, devices, tags, hours):
    marker = os.path.join(work, "prepared.json")
    if os.path.exists(marker):
        return
    for sub in ("data", "models"):
        os.makedirs(os.path.join(work, sub), exist_ok=True)
    t = time.perf_counter()
    data = readings(np.random.default_rng(20180828), devices, tags, hours)
    data.to_csv(os.path.join(work, "data", "sensor_data.csv"), index=False)
    log(f"readings: {len(data)} rows in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    first_hour = data.iloc[: 3600 // STEP_S * devices * tags]
    for (device, tag), series in first_hour.groupby(["Device", "Tag"], sort=True):
        save_model(work, device, tag, fit_pipeline(series))
    log(f"fitted {devices * tags} pipelines in {time.perf_counter() - t:.1f} s")
    with open(marker, "w") as f:
        json.dump({"rows": len(data)}, f)


def reference_loop(work, keys, out):
    """predict.py as the reference runs it, once per model."""
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    for device, tag in keys:
        predict_one(work, device, tag, out)
    return time.perf_counter() - started


def single_read_loop(work, out):
    """The same predictions with the CSV read once: the careful rewrite."""
    started = time.perf_counter()
    data = pd.read_csv(os.path.join(work, "data", "sensor_data.csv"))
    results = [predictions(load_model(work, device, tag), series)
               for (device, tag), series in data.groupby(["Device", "Tag"], sort=True)]
    pd.concat(results).to_csv(out, index=False)
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", required=True)
    parser.add_argument("--work", required=True,
                        help="cache directory; data and models go under DEVICESxTAGSxHOURS/")
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--tags", type=int, default=5)
    parser.add_argument("--hours", type=int, default=1)
    parser.add_argument("--reference-models", type=int, default=5)
    parser.add_argument("--prepare-only", action="store_true")
    args = parser.parse_args(argv)
    work = os.path.join(args.work, f"{args.devices}x{args.tags}x{args.hours}")
    prepare(work, args.devices, args.tags, args.hours)
    registry = os.path.join(work, "registry")
    if not os.path.exists(os.path.join(registry, "index.json")) or subprocess.run(
            [args.bin, "-q", "models", "--registry", registry, "verify"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["rm", "-rf", registry, os.path.join(work, "exported")], check=True)
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export_sklearn.py"),
                        os.path.join(work, "models"), "--out", os.path.join(work, "exported")],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([args.bin, "-q", "models", "import", os.path.join(work, "exported"),
                        "--registry", registry, "--key-pattern", "model_{device}_{sensor}"],
                       check=True, stdout=subprocess.DEVNULL)
    if args.prepare_only:
        return 0
    with open(os.path.join(work, "prepared.json")) as f:
        rows = json.load(f)["rows"]
    models = args.devices * args.tags
    scratch = os.path.join(work, "scratch")
    subprocess.run(["rm", "-rf", scratch], check=True)
    keys = [(d, t) for d in range(1, args.devices + 1) for t in range(1, args.tags + 1)]
    n_ref = min(args.reference_models, models)
    ref_s = reference_loop(work, keys[:n_ref], os.path.join(scratch, "reference"))
    ref_total = ref_s / n_ref * models
    expected = os.path.join(scratch, "expected.csv")
    single_s = single_read_loop(work, expected)
    out = os.path.join(scratch, "out")
    bs_s, bs_rss, _ = measure([args.bin, "-q", "run", "--input", os.path.join(work, "data"),
                          "--registry", registry, "--output", out, "--profile", "reference",
                          "--output-format", "csv", "--run-id", "bench"])
    # The same rows with the same predictions. The input is time-major (every series at each
    # time), so each part holds a stretch of time of many series, sorted within the part:
    # compare in (device, tag, time) order.
    parts = sorted(p for p in os.listdir(os.path.join(out, "bench")) if p.startswith("part-"))
    order = ["Device", "Tag", "TS"]
    got = pd.concat(pd.read_csv(os.path.join(out, "bench", p)) for p in parts)
    got = got.sort_values(order, kind="stable").reset_index(drop=True)
    want = pd.read_csv(expected).sort_values(order, kind="stable").reset_index(drop=True)
    same = len(got) == len(want) and all(
        (got[c].to_numpy() == want[c].to_numpy()).all() for c in want.columns)
    print(f"\n{models:,} series x {rows // models} rows ({rows:,} rows), one StandardScaler + "
          f"OneClassSVM pipeline each; outputs equal: {same}\n")
    print("| side | wall | rows/s | vs the reference |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| reference predict.py (CSV read per model; {n_ref} models timed, {ref_s:.1f} s, "
          f"extrapolated) | {ref_total:,.0f} s | {rows / ref_total:,.0f} | 1x |")
    print(f"| pandas, CSV read once | {single_s:.1f} s | {rows / single_s:,.0f} | "
          f"{ref_total / single_s:,.0f}x |")
    print(f"| batchscore run --profile reference ({fmt_mb(bs_rss)} peak) | {bs_s:.2f} s | "
          f"{rows / bs_s:,.0f} | {ref_total / bs_s:,.0f}x (pandas once: "
          f"{single_s / bs_s:.1f}x) |")
    subprocess.run(["rm", "-rf", scratch], check=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
