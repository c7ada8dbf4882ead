#!/usr/bin/env bash
# Runs on a GPU machine from the bundle made by scripts/gpu_bundle.sh: the CUDA
# tests, then the same under compute-sanitizer memcheck. Results go to $OUT if set.
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE="${BUNDLE:-.device/bundle}"
OUT="${OUT:-/tmp/mf-gpu}"
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/$BUNDLE/lib:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
status=0
"$BUNDLE/kernel_tests" --gtest_brief=1 2>&1 | tee "$OUT/kernel_tests.txt" || status=1
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$SANITIZER" ]; then
  "$SANITIZER" --tool memcheck --error-exitcode 3 "$BUNDLE/kernel_tests" --gtest_brief=1 > "$OUT/memcheck.txt" 2>&1 \
    || status=1
  tail -n 3 "$OUT/memcheck.txt"
else
  echo "compute-sanitizer not found" | tee "$OUT/memcheck.txt"
fi
exit $status
