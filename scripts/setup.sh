#!/usr/bin/env bash
# Installs what the build, the server and the test suite use: Debian packages, and the
# npm packages of the offline Kubernetes manifest validator (deploy/validate) and of the
# OpenAI client tests (tests/openai_client).
#   scripts/setup.sh               everything (build, tests, deployment checks)
#   scripts/setup.sh --build-only  only what building the server needs (container images)
# Idempotent: when everything is present it touches nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_PACKAGES=(
  build-essential cmake pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev nlohmann-json3-dev libopenblas-dev
  libgtest-dev libgmock-dev googletest libbenchmark-dev libcpp-httplib-dev libssl-dev
)
TEST_PACKAGES=(
  python3 python3-grpcio python3-grpc-tools python3-jinja2
  python3-torch python3-numpy python3-regex bible-kjv fortunes
  prometheus nginx-light yamllint python3-yaml
  clang libclang-rt-14-dev openssl
)

packages=("${BUILD_PACKAGES[@]}")
if [ "${1:-}" != "--build-only" ]; then
  packages+=("${TEST_PACKAGES[@]}")
  # kubectl (for `kubectl kustomize`) and node/npm may already come from elsewhere;
  # Debian's packages are the fallback.
  command -v kubectl > /dev/null || packages+=(kubernetes-client)
  command -v npm > /dev/null || packages+=(nodejs npm)
fi

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
else
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "${1:-}" != "--build-only" ]; then
  # npm packages, pinned by their lock files: the manifest validator, and the official
  # OpenAI client the HTTP API tests drive.
  for package in deploy/validate tests/openai_client; do
    if [ ! -f "$package/node_modules/.package-lock.json" ] ||
       ! cmp -s <(sed -n '/"packages"/,$p' "$package/package-lock.json" | grep -c '"version"') \
                 <(grep -c '"version"' "$package/node_modules/.package-lock.json"); then
      echo "setup: installing $package npm packages"
      npm ci --prefix "$package" --no-audit --no-fund --loglevel=error
    fi
  done
fi
echo "setup: done"
