#!/usr/bin/env bash
# Prints the path of a Python with the test suite's packages (scripts/requirements-test.txt),
# creating or updating a virtual environment in the cache directory when needed:
#   ${BATCHSCORE_CACHE:-~/.cache/batchscore}/venv
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
requirements="$root/scripts/requirements-test.txt"
venv="${BATCHSCORE_CACHE:-$HOME/.cache/batchscore}/venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "python-env: installing $(grep -v '^#' "$requirements" | xargs) into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
    echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
