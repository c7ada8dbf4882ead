#!/usr/bin/env bash
# Builds and runs the whole test suite. CUDA tests skip themselves without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
"$(dirname "$0")/build.sh"
ctest --test-dir "${BUILD_DIR:-build}" -j2 --output-on-failure ${CTEST_ARGS:-}
