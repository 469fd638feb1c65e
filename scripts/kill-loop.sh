#!/usr/bin/env bash
# Kills `batchscore run` with SIGKILL at random moments, N times (default 100), rerunning each
# time and comparing every part and receipt with an uninterrupted run's bytes; see
# tests/interrupt.rs. CI runs 3 trials as part of the test suite.
#
#   scripts/kill-loop.sh [N] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export BATCHSCORE_KILL_TRIALS="${1:-100}"
export BATCHSCORE_KILL_SEED="${2:-$RANDOM}"
exec cargo test --locked --test integration interrupt::kill_9 -- --nocapture
