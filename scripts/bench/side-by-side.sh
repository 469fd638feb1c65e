#!/usr/bin/env bash
# The side-by-side benchmark (docs/benchmarks.md): the Python peer (joblib over devices,
# joblib.load per model, pyarrow IO) against `batchscore run`, on the same data and the same
# scikit-learn forests, alternating runs; prints a Markdown table.
#
#   scripts/bench/side-by-side.sh [--configs a,b,c] [--repeats 3] [--scale]
#
# Builds the release binary and the Python environment (scripts/python-env.sh) first. Data and
# trained models are cached under $BATCHSCORE_BENCH_DIR (default ~/.cache/batchscore/bench);
# the first run of configuration (c) trains 10,000 forests in scikit-learn (minutes).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cargo build --release --locked -q
bin="${CARGO_TARGET_DIR:-$root/target}/release/batchscore"
python="$(scripts/python-env.sh)"
exec "$python" scripts/bench/side_by_side.py --bin "$bin" "$@"
