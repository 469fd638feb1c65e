#!/usr/bin/env python3
"""Real-time scoring under load: `batchscore serve` against the FastAPI + scikit-learn peer
(score_peer.py), same 100 device models (the side-by-side benchmark's configuration (a):
scikit-learn forests exported and imported), same rows, same request bodies, driven by wrk.

For each rows-per-request and concurrency: wrk for --duration seconds against each service in
turn, after a warm-up that loads every model; prints requests/s, rows/s, p50 and p99 latency,
non-2xx answers and peak RSS of each service (its process tree), and the ratios, as Markdown;
then starts a run of the whole input through POST /v1/runs and times /healthz and the run's
status while it runs.
Before the load, one 100-row request to both checks that they agree (scores to 1e-12, every
decision). Access logs are off on both sides (RUST_LOG=warn, uvicorn --no-access-log);
batchscore checks an API key on every request, the peer has no auth.

  serve_load.py --bin target/release/batchscore [--duration 10] [--concurrency 1,16,64]
                [--rows 1,100] [--peer-workers 2]
"""

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import side_by_side  # noqa: E402

KEY = "bench-key-0123456789abcdef"
LUA = r"""
local bodies = {}
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
local i = math.random(#bodies)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("AUTH")
if auth and #auth > 0 then wrk.headers["Authorization"] = auth end
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"service exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} not ready after {timeout} s")


def post(url, body, auth=None):
    request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", auth)
    return json.loads(urllib.request.urlopen(request, timeout=60).read())


def rows_pool(readings, sensors, per_device=50, seed=7):
    rows = []
    for entry in sorted(os.listdir(readings)):
        if not entry.startswith("device_id="):
            continue
        device = int(entry.split("=", 1)[1])
        table = pq.read_table(os.path.join(readings, entry)).slice(0, per_device)
        columns = {s: table.column(s).to_pylist() for s in sensors}
        for i in range(table.num_rows):
            row = {"device_id": device}
            row.update({s: columns[s][i] for s in sensors})
            rows.append(row)
    random.Random(seed).shuffle(rows)
    return rows


def bodies_file(work, rows, per_request, count):
    path = os.path.join(work, f"bodies-{per_request}.jsonl")
    rng = random.Random(per_request)
    with open(path, "w") as f:
        for _ in range(count):
            f.write(json.dumps({"data": rng.sample(rows, per_request)}, separators=(",", ":")) + "\n")
    return path


def parse_latency(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(url, bodies, lua, concurrency, duration, auth):
    env = dict(os.environ, BODIES=bodies, AUTH=auth or "")
    cmd = ["wrk", "-t", str(min(2, concurrency)), "-c", str(concurrency), "-d", f"{duration}s",
           "--latency", "-s", lua, url]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        result[f"p{pct}"] = parse_latency(re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    result["non2xx"] = int(bad.group(1)) if bad else 0
    result["socket_errors"] = errors.group(0) if errors else ""
    return result


def tree_cpu_ticks(root):
    """CPU time (utime + stime, clock ticks) of a process tree so far."""
    children = side_by_side._children_map()
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
        stack.extend(children.get(pid, ()))
    return total


def settle(proc, limit=120):
    """Waits until a service has worked off what a load left queued (its CPU time stops
    growing), so that it does not steal the cores from the next measurement."""
    deadline = time.time() + limit
    last = tree_cpu_ticks(proc.pid)
    while time.time() < deadline:
        time.sleep(0.5)
        now = tree_cpu_ticks(proc.pid)
        if now - last <= 2:
            return
        last = now
    print(f"warning: service {proc.pid} still busy after {limit} s", file=sys.stderr)


def responsiveness(base, auth):
    """Starts a run of the whole input through POST /v1/runs and, until it completes, times
    GET /healthz and GET /v1/runs/ID every 10 ms: the HTTP side while a run has the cores."""
    def timed(url):
        request = urllib.request.Request(url, headers={"Authorization": auth})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return (time.perf_counter() - start) * 1e3, response.status, body

    request = urllib.request.Request(f"{base}/v1/runs", data=b'{"run_id": "responsiveness"}',
                                     headers={"Authorization": auth, "Content-Type": "application/json"})
    location = urllib.request.urlopen(request, timeout=30).headers["Location"]
    health, status, started = [], [], time.perf_counter()
    while time.perf_counter() - started < 600:
        health.append(timed(f"{base}/healthz")[0])
        ms, code, body = timed(location)
        status.append(ms)
        if code == 200:
            break
        time.sleep(0.01)
    summary = json.loads(body)
    pick = lambda xs: (sorted(xs)[len(xs) // 2], max(xs))
    return {"rows": summary["totals"]["rows"], "seconds": time.perf_counter() - started,
            "healthz": pick(health), "status": pick(status), "samples": len(health)}


class Peak:
    """Samples a process tree's RSS every 50 ms while running."""

    def __init__(self, pid):
        self.pid, self.peak, self.done = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self):
        while not self.done.wait(0.05):
            self.peak = max(self.peak, side_by_side.tree_rss_kb(self.pid))

    def stop(self):
        self.done.set()
        self.thread.join()
        return self.peak * 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", required=True)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--rows", default="1,100")
    parser.add_argument("--peer-workers", type=int, default=os.cpu_count())
    parser.add_argument("--cache", default=os.environ.get(
        "BATCHSCORE_BENCH_DIR", os.path.expanduser("~/.cache/batchscore/bench")))
    args = parser.parse_args(argv)
    python = sys.executable
    info = side_by_side.prepare(args.bin, python, "a", args.cache, os.cpu_count())
    readings = os.path.join(info["root"], "partitioned", "readings")
    sensors = info["sensors"]
    work = tempfile.mkdtemp(prefix="serve-load-")
    lua = os.path.join(work, "post.lua")
    with open(lua, "w") as f:
        f.write(LUA)
    pool = rows_pool(readings, sensors)
    sizes = [int(n) for n in args.rows.split(",")]
    bodies = {n: bodies_file(work, pool, n, 400 if n == 1 else 60) for n in sizes}

    bs_port, peer_port = free_port(), free_port()
    bs = subprocess.Popen(
        [args.bin, "serve", "--listen", f"127.0.0.1:{bs_port}", "--input", readings,
         "--registry", info["registry"], "--output", os.path.join(work, "runs")],
        env=dict(os.environ, RUST_LOG="warn", BATCHSCORE_API_KEYS=KEY),
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "batchscore.log"), "w"))
    peer = subprocess.Popen(
        [python, "-m", "uvicorn", "--app-dir", HERE, "score_peer:app", "--host", "127.0.0.1",
         "--port", str(peer_port), "--workers", str(args.peer_workers), "--no-access-log",
         "--log-level", "warning"],
        env=dict(os.environ, MODELS=os.path.join(info["root"], "models"), SENSORS=",".join(sensors)),
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "peer.log"), "w"))
    services = {
        "batchscore": (f"http://127.0.0.1:{bs_port}/v1/score", f"Bearer {KEY}", bs),
        "peer": (f"http://127.0.0.1:{peer_port}/score", None, peer),
    }
    try:
        wait_ready(f"http://127.0.0.1:{bs_port}/readyz", bs)
        wait_ready(f"http://127.0.0.1:{peer_port}/healthz", peer)
        check = json.dumps({"data": pool[:100]})
        ours = post(services["batchscore"][0], check, services["batchscore"][1])
        theirs = post(services["peer"][0], check)
        diff = max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs))
        same = sum(a["is_anomaly"] == b["is_anomaly"] for a, b in zip(ours, theirs))
        print(f"agreement on 100 rows: max |score difference| {diff:.2e}, same decision {same}/100",
              file=sys.stderr)
        if diff > 1e-12 or same != 100:
            raise SystemExit("the two services disagree: the comparison would be meaningless")
        # Warm-up: every worker loads every model.
        for name, (url, auth, proc) in services.items():
            wrk(url, bodies[sizes[-1]], lua, 4, 3, auth)
            settle(proc)
        results = []
        for n in sizes:
            for c in [int(x) for x in args.concurrency.split(",")]:
                row = {"rows": n, "c": c}
                for name, (url, auth, proc) in services.items():
                    peak = Peak(proc.pid)
                    r = wrk(url, bodies[n], lua, c, args.duration, auth)
                    r["rss"] = peak.stop()
                    row[name] = r
                    settle(proc)
                    print(f"{n} rows, c={c}, {name}: {r}", file=sys.stderr)
                results.append(row)
        during = responsiveness(f"http://127.0.0.1:{bs_port}", f"Bearer {KEY}")
    finally:
        for _, _, proc in services.values():
            proc.terminate()
        for _, _, proc in services.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(f"| rows/request | concurrency | batchscore req/s | rows/s | p50 ms | p99 ms | RSS MB "
          f"| peer req/s | rows/s | p50 ms | p99 ms | RSS MB | rows/s ratio | p99 ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in results:
        b, p = row["batchscore"], row["peer"]
        cells = [row["rows"], row["c"]]
        for r in (b, p):
            cells += [f"{r['rps']:,.0f}", f"{r['rps'] * row['rows']:,.0f}", f"{r['p50']:.2f}",
                      f"{r['p99']:.2f}", f"{r['rss'] / 1e6:.0f}"]
        cells += [f"{b['rps'] / p['rps']:.0f}x", f"{p['p99'] / b['p99']:.0f}x"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print()
    print(f"During a run of {during['rows']:,} rows ({during['seconds']:.1f} s, all cores): "
          f"GET /healthz p50 {during['healthz'][0]:.2f} ms, max {during['healthz'][1]:.2f} ms; "
          f"GET /v1/runs/ID p50 {during['status'][0]:.2f} ms, max {during['status'][1]:.2f} ms "
          f"({during['samples']} samples each)")
    bad = {(r["rows"], r["c"], n): r[n]["non2xx"] for r in results for n in services if r[n]["non2xx"]}
    if bad:
        print(f"non-2xx answers: {bad}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
