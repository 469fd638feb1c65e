#!/usr/bin/env bash
# Runs a command with Azurite's blob service up on 127.0.0.1, then always stops it.
#
#   scripts/azurite/with-azurite.sh cargo test --workspace
#
# Installs the pinned Azurite (package-lock.json) into scripts/azurite/node_modules when missing,
# starts the blob service on a free loopback port with a temporary data directory and the
# emulator's well-known development account, creates the test containers, and exports
#   AZURITE_BLOB_STORAGE_URL   http://127.0.0.1:PORT (read by object_store's emulator mode)
#   BATCHSCORE_TEST_AZURITE=1  the Azure tests run (and fail rather than skip)
# for the command. Azurite and its data directory are removed when the command ends, whatever
# its outcome.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/node_modules/.bin/azurite-blob"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "with-azurite: node and npm are needed for Azurite (Debian: apt-get install nodejs npm)" >&2
    exit 1
fi
if [[ ! -x "$bin" ]]; then
    echo "with-azurite: installing Azurite (pinned in scripts/azurite/package-lock.json)" >&2
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
data="$(mktemp -d -t batchscore-azurite.XXXXXX)"
# AZURITE_DEBUG_LOG=FILE keeps Azurite's request log (one line per request), for counting.
debug=()
if [[ -n "${AZURITE_DEBUG_LOG:-}" ]]; then
    debug=(--debug "$AZURITE_DEBUG_LOG")
fi
"$bin" --blobHost 127.0.0.1 --blobPort "$port" --location "$data" --silent \
    --skipApiVersionCheck --loose --disableTelemetry "${debug[@]}" >"$data/azurite.log" 2>&1 &
pid=$!

stop() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$data"
}
trap stop EXIT
trap 'exit 130' INT TERM

export AZURITE_BLOB_STORAGE_URL="http://127.0.0.1:$port"
ready() {
    python3 - "$AZURITE_BLOB_STORAGE_URL/devstoreaccount1?comp=list" <<'PY'
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass  # any HTTP answer means the service is up
except OSError:
    sys.exit(1)
PY
}
for attempt in $(seq 1 150); do
    if ready; then
        break
    fi
    if [[ $attempt == 150 ]]; then
        echo "with-azurite: Azurite did not answer within 30 s:" >&2
        cat "$data/azurite.log" >&2
        exit 1
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "with-azurite: Azurite exited during start-up:" >&2
        cat "$data/azurite.log" >&2
        exit 1
    fi
    sleep 0.2
done
python3 "$here/blob.py" create-container batchscore-test
echo "with-azurite: Azurite blob service on $AZURITE_BLOB_STORAGE_URL (pid $pid)" >&2

export BATCHSCORE_TEST_AZURITE=1
status=0
"$@" || status=$?
exit "$status"
