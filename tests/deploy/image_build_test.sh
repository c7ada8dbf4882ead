#!/usr/bin/env bash
# The container image's build steps (scripts/image_build.sh, which the Dockerfile runs)
# produce a self-contained install: it resolves every library from its own lib/ or the
# base system, and the staged server, started with an empty environment, serves its
# built-in default model to the staged CLI.
# Usage: image_build_test.sh BUILD_DIR   (an already configured build, reused as is)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build_dir="$1"
stage="$(mktemp -d /tmp/mf-stage.XXXXXX)"
work="$(mktemp -d /tmp/mf-image-test.XXXXXX)"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2> /dev/null && wait "$server_pid" 2> /dev/null
  rm -rf "$stage" "$work"
}
trap cleanup EXIT

# Keep the configured build's options (tests, benchmarks) as they are: no CMAKE_ARGS.
BUILD_DIR="$build_dir" CMAKE_ARGS="" "$root/scripts/image_build.sh" "$stage"

for file in bin/moduleformer-server bin/moduleformer share/moduleformer/models/demo/config.json \
            share/moduleformer/models/demo/model.safetensors share/moduleformer/models/demo/tokenizer.json; do
  [ -e "$stage/$file" ] || { echo "FAIL: $file is not staged"; exit 1; }
done
for binary in "$stage"/bin/*; do
  if env -i ldd "$binary" | grep -q "not found"; then
    echo "FAIL: $binary has unresolved libraries:"; env -i ldd "$binary" | grep "not found"; exit 1
  fi
  # Everything but glibc, CUDA's runtime libraries and the driver comes from the stage.
  outside=$(env -i ldd "$binary" | awk '/=> \// { print $3 }' | xargs -r realpath | grep -v "^$stage/lib/" |
            grep -vE "/(ld-linux[^/]*|libc|libm|libpthread|libdl|librt|libresolv|libcudart|libcublas|libcublasLt)\.so" || true)
  [ -z "$outside" ] || { echo "FAIL: $binary loads from outside the stage: $outside"; exit 1; }
done

cd "$work"  # nowhere near the source tree: the default model must come from the stage
env -i "$stage/bin/moduleformer-server" --host 127.0.0.1 --port 0 --port-file "$work/port" --metrics-port -1 --http-port -1 \
  > "$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 200); do [ -s "$work/port" ] && break; sleep 0.05; done
[ -s "$work/port" ] || { echo "FAIL: the staged server did not start:"; cat "$work/server.log"; exit 1; }
grep -q "serving $stage/share/moduleformer/models/demo" "$work/server.log" ||
  { echo "FAIL: the staged server did not pick its own default model:"; cat "$work/server.log"; exit 1; }
text=$(env -i "$stage/bin/moduleformer" generate --server "127.0.0.1:$(cat "$work/port")" "In the beginning" \
       --max-new-tokens 12)
[ -n "$(echo "$text" | tr -d '[:space:]')" ] || { echo "FAIL: no text generated"; exit 1; }
echo "staged server generated: $text"
echo "image build steps ok: $(ls "$stage/lib" | wc -l) bundled libraries"
