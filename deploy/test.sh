#!/usr/bin/env bash
# Set-up, build, and every test through ctest. Ends with ctest's summary line; exit status is ctest's.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/deploy/setup.sh"
build="${FEDTUNE_BUILD_DIR:-$root/build}"
jobs="${FEDTUNE_TEST_JOBS:-$(nproc)}"
cd "$build"
ctest --output-on-failure --timeout 900 -j "$jobs" "$@"
