#!/usr/bin/env bash
# The whole test suite: formatting, lints (warnings are errors), cargo deny, unit, property and
# integration tests, the storage tests against Azurite. This is the README's test command, and .ci/run calls
# exactly this. It installs what the tests need when missing: pyarrow and scikit-learn in a
# cached venv (scripts/python-env.sh), the Azure CLI in another (scripts/az-env.sh), openssl
# and jq, Chromium and playwright-core for the report's browser test
# (scripts/browser/env.sh) and the pinned Azurite (scripts/azurite/), which it starts on
# 127.0.0.1 for the tests and always stops.
set -euo pipefail
cd "$(dirname "$0")/.."

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "error: cargo ${component/rustfmt/fmt} is missing: install the Rust component '$component' (rustup component add $component)" >&2
    exit 2
  fi
done

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo deny (licenses, duplicate versions, sources, advisories)"
scripts/deny.sh
echo "== test dependencies: Python packages, Azurite, openssl, Chromium"
# tests/serve/ makes its RS256 key pairs with the openssl command, and tests/azure_batch.rs runs
# the `jq` commands `batch plan` prints (Debian packages).
for tool in openssl jq; do
  if ! command -v "$tool" >/dev/null; then
    (apt-get install -y -q "$tool" || (apt-get update -q && apt-get install -y -q "$tool")) >&2
  fi
done
BATCHSCORE_PYTHON="$(scripts/python-env.sh)"
export BATCHSCORE_PYTHON
# The real Azure CLI, which runs every az command `batch plan` prints against the simulated pool.
BATCHSCORE_AZ="$(scripts/az-env.sh)"
export BATCHSCORE_AZ
# The report's browser test: Debian's chromium and the pinned playwright-core (scripts/browser/).
BATCHSCORE_BROWSER="$(scripts/browser/env.sh)"
export BATCHSCORE_BROWSER
# With these set, tests that need scikit-learn, Azurite or the browser fail rather than skip.
export BATCHSCORE_TEST_SKLEARN=1
echo "== cargo test (Azurite running)"
scripts/azurite/with-azurite.sh cargo test --workspace --locked
