#!/usr/bin/env bash
# The reference workload at scale (docs/benchmarks.md, "The reference workload at scale"):
# 10,000 (device, tag) series of one hour at 5 s, one StandardScaler + OneClassSVM pipeline
# each, scored by the reference's pandas code (timed on a few models, extrapolated), by a
# single-read pandas loop, and by `batchscore run --profile reference`; outputs compared.
#
#   scripts/bench/reference-scale.sh [--devices 2000] [--tags 5] [--hours 1] [--reference-models 5]
#
# Data and models are cached under $BATCHSCORE_BENCH_DIR (default ~/.cache/batchscore/bench).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cargo build --release --locked -q
bin="${CARGO_TARGET_DIR:-$root/target}/release/batchscore"
python="$(scripts/python-env.sh)"
work="${BATCHSCORE_BENCH_DIR:-$HOME/.cache/batchscore/bench}/reference-scale"
exec "$python" scripts/bench/reference_scale.py --bin "$bin" --work "$work" "$@"
