#!/usr/bin/env bash
# cargo-deny over every dependency (deny.toml): licenses, duplicate versions and sources must
# pass. Advisories need the RustSec database, a Git repository: where it can be fetched they
# must pass too; where it cannot (no route to its host), the script says so and, unless
# BATCHSCORE_REQUIRE_ADVISORIES=1, goes on. Part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
python="$(scripts/python-env.sh)"
deny="$(dirname "$python")/cargo-deny"
"$deny" --version
"$deny" check licenses bans sources
if "$deny" fetch db >/tmp/batchscore-deny-fetch.log 2>&1; then
    "$deny" check --disable-fetch advisories
else
    echo "deny: advisories NOT checked: the RustSec advisory database cannot be fetched here:" >&2
    grep -v "^\s*$" /tmp/batchscore-deny-fetch.log | tail -n 1 >&2
    if [[ "${BATCHSCORE_REQUIRE_ADVISORIES:-0}" == 1 ]]; then
        exit 1
    fi
fi
