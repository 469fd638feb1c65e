#!/usr/bin/env bash
# Measures batchscore against Azurite next to local disk, and prints a table:
#   - the same scoring run (same inputs, registry and run id) with input, registry and output on
#     local disk, then on Azurite: wall time, rows/s, peak memory, and storage requests (all,
#     then those to the input, the registry and the output); once more with the registry's
#     models one object each (as registries written before packs hold them);
#   - opening (`models list`) and verifying a registry of many models on Azurite: requests.
# Requests are counted from Azurite's own request log, independently of batchscore.
#
#   scripts/bench-azure.sh [DEVICES] [ROWS_PER_DEVICE] [REGISTRY_MODELS] [REPEATS]
#   defaults:               1000      1000              10000             3
#
# Azurite runs on loopback (scripts/azurite/with-azurite.sh) and is stopped at the end; Azurite
# is an emulator in Node.js, so its figures show request counts and overheads, not Azure's speed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ "${1:-}" == "--inside" ]]; then
    shift
    work="$1" devices="$2" rows="$3" models="$4" repeats="$5" bin="$6"
    py="${BATCHSCORE_PYTHON:-python3}"
    export AZURE_STORAGE_USE_EMULATOR=true
    requests() { grep -c 'BlobStorageContextMiddleware: RequestMethod=' "$AZURITE_DEBUG_LOG" || true; }
    measure() { # label, then the command; prints one table row
        local label="$1"; shift
        local before after lines
        before="$(requests)"
        lines="$(wc -l < "$AZURITE_DEBUG_LOG")"
        /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null
        after="$(requests)"
        read -r wall rss < "$work/time"
        # The requests of this command, by the prefix they went to.
        tail -n +"$((lines + 1))" "$AZURITE_DEBUG_LOG" \
            | grep 'BlobStorageContextMiddleware: RequestMethod=' > "$work/requests" || true
        by() { grep -c "RequestURL=[^ ]*/bench/$1" "$work/requests" || true; }
        local total=$((devices * rows))
        printf '| %s | %s s | %s rows/s | %s MB | %s | %s | %s | %s |\n' "$label" "$wall" \
            "$(python3 -c "print(f'{$total / max($wall, 0.001):,.0f}')")" "$((rss / 1024))" \
            "$((after - before))" "$(by readings/)" "$(by 'models[a-z-]*/')" "$(by out/)"
    }
    "$py" "$root/scripts/azurite/blob.py" put-dir "$work/data/readings" batchscore-test bench/readings
    "$py" "$root/scripts/azurite/blob.py" put-dir "$work/models" batchscore-test bench/models
    "$py" "$root/scripts/azurite/blob.py" put-dir "$work/models-lone" batchscore-test bench/models-lone
    echo
    echo "Scoring $devices devices x $rows rows ($((devices * rows)) rows, 8 sensors, 100 trees), $(nproc) cores:"
    echo
    echo "| run | wall | throughput | peak RSS | requests | input | registry | output |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    for i in $(seq 1 "$repeats"); do
        measure "local disk #$i" "$bin" -q run --input "$work/data/readings" \
            --registry "$work/models" --output "$work/out" --run-id "bench-$i"
        measure "Azurite #$i" "$bin" -q run --input az://batchscore-test/bench/readings \
            --registry az://batchscore-test/bench/models --output az://batchscore-test/bench/out \
            --run-id "bench-$i"
    done
    measure "Azurite, one object per model" "$bin" -q run --input az://batchscore-test/bench/readings \
        --registry az://batchscore-test/bench/models-lone --output az://batchscore-test/bench/out \
        --run-id "bench-lone"
    measure "Azurite, rerun of a committed run" "$bin" -q run \
        --input az://batchscore-test/bench/readings --registry az://batchscore-test/bench/models \
        --output az://batchscore-test/bench/out --run-id bench-1
    cmp <("$py" "$root/scripts/azurite/blob.py" get batchscore-test bench/out/bench-1/part-00000.parquet) \
        "$work/out/bench-1/part-00000.parquet" && echo && echo "(part-00000 is byte-identical on local disk and Azurite)"

    echo
    echo "Registry of $models models on Azurite (10 trees each):"
    echo
    "$bin" -q generate --devices "$models" --rows-per-device 64 --sensors 4 --seed 1 \
        --out "$work/many" >/dev/null
    before="$(requests)"
    start=$(date +%s.%N)
    "$bin" -q train --input "$work/many/readings" --registry az://batchscore-test/bench/many \
        --n-estimators 10 --max-samples 32 >/dev/null
    end=$(date +%s.%N)
    echo "| step | requests | wall |"
    echo "| --- | --- | --- |"
    echo "| train $models models into the registry | $(( $(requests) - before )) | $(python3 -c "print(f'{$end - $start:.2f} s')") |"
    for step in list verify; do
        before="$(requests)"
        start=$(date +%s.%N)
        "$bin" -q models "$step" --registry az://batchscore-test/bench/many >/dev/null
        end=$(date +%s.%N)
        echo "| models $step | $(( $(requests) - before )) | $(python3 -c "print(f'{$end - $start:.2f} s')") |"
    done
    exit 0
fi

devices="${1:-1000}" rows="${2:-1000}" models="${3:-10000}" repeats="${4:-3}"
cd "$root"
cargo build --release --locked -q
bin="${CARGO_TARGET_DIR:-$root/target}/release/batchscore"
work="$(mktemp -d -t batchscore-bench.XXXXXX)"
trap 'rm -rf "$work"' EXIT
"$bin" -q generate --devices "$devices" --rows-per-device "$rows" --sensors 8 --seed 42 \
    --out "$work/data" >/dev/null
"$bin" -q train --input "$work/data/readings" --registry "$work/models" >/dev/null
# The same models one object each, as registries written before packs hold them.
"${BATCHSCORE_PYTHON:-python3}" "$root/scripts/bench/unpack_registry.py" "$work/models" "$work/models-lone"
export AZURITE_DEBUG_LOG="$work/azurite-requests.log"
BATCHSCORE_PYTHON="$(scripts/python-env.sh)"
export BATCHSCORE_PYTHON
scripts/azurite/with-azurite.sh bash "$0" --inside "$work" "$devices" "$rows" "$models" "$repeats" "$bin"
