#!/usr/bin/env bash
# The container image's build steps (Dockerfile's build stages run exactly this; CI runs
# it too, so the steps are tested without a container engine):
#   1. build dependencies (scripts/setup.sh --build-only),
#   2. a Release build (scripts/build.sh; CUDA when nvcc is present),
#   3. `cmake --install` into STAGE, plus every shared library the binaries and the CUDA
#      plugin need that the runtime base image does not have, into STAGE/lib.
# The final image stage copies STAGE alone. Usage: scripts/image_build.sh STAGE_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE="${1:?usage: scripts/image_build.sh STAGE_DIR}"
BUILD_DIR="${BUILD_DIR:-build}"

./scripts/setup.sh --build-only
# CMAKE_ARGS from the caller (the Dockerfile turns tests and benchmarks off); an existing
# build directory keeps its cached options.
BUILD_DIR="$BUILD_DIR" CMAKE_ARGS="${CMAKE_ARGS:-}" ./scripts/build.sh
cmake --install "$BUILD_DIR" --prefix "$STAGE" > /dev/null

# Libraries every runtime base image has (glibc), the CUDA runtime image has (cuBLAS, the
# CUDA runtime) or the NVIDIA container toolkit injects (the driver) stay out.
is_base_library() {
  case "$(basename "$1")" in
    linux-vdso.so*|ld-linux*|libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libresolv.so*) return 0 ;;
    libcuda.so*|libnvidia-*|libcudart.so*|libcublas.so*|libcublasLt.so*) return 0 ;;
  esac
  return 1
}
mkdir -p "$STAGE/lib"
binaries=("$STAGE"/bin/moduleformer-server "$STAGE"/bin/moduleformer)
[ -f "$STAGE/bin/libmf_cuda_backend.so" ] && binaries+=("$STAGE/bin/libmf_cuda_backend.so")
for binary in "${binaries[@]}"; do
  ldd "$binary" | awk '/=> \// { print $3 }' | while read -r library; do
    [[ "$library" == "$STAGE"/* ]] && continue  # already bundled (found through the rpath)
    is_base_library "$library" || cp -L "$library" "$STAGE/lib/"
  done
done
echo "image_build: staged $(ls "$STAGE/bin" | tr '\n' ' ')and $(ls "$STAGE/lib" | wc -l) libraries in $STAGE"
