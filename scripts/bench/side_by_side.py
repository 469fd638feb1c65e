#!/usr/bin/env python3
"""The side-by-side benchmark: the Python peer (peer.py) and `batchscore run`, same data, same forests.

Called by scripts/bench/side-by-side.sh, which builds the release binary and the Python
environment first. For each configuration (devices x rows per device, 8 sensors):

1. generates the readings with `batchscore generate`, once partitioned by device
   (`device_id=N/`) and once as one file sorted by device (same seed: the same rows);
2. trains one scikit-learn IsolationForest per device (prepare.py: 100 trees, 256 samples,
   contamination "auto"), saves it with joblib for the peer and exports it, then imports those
   same forests into a batchscore registry;
3. runs the peer and batchscore alternately (peer first on even repeats, batchscore first on odd
   ones), each into a fresh output directory, measuring wall time and the peak RSS of the whole
   process tree (the sum of VmRSS over the process and all its descendants, sampled every
   50 ms, and never below the largest VmHWM, the kernel's own per-process high-water mark);
4. checks on the first repeat that both outputs hold the same rows with the same scores and
   the same anomalies;
5. prints a Markdown table of the medians.

Steps 1-2 are cached under $BATCHSCORE_BENCH_DIR (default ~/.cache/batchscore/bench): training
10,000 forests in scikit-learn takes minutes and needs doing once.

`--scale` adds batchscore-only runs over one sorted file of 1,000 devices at 2,000 / 5,000 /
20,000 / 50,000 rows per device (2 M to 50 M rows, configuration (b)'s models): peak RSS as the
input grows, and time per row (linearity).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {"a": (100, 10_000), "b": (1_000, 2_000), "c": (10_000, 200)}
SCALE = [2_000, 5_000, 20_000, 50_000]
SENSORS = 8
SEED = 7
LAYOUTS = ("partitioned", "sorted")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kw):
    log("$ " + " ".join(str(c) for c in cmd))
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


# --- peak RSS of a process tree ---------------------------------------------------------------

def _children_map():
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    return parents


def _rss_kb(pid):
    """(VmRSS, VmHWM) of one process in KiB: its resident size now and its peak since exec."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def tree_rss_kb(root):
    """The tree's summed RSS now, and the largest single-process peak (VmHWM) in it."""
    children = _children_map()
    total, top, stack = 0, 0, [root]
    while stack:
        pid = stack.pop()
        rss, hwm = _rss_kb(pid)
        total += rss
        top = max(top, hwm)
        stack.extend(children.get(pid, ()))
    return max(total, top)


def measure(cmd, env=None):
    """(wall seconds, peak tree RSS in bytes, stdout) of one command."""
    wall, rss, out, _ = measure_cpu(cmd, env)
    return wall, rss, out


def measure_cpu(cmd, env=None):
    """(wall seconds, peak tree RSS in bytes, stdout, CPU seconds user + system) of one
    command."""
    start = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, env=env)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            peak[0] = max(peak[0], tree_rss_kb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = proc.stdout.read()
    # Not the rusage's ru_maxrss: it survives exec, so it would count the forked benchmark
    # driver's own memory. VmHWM (sampled above) starts afresh at exec.
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed with exit code {proc.returncode}")
    return wall, peak[0] * 1024, out.decode(), usage.ru_utime + usage.ru_stime


# --- data and models ---------------------------------------------------------------------------

def generate(bin_, devices, rows, partition, out):
    if os.path.exists(os.path.join(out, ".done")):
        return
    shutil.rmtree(out, ignore_errors=True)
    run([bin_, "-q", "generate", "--devices", devices, "--rows-per-device", rows,
         "--sensors", SENSORS, "--seed", SEED, "--partition", partition,
         "--rows-per-file", devices * rows, "--out", out])
    open(os.path.join(out, ".done"), "w").close()


def prepare(bin_, python, name, cache, jobs):
    devices, rows = CONFIGS[name]
    root = os.path.join(cache, f"{name}-{devices}x{rows}")
    generate(bin_, devices, rows, "device", os.path.join(root, "partitioned"))
    generate(bin_, devices, rows, "none", os.path.join(root, "sorted"))
    models, exported = os.path.join(root, "models"), os.path.join(root, "exported")
    marker = os.path.join(root, "models.json")
    if not os.path.exists(marker):
        shutil.rmtree(models, ignore_errors=True)
        shutil.rmtree(exported, ignore_errors=True)
        t = time.perf_counter()
        out = run([python, os.path.join(HERE, "prepare.py"), "--input",
                   os.path.join(root, "partitioned", "readings"), "--models", models,
                   "--exported", exported, "--jobs", jobs], stdout=subprocess.PIPE).stdout
        info = json.loads(out)
        info["train_export_s"] = time.perf_counter() - t
        with open(marker, "w") as f:
            json.dump(info, f)
    with open(marker) as f:
        info = json.load(f)
    registry = os.path.join(root, "registry")
    # The registry is rebuilt when it is missing or this build cannot read it (a new format).
    ok = os.path.exists(os.path.join(registry, "index.json")) and subprocess.run(
        [bin_, "-q", "models", "--registry", registry, "verify"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    if not ok:
        shutil.rmtree(registry, ignore_errors=True)
        t = time.perf_counter()
        run([bin_, "-q", "models", "import", exported, "--registry", registry,
             "--features", ",".join(info["sensors"])], stdout=subprocess.DEVNULL)
        info["import_s"] = time.perf_counter() - t
        with open(marker, "w") as f:
            json.dump(info, f)
    info["root"], info["registry"] = root, registry
    info["model_bytes"] = dir_bytes(models) // devices
    # Model files are packed (packs/) or, in registries written before packs, lone (models/).
    info["bsm_bytes"] = sum(dir_bytes(os.path.join(registry, d))
                            for d in ("models", "packs") if os.path.isdir(os.path.join(registry, d))) // devices
    return info


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


# --- the two sides -----------------------------------------------------------------------------

def peer(python, readings, models, out, jobs):
    return measure([python, os.path.join(HERE, "peer.py"), "--input", readings, "--models",
                    models, "--output", out, "--jobs", jobs])


def batchscore(bin_, readings, registry, out, jobs):
    return measure([bin_, "-q", "run", "--input", readings, "--registry", registry,
                    "--output", out, "--run-id", "bench", "--threads", jobs,
                    "--summary", "json"])


def compare(peer_out, bs_out):
    """(rows, max relative score difference, rows whose is_anomaly differs)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = ["device_id", "timestamp", "score", "decision", "is_anomaly"]
    a = pa.concat_tables(pq.read_table(os.path.join(peer_out, f), columns=cols)
                         for f in sorted(os.listdir(peer_out)))
    run_dir = os.path.join(bs_out, "bench")
    with open(os.path.join(run_dir, "_SUCCESS")) as f:
        parts = [p["path"] for p in json.load(f)["parts"]]
    b = pa.concat_tables(pq.read_table(os.path.join(run_dir, p), columns=cols) for p in parts)
    if a.num_rows != b.num_rows:
        return a.num_rows, b.num_rows, float("inf"), -1
    keys = [("device_id", "ascending"), ("timestamp", "ascending")]
    a, b = a.sort_by(keys), b.sort_by(keys)
    for k in ("device_id", "timestamp"):
        if not a.column(k).equals(b.column(k).cast(a.column(k).type)):
            return a.num_rows, b.num_rows, float("inf"), -1
    worst = 0.0
    for k in ("score", "decision"):
        x, y = a.column(k).to_numpy(), b.column(k).to_numpy()
        rel = np.abs(x - y) / np.maximum(np.abs(x), 1e-300)
        worst = max(worst, float(rel.max()))
    flips = int((a.column("is_anomaly").to_numpy() != b.column("is_anomaly").to_numpy()).sum())
    return a.num_rows, b.num_rows, worst, flips


def fmt_mb(n):
    return f"{n / 2**20:,.0f} MB"


def side_by_side(args, bin_, python, work):
    results = []
    for name in args.configs:
        info = prepare(bin_, python, name, args.cache, args.jobs)
        devices, rows_per = CONFIGS[name]
        for layout in LAYOUTS:
            readings = os.path.join(info["root"], layout, "readings")
            times = {"peer": [], "batchscore": []}
            check = None
            for r in range(args.repeats):
                order = ("peer", "batchscore") if r % 2 == 0 else ("batchscore", "peer")
                outs = {}
                for side in order:
                    out = os.path.join(work, f"{side}-{r}")
                    if side == "peer":
                        m = peer(python, readings, os.path.join(info["root"], "models"), out,
                                 args.jobs)
                    else:
                        m = batchscore(bin_, readings, info["registry"], out, args.jobs)
                    times[side].append(m[:2])
                    outs[side] = out
                    log(f"  {name} {layout} {side}: {m[0]:.2f} s, {fmt_mb(m[1])}")
                if check is None:
                    check = compare(outs["peer"], outs["batchscore"])
                    log(f"  {name} {layout} outputs: {check}")
                for out in outs.values():
                    shutil.rmtree(out)
            results.append((name, devices, rows_per, layout, times, check, info))
    return results


def scale(args, bin_, python, work):
    info = prepare(bin_, python, "b", args.cache, args.jobs)
    rows_out = []
    for rows_per in SCALE:
        root = os.path.join(args.cache, f"scale-1000x{rows_per}")
        generate(bin_, 1000, rows_per, "none", root)
        readings = os.path.join(root, "readings")
        runs = []
        for r in range(args.repeats):
            out = os.path.join(work, f"scale-{r}")
            wall, rss, _ = batchscore(bin_, readings, info["registry"], out, args.jobs)
            shutil.rmtree(out)
            runs.append((wall, rss))
            log(f"  scale {rows_per}: {wall:.2f} s, {fmt_mb(rss)}")
        rows_out.append((1000 * rows_per, runs, dir_bytes(readings)))
    return rows_out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", required=True, help="the batchscore release binary")
    parser.add_argument("--configs", default="a,b,c", help="any of a,b,c (default all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--scale", action="store_true", help="also the 2 M to 50 M rows runs")
    parser.add_argument("--prepare-only", action="store_true",
                        help="generate the data and train and import the models, then stop")
    parser.add_argument("--cache", default=os.environ.get("BATCHSCORE_BENCH_DIR") or
                        os.path.join(os.path.expanduser("~"), ".cache", "batchscore", "bench"))
    args = parser.parse_args(argv)
    args.configs = [c for c in args.configs.split(",") if c]
    for c in args.configs:
        if c not in CONFIGS:
            parser.error(f"unknown configuration {c!r} (a, b, c)")
    python = sys.executable
    os.makedirs(args.cache, exist_ok=True)
    if args.prepare_only:
        for name in args.configs:
            prepare(args.bin, python, name, args.cache, args.jobs)
        if args.scale:
            for rows_per in SCALE:
                generate(args.bin, 1000, rows_per, "none",
                         os.path.join(args.cache, f"scale-1000x{rows_per}"))
        return 0
    work = tempfile.mkdtemp(prefix="batchscore-bench.")
    try:
        results = side_by_side(args, args.bin, python, work)
        scaled = scale(args, args.bin, python, work) if args.scale else []
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.jobs} workers on each side; {os.cpu_count()} cores; medians of "
          f"{args.repeats} alternating runs; {SENSORS} sensors; 100 trees x 256 samples per device.\n")
    print("| config | input | rows | peer wall | peer rows/s | peer peak RSS | batchscore wall "
          "| batchscore rows/s | batchscore peak RSS | speed-up | outputs |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, devices, rows_per, layout, times, check, _ in results:
        rows = devices * rows_per
        p = statistics.median(t for t, _ in times["peer"])
        b = statistics.median(t for t, _ in times["batchscore"])
        p_rss = max(m for _, m in times["peer"])
        b_rss = max(m for _, m in times["batchscore"])
        n_peer, n_bs, worst, flips = check
        same = (f"same rows, max rel. diff {worst:.1e}, {flips} anomaly flips"
                if n_peer == n_bs == rows else f"DIFFERENT rows: peer {n_peer}, batchscore {n_bs}")
        print(f"| ({name}) {devices:,} x {rows_per:,} | {layout} | {rows:,} | {p:.2f} s "
              f"| {rows / p:,.0f} | {fmt_mb(p_rss)} | {b:.2f} s | {rows / b:,.0f} "
              f"| {fmt_mb(b_rss)} | {p / b:.1f}x | {same} |")
    print("\n| config | joblib model | batchscore model | share | train + export (Python) "
          "| batchscore models import |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    seen = set()
    for name, devices, rows_per, _, _, _, info in results:
        if name in seen:
            continue
        seen.add(name)
        imp = f"{info['import_s']:.1f} s" if "import_s" in info else "(cached)"
        print(f"| ({name}) {devices:,} models | {info['model_bytes']:,} B | {info['bsm_bytes']:,} B "
              f"| {100 * info['bsm_bytes'] / info['model_bytes']:.1f} % "
              f"| {info['train_export_s']:.0f} s | {imp} |")
    if scaled:
        print("\nbatchscore alone, one sorted file of 1,000 devices, configuration (b)'s models:\n")
        print("| rows | input | wall | rows/s | peak RSS | time / rows vs 2 M |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        base = None
        for rows, runs, size in scaled:
            wall = statistics.median(w for w, _ in runs)
            rss = max(m for _, m in runs)
            per_row = wall / rows
            base = base or per_row
            print(f"| {rows:,} | {fmt_mb(size)} | {wall:.2f} s | {rows / wall:,.0f} | {fmt_mb(rss)} "
                  f"| {per_row / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
