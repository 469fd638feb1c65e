#!/usr/bin/env bash
# cargo-deny over every dependency (deny.toml): licenses, duplicate versions and sources must
# pass. Advisories need the RustSec advisory database (a Git repository, not a registry
# package): with BATCHSCORE_FETCH_ADVISORIES=1 it is fetched first; otherwise advisories are
# checked offline against a database already on the machine (~/.cargo/advisory-dbs), and where
# there is none the script says so. BATCHSCORE_REQUIRE_ADVISORIES=1 makes that an error.
# Part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
python="$(scripts/python-env.sh)"
deny="$(dirname "$python")/cargo-deny"
"$deny" --version
"$deny" check licenses bans sources
if [[ "${BATCHSCORE_FETCH_ADVISORIES:-0}" == 1 ]]; then
    "$deny" fetch db
fi
if compgen -G "${CARGO_HOME:-$HOME/.cargo}/advisory-dbs/*/crates" >/dev/null; then
    "$deny" check --disable-fetch advisories
else
    echo "deny: advisories NOT checked: no RustSec advisory database on this machine" \
         "(BATCHSCORE_FETCH_ADVISORIES=1 fetches it where its host can be reached)" >&2
    if [[ "${BATCHSCORE_REQUIRE_ADVISORIES:-0}" == 1 ]]; then
        exit 1
    fi
fi
