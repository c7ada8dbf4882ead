#!/usr/bin/env bash
# Builds the engine tests (CPU backend: KV cache, scheduler, sampler, tokenizer, model,
# engine loop) with AddressSanitizer, LeakSanitizer and UndefinedBehaviorSanitizer in a
# separate build tree, and runs them. Any report fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${SANITIZE_DIR:-build/sanitize}"
FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMF_ENABLE_CUDA=OFF -DMF_BUILD_BENCH=OFF \
  -DCMAKE_GTEST_DISCOVER_TESTS_DISCOVERY_MODE=PRE_TEST \
  -DCMAKE_CXX_FLAGS="$FLAGS" -DCMAKE_EXE_LINKER_FLAGS="$FLAGS" -DCMAKE_SHARED_LINKER_FLAGS="$FLAGS" > /dev/null
cmake --build "$BUILD_DIR" --target engine_tests -j"${BUILD_JOBS:-2}"
# One BLAS thread: OpenBLAS's own threads are not instrumented.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 OPENBLAS_NUM_THREADS=1 \
  "$BUILD_DIR/tests/engine_tests" --gtest_brief=1
