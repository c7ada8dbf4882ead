#!/usr/bin/env bash
# Starts moduleformer-server on a loopback port and measures it with bench/loadgen:
# closed loop at concurrency 1, 8 and 32, then an open loop at a fixed rate.
# Usage: scripts/bench_serving.sh [server flags...]   (default: the molm-tiny fixture)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
FIXTURES="${MF_FIXTURES_DIR:-$PWD/tests/fixtures}"
flags=("$@")
[ ${#flags[@]} -gt 0 ] || flags=(--model "$FIXTURES/reference/molm-tiny")
workdir=$(mktemp -d)
"$BUILD_DIR/moduleformer-server" "${flags[@]}" --host 127.0.0.1 --port 0 --port-file "$workdir/port" \
  --metrics-port 0 --metrics-port-file "$workdir/metrics_port" --http-port 0 > "$workdir/server.log" 2>&1 &
server_pid=$!
trap 'kill -TERM $server_pid 2>/dev/null; wait $server_pid 2>/dev/null; rm -rf "$workdir"' EXIT
for _ in $(seq 1 600); do [ -s "$workdir/port" ] && break; sleep 0.1; done
address="127.0.0.1:$(cat "$workdir/port")"
echo "server: ${flags[*]} on $address ($(nproc) CPUs)"
for concurrency in 1 8 32; do
  "$BUILD_DIR/bench/loadgen" --server "$address" --mode closed --concurrency "$concurrency" \
    --requests "${REQUESTS:-64}" --prompt-tokens "${PROMPT_TOKENS:-128}" --max-new-tokens "${NEW_TOKENS:-64}"
  echo
done
"$BUILD_DIR/bench/loadgen" --server "$address" --mode open --rate "${RATE:-20}" \
  --requests "${REQUESTS:-64}" --prompt-tokens "${PROMPT_TOKENS:-128}" --max-new-tokens "${NEW_TOKENS:-64}"
echo
# What recording expert statistics and metrics cost the engine, from its own counters.
curl -s "http://127.0.0.1:$(cat "$workdir/metrics_port")/metrics" | awk '
  /^moduleformer_engine_busy_seconds_total / {busy = $2}
  /^moduleformer_metrics_recording_seconds_total / {recording = $2}
  /^moduleformer_engine_steps_total / {steps = $2}
  END {printf "engine: %d steps, %.3f s busy, metrics recording %.4f s = %.3f%% of step time\n",
       steps, busy, recording, (busy > 0 ? 100 * recording / busy : 0)}'

