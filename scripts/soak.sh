#!/usr/bin/env bash
# Mixed load with cancellations, deadlines, abandoned streams and invalid requests against
# the CPU server for SECONDS (default 300); fails on an unexpected status, a crash, resident
# memory above RSS_CEILING_MB (default 1024) or KV blocks left held. Needs a build.
#   scripts/soak.sh [SECONDS] [RSS_CEILING_MB]
set -euo pipefail
cd "$(dirname "$0")/../tests/server"
exec /usr/bin/python3 soak.py "${1:-300}" "${2:-1024}"
