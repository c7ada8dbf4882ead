#!/usr/bin/env bash
# Packs the CUDA test and benchmark binaries with the Debian shared libraries they
# need (everything but glibc, libstdc++ and CUDA, which a GPU host has) into
# .device/bundle, so they run on a GPU machine that lacks this project's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
BUNDLE=.device/bundle
rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/lib"
binaries=()
for name in kernel_tests moduleformer; do
  [ -x "$BUILD_DIR/$name" ] && binaries+=("$BUILD_DIR/$name")
  [ -x "$BUILD_DIR/tests/$name" ] && binaries+=("$BUILD_DIR/tests/$name")
done
for bin in "${binaries[@]}"; do
  cp "$bin" "$BUNDLE/"
  ldd "$bin" | awk '/=> \//{print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libstdc++*|libgcc_s*|ld-linux*|libcuda*|libcublas*|libdl.so*|libpthread*|librt.so*) ;;
      *) cp -Ln "$lib" "$BUNDLE/lib/" ;;
    esac
  done
done
cp -r scripts "$BUNDLE/"
du -sh "$BUNDLE"
