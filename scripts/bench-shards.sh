#!/usr/bin/env bash
# Shard start-up with and without a stored plan, on Azurite with request counts: a run of
# SHARDS shards over FILES input files (hive partitions of ROWS rows each, tiny models). Prints
# one table: the first shard (scans, stores the plan), a shard of a run without a stored plan
# (scans, as every shard did before plans were stored), and shards reading the stored plan.
#
#   scripts/bench-shards.sh [FILES=10000] [SHARDS=1000] [ROWS=50]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ "${1:-}" == "--inside" ]]; then
    shift
    work="$1" shards="$2" bin="$3"
    export AZURE_STORAGE_USE_EMULATOR=true
    requests() { grep -c 'BlobStorageContextMiddleware: RequestMethod=' "$AZURITE_DEBUG_LOG" || true; }
    # Azurite writes its log asynchronously: wait until the count stops growing (at most 30 s).
    settled() {
        local last now
        last="$(requests)"
        for _ in $(seq 1 30); do
            sleep 1
            now="$(requests)"
            [[ "$now" == "$last" ]] && break
            last="$now"
        done
        echo "$last"
    }
    "$BATCHSCORE_PYTHON" "$root/scripts/azurite/blob.py" put-dir "$work/data/readings" batchscore-test shards/readings
    "$BATCHSCORE_PYTHON" "$root/scripts/azurite/blob.py" put-dir "$work/models" batchscore-test shards/models
    measure() { # label, run id, shard index
        local before after
        before="$(settled)"
        /usr/bin/time -f "%e %M" -o "$work/time" "$bin" --no-config -q run \
            --input az://batchscore-test/shards/readings --registry az://batchscore-test/shards/models \
            --output az://batchscore-test/shards/out --run-id "$2" \
            --shard-count "$shards" --shard-index "$3" >/dev/null
        after="$(settled)"
        read -r wall rss < "$work/time"
        echo "| $1 | $((after - before)) | $wall s | $((rss / 1024)) MB |"
    }
    echo
    echo "| shard of $shards | requests | wall | peak RSS |"
    echo "| --- | --- | --- | --- |"
    measure "500, no stored plan (scans, as every shard before)" scan 500
    measure "0, the first (scans, stores the plan)" planned 0
    measure "500, reads the stored plan (no units)" planned 500
    measure "501, reads the stored plan (no units)" planned 501
    measure "3, reads the stored plan (one unit)" planned 3
    exit 0
fi

files="${1:-10000}" shards="${2:-1000}" rows="${3:-50}"
cd "$root"
cargo build --release --locked -q
bin="${CARGO_TARGET_DIR:-$root/target}/release/batchscore"
work="$(mktemp -d -t batchscore-shards.XXXXXX)"
trap 'rm -rf "$work"' EXIT
"$bin" --no-config -q generate --devices "$files" --rows-per-device "$rows" --partition device \
    --out "$work/data" >/dev/null
"$bin" --no-config -q train --input "$work/data/readings" --registry "$work/models" \
    --n-estimators 5 >/dev/null
export AZURITE_DEBUG_LOG="$work/azurite-requests.log"
BATCHSCORE_PYTHON="$(scripts/python-env.sh)"
export BATCHSCORE_PYTHON
scripts/azurite/with-azurite.sh bash "$0" --inside "$work" "$shards" "$bin"
