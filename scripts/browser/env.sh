#!/usr/bin/env bash
# Prepares what the report's browser test needs and prints the directory of the check script:
#   - Debian's Chromium (/usr/bin/chromium), installed with apt-get when missing;
#   - playwright-core, pinned in scripts/browser/package-lock.json, installed with `npm ci`
#     into scripts/browser/node_modules when missing (it drives Chromium; no browser download).
# scripts/test.sh exports the printed directory as BATCHSCORE_BROWSER for the tests.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! command -v chromium >/dev/null; then
    echo "browser-env: installing Debian's chromium" >&2
    (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) >&2
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "browser-env: node and npm are needed (Debian: apt-get install nodejs npm)" >&2
    exit 1
fi
if [[ ! -d "$here/node_modules/playwright-core" ]]; then
    echo "browser-env: installing playwright-core (pinned in scripts/browser/package-lock.json)" >&2
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
echo "$here"
