#!/usr/bin/env bash
# Prints the path of the Azure CLI the test suite runs against the simulated Batch pool,
# installing the pinned azure-cli into its own cached virtual environment when missing:
#   ${BATCHSCORE_CACHE:-~/.cache/batchscore}/az
# Its own environment because azure-cli pins many packages of its own (about 700 MB, a few
# minutes on first install; later runs reuse it). tests/azure_batch.rs runs every `az` command
# that `batchscore batch plan` prints with it.
set -euo pipefail
version="2.91.0"
venv="${BATCHSCORE_CACHE:-$HOME/.cache/batchscore}/az"
stamp="$venv/.azure-cli-version"
if [[ ! -x "$venv/bin/az" || ! -f "$stamp" || "$(cat "$stamp")" != "$version" ]]; then
    echo "az-env: installing azure-cli==$version into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "azure-cli==$version" >&2
    echo "$version" > "$stamp"
fi
echo "$venv/bin/az"
