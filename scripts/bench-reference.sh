#!/usr/bin/env bash
# The reference workload side by side: the reference system's pandas scoring code
# (tests/reference/reference_flow.py: per model, read the whole CSV, unpickle the
# StandardScaler + OneClassSVM pipeline, predict one (device, tag) series, write its CSV) against
# `batchscore run --profile reference --output-format csv` over the same pickles (exported and
# imported once). Checks that both outputs are identical, then prints a table.
#
#   scripts/bench-reference.sh [DEVICES] [TAGS] [HOURS]     (default 20 5 6: 100 models)
#
# The Python side runs every model in one process, without container start-up or downloads: a
# lower bound for the reference system, which starts one container job per model.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
devices="${1:-20}" tags="${2:-5}" hours="${3:-6}"
cd "$root"
cargo build --release --locked -q
bin="${CARGO_TARGET_DIR:-$root/target}/release/batchscore"
python="$(scripts/python-env.sh)"
work="$(mktemp -d -t batchscore-reference.XXXXXX)"
trap 'rm -rf "$work"' EXIT

peer="$("$python" tests/reference/reference_flow.py "$work" \
    --devices "$devices" --tags "$tags" --hours "$hours")"
peer_s="$(sed -E 's/reference scoring: ([0-9.]+) s.*/\1/' <<<"$peer")"
rows="$(($(wc -l <"$work/expected.csv") - 1))"
models=$((devices * tags))
csv_mb="$(du -m "$work/data/sensor_data.csv" | cut -f1)"

timed() { # label, command...: appends "label wall_s rss_mb" to $work/times
    local label="$1"; shift
    /usr/bin/time -f "$label %e %M" -a -o "$work/times" "$@" >/dev/null
}
timed export "$python" scripts/export_sklearn.py "$work/models" --out "$work/exported"
timed import "$bin" -q models import "$work/exported" --registry "$work/registry" \
    --key-pattern 'model_{device}_{sensor}'
timed run "$bin" -q run --input "$work/data" --registry "$work/registry" \
    --output "$work/out" --profile reference --output-format csv --run-id bench

# The parts, concatenated in unit order with one header, must equal the reference's output.
run="$work/out/bench"
parts="$("$python" -c 'import json,sys; print("\n".join(p["path"] for p in json.load(open(sys.argv[1]))["parts"]))' "$run/_SUCCESS")"
first=1
for p in $parts; do
    if [[ $first == 1 ]]; then cat "$run/$p"; first=0; else tail -n +2 "$run/$p"; fi
done >"$work/batchscore.csv"
if cmp -s "$work/batchscore.csv" "$work/expected.csv"; then
    same="byte-identical"
elif cmp -s <(sort "$work/batchscore.csv") <(sort "$work/expected.csv"); then
    same="identical rows, in another order"
else
    same="DIFFERENT (see $work)"; trap - EXIT
fi

read -r _ run_s run_kb < <(grep '^run ' "$work/times")
read -r _ export_s _ < <(grep '^export ' "$work/times")
read -r _ import_s _ < <(grep '^import ' "$work/times")
printf '\n%s models (%s devices x %s tags), %s rows, %s hours at 5 s, CSV %s MB; outputs: %s\n\n' \
    "$models" "$devices" "$tags" "$rows" "$hours" "$csv_mb" "$same"
printf '| step | wall | rows/s | peak RSS |\n| --- | --- | --- | --- |\n'
printf '| reference scoring (pandas + scikit-learn, one process) | %.2f s | %.0f | |\n' \
    "$peer_s" "$(awk "BEGIN{print $rows / $peer_s}")"
printf '| batchscore run --profile reference --output-format csv | %.2f s | %.0f | %d MB |\n' \
    "$run_s" "$(awk "BEGIN{print $rows / $run_s}")" "$((run_kb / 1024))"
printf '| once: export_sklearn.py | %.2f s | | |\n| once: batchscore models import | %.2f s | | |\n' \
    "$export_s" "$import_s"
printf '\nspeed-up of scoring: %.1fx\n' "$(awk "BEGIN{print $peer_s / $run_s}")"
