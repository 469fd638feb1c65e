#!/usr/bin/env bash
# The whole test suite: formatting, lints (warnings are errors), unit, property and integration
# tests. This is the README's test command, and .ci/run calls exactly this.
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
echo "== cargo test"
cargo test --workspace --locked
