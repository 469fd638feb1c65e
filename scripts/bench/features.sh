#!/usr/bin/env bash
# What drift, aggregation and the report cost (docs/benchmarks.md): `run` against
# `run --no-drift` on configurations (a), (b), (c) with batchscore-trained models, the report
# of each run, and `aggregate` over long readings; prints Markdown tables.
#
#   scripts/bench/features.sh [--configs a,b,c] [--repeats 3] [--threads 2] [--aggregate-devices 2000]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cargo build --release --locked -q
bin="${CARGO_TARGET_DIR:-$root/target}/release/batchscore"
python="$(scripts/python-env.sh)"
exec "$python" scripts/bench/features.py --bin "$bin" "$@"
