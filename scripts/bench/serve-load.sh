#!/usr/bin/env bash
# Real-time scoring under load, side by side (docs/benchmarks.md, "Real-time scoring"):
# `batchscore serve` against a FastAPI + scikit-learn peer on the same 100 device models and the
# same rows, driven by wrk at concurrency 1, 16 and 64 with 1-row and 100-row requests.
#
#   scripts/bench/serve-load.sh [--duration 10] [--concurrency 1,16,64] [--rows 1,100]
#
# Installs what it needs: the release binary, the Python env (scripts/python-env.sh) plus
# FastAPI and uvicorn (scripts/bench/requirements-serve.txt), and wrk (Debian package). Data
# and models are those of the side-by-side benchmark's configuration (a), cached under
# $BATCHSCORE_BENCH_DIR. Both services listen on loopback only and are stopped at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
if ! command -v wrk >/dev/null; then
    (apt-get install -y -q wrk || (apt-get update -q && apt-get install -y -q wrk)) >&2
fi
cargo build --release --locked -q
bin="${CARGO_TARGET_DIR:-$root/target}/release/batchscore"
python="$(scripts/python-env.sh)"
"$python" -m pip install --quiet --disable-pip-version-check -r scripts/bench/requirements-serve.txt >&2
exec "$python" scripts/bench/serve_load.py --bin "$bin" "$@"
