#!/usr/bin/env bash
# Packs the CUDA tests, tools and benchmarks with the Debian shared libraries they
# need (everything but glibc, libstdc++ and CUDA, which a GPU host has), the
# reference fixtures, the demo model and the configs into .device/bundle, so they run on a GPU
# machine that lacks this project's packages: `bash scripts/gpu_test.sh` there.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
FIXTURES="${MF_FIXTURES_DIR:-$PWD/tests/fixtures}"
BUNDLE=.device/bundle
rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/lib" "$BUNDLE/bench" "$BUNDLE/fixtures"
binaries=("$BUILD_DIR/tests/kernel_tests" "$BUILD_DIR/moduleformer" "$BUILD_DIR/moduleformer-server"
          "$BUILD_DIR/libmf_cuda_backend.so" "$BUILD_DIR/bench/step_bench" "$BUILD_DIR/bench/loadgen" "$BUILD_DIR/bench/expert_gemm_bench"
          "$BUILD_DIR/bench/launch_chain_bench")
for bin in "${binaries[@]}"; do
  case "$bin" in */bench/*) cp "$bin" "$BUNDLE/bench/" ;; *) cp "$bin" "$BUNDLE/" ;; esac
  ldd "$bin" | awk '/=> \//{print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libstdc++*|libgcc_s*|ld-linux*|libcuda*|libcublas*|libdl.so*|libpthread*|librt.so*) ;;
      *) cp -Ln "$lib" "$BUNDLE/lib/" ;;
    esac
  done
done
cp -r "$FIXTURES/reference" "$BUNDLE/fixtures/"
cp -r configs "$BUNDLE/"
mkdir -p "$BUNDLE/models" && cp -r models/demo "$BUNDLE/models/"
du -sh "$BUNDLE"
# Compressed for transfer (OpenBLAS alone is 35 MB): unpack there with
#   mkdir -p /tmp/bundle && tar -xJf .device/bundle.tar.xz -C /tmp/bundle
tar -cJf .device/bundle.tar.xz -C "$BUNDLE" .
du -sh .device/bundle.tar.xz
