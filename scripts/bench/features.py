"""What drift, aggregation and the report cost (docs/benchmarks.md, "Drift, aggregation and
the report"). Prints Markdown tables.

  scripts/bench/features.sh [--configs a,b,c] [--repeats 3] [--threads 2]
                            [--aggregate-devices 2000] [--skip-drift] [--skip-aggregation]

1. Drift: for each configuration (devices x rows per device, 8 sensors, one file sorted by
   device) batchscore trains one IsolationForest per device (100 trees, 256 samples; the models
   carry their drift reference), then `batchscore run` and `batchscore run --no-drift` run
   back to back, in alternating order, into fresh output directories; the median of the pairs'
   differences (wall and CPU time) is what drift costs, counting in each unit and the merge
   into drift.parquet when the run completes.
2. The report of the last drift-measuring run of each configuration: `batchscore report` (HTML)
   and `--format json`, wall time and size.
3. Aggregation: long readings (timestamp, device, sensor, value; 5 sensors at 5 s) of N devices,
   `batchscore aggregate --every 1m` with five statistics, without and with a pivot to one row
   per device and minute; raw readings per second.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from side_by_side import CONFIGS, SENSORS, SEED, log, measure, measure_cpu, run  # noqa: E402

TAGS = "humidity,pressure,rpm,temperature,vibration"


def done(path):
    return os.path.exists(os.path.join(path, ".done"))


def mark(path):
    open(os.path.join(path, ".done"), "w").close()


def prepare_drift(bin_, cache, name):
    devices, rows = CONFIGS[name]
    root = os.path.join(cache, f"drift-{name}-{devices}x{rows}")
    data, registry = os.path.join(root, "data"), os.path.join(root, "registry")
    if not done(data):
        shutil.rmtree(data, ignore_errors=True)
        run([bin_, "-q", "generate", "--devices", devices, "--rows-per-device", rows,
             "--sensors", SENSORS, "--seed", SEED, "--partition", "none",
             "--rows-per-file", devices * rows, "--out", data])
        mark(data)
    if not done(registry):
        shutil.rmtree(registry, ignore_errors=True)
        run([bin_, "-q", "train", "--input", os.path.join(data, "readings"),
             "--registry", registry, "--devices", "all"])
        mark(registry)
    return os.path.join(data, "readings"), registry, devices * rows


def drift(bin_, cache, names, repeats, threads):
    rows_out, reports = [], []
    for name in names:
        readings, registry, rows = prepare_drift(bin_, cache, name)
        walls = {"drift": [], "no drift": []}
        cpus = {"drift": [], "no drift": []}
        last = None
        for r in range(repeats):
            order = ["drift", "no drift"] if r % 2 == 0 else ["no drift", "drift"]
            for mode in order:
                out = tempfile.mkdtemp(prefix="bs-drift-")
                cmd = [bin_, "-q", "run", "--input", readings, "--registry", registry,
                       "--output", out, "--devices", "all", "--run-id", "bench",
                       "--threads", threads]
                if mode == "no drift":
                    cmd.append("--no-drift")
                wall, _, _, cpu = measure_cpu(cmd)
                walls[mode].append(wall)
                cpus[mode].append(cpu)
                if mode == "drift":
                    if last:
                        shutil.rmtree(last, ignore_errors=True)
                    last = out
                else:
                    shutil.rmtree(out, ignore_errors=True)
        with_, without = statistics.median(walls["drift"]), statistics.median(walls["no drift"])
        cpu_with, cpu_without = statistics.median(cpus["drift"]), statistics.median(cpus["no drift"])
        # The share is the median of the differences within each back-to-back pair: the
        # machine's speed wanders over minutes (other tenants) far more than within a pair.
        def paired(m):
            return statistics.median(a - b for a, b in zip(m["drift"], m["no drift"]))

        devices, per = CONFIGS[name]
        rows_out.append((f"({name}) {devices:,} x {per:,}", rows, without, with_,
                         100 * paired(walls) / with_, cpu_without, cpu_with,
                         100 * paired(cpus) / cpu_with))
        for fmt, file in (("html", "report.html"), ("json", "report.json")):
            wall, rss, _ = measure([bin_, "-q", "report", "--output", last, "--run-id", "bench",
                                    "--format", fmt])
            size = os.path.getsize(os.path.join(last, "bench", file))
            reports.append((f"({name}) {devices:,} x {per:,}", fmt, wall, size, rss))
        shutil.rmtree(last, ignore_errors=True)
    print(f"\nDrift: medians of {repeats} back-to-back pairs in alternating order, {threads} threads;"
          " a share is the median of the pairs' differences over the median `run` (wall, and CPU"
          " time user + system)\n")
    print("| config | rows | `run --no-drift` | `run` (drift measured) | drift's share |"
          " CPU `--no-drift` | CPU `run` | share of CPU |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, rows, without, with_, share, cpu_without, cpu_with, cpu_share in rows_out:
        print(f"| {label} | {rows:,} | {without:.2f} s | {with_:.2f} s | {share:.1f} % |"
              f" {cpu_without:.2f} s | {cpu_with:.2f} s | {cpu_share:.1f} % |")
    print("\nReport of the drift-measuring run\n")
    print("| config | format | wall | size | peak RSS |")
    print("| --- | --- | ---: | ---: | ---: |")
    for label, fmt, wall, size, rss in reports:
        print(f"| {label} | {fmt} | {wall:.2f} s | {size / 1024:,.0f} KiB | {rss / 2**20:.0f} MB |")


def aggregation(bin_, cache, devices, repeats):
    root = os.path.join(cache, f"aggregate-long-{devices}")
    data = os.path.join(root, "data")
    if not done(data):
        shutil.rmtree(data, ignore_errors=True)
        run([bin_, "-q", "generate", "--devices", devices, "--rows-per-device", 1000,
             "--sensors", 5, "--layout", "long", "--interval-seconds", 5, "--seed", SEED,
             "--partition", "none", "--out", data])
        mark(data)
    readings = os.path.join(data, "readings")
    results = []
    for label, extra in (("1m windows, per (device, sensor)", []),
                         ("1m windows, pivoted per device", ["--pivot", "--sensors", TAGS])):
        walls, rss_all = [], []
        for _ in range(repeats):
            out = tempfile.mkdtemp(prefix="bs-agg-")
            wall, rss, text = measure([bin_, "-q", "aggregate", "--input", readings, "--output",
                                       out, "--every", "1m", "--stats",
                                       "count,mean,std,min,max", "--run-id", "bench",
                                       "--summary", "json"] + extra)
            manifest = json.loads(text)
            raw = sum(d["rows"] for d in manifest["devices"])
            windows = manifest["totals"]["rows"]
            walls.append(wall)
            rss_all.append(rss)
            shutil.rmtree(out, ignore_errors=True)
        wall = statistics.median(walls)
        results.append((label, raw, windows, wall, max(rss_all)))
    print(f"\nAggregation of long readings ({devices:,} devices x 5 sensors x 1,000 readings at 5 s),"
          f" median of {repeats}, 2 threads\n")
    print("| job | raw readings | windows written | wall | readings/s | peak RSS |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, raw, windows, wall, rss in results:
        print(f"| {label} | {raw:,} | {windows:,} | {wall:.2f} s | {raw / wall:,.0f} |"
              f" {rss / 2**20:.0f} MB |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--configs", default="a,b,c")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--aggregate-devices", type=int, default=2000)
    p.add_argument("--skip-aggregation", action="store_true")
    p.add_argument("--skip-drift", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    cache = os.environ.get("BATCHSCORE_BENCH_DIR",
                           os.path.expanduser("~/.cache/batchscore/bench"))
    os.makedirs(cache, exist_ok=True)
    if not args.skip_drift:
        drift(args.bin, cache, args.configs.split(","), args.repeats, args.threads)
    if not args.skip_aggregation:
        aggregation(args.bin, cache, args.aggregate_devices, args.repeats)


if __name__ == "__main__":
    main()
