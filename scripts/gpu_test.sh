#!/usr/bin/env bash
# On a GPU machine, from the bundle made by scripts/gpu_bundle.sh: the CUDA tests,
# the same under compute-sanitizer memcheck, `moduleformer verify --device cuda` on
# every reference fixture, and the engine step benchmark on the MoLM-350M-4B shape.
# Results go to $OUT if set. Set SKIP_MEMCHECK=1 or SKIP_BENCH=1 to shorten.
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE="${BUNDLE:-$PWD/.device/bundle}"
OUT="${OUT:-/tmp/mf-gpu}"
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$BUNDLE/lib:${LD_LIBRARY_PATH:-}"
export MF_FIXTURES_DIR="$BUNDLE/fixtures"
export MF_DEMO_MODEL_DIR="$BUNDLE/models/demo"
export MF_CUDA_BACKEND="$BUNDLE/libmf_cuda_backend.so"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
status=0
"$BUNDLE/kernel_tests" 2>&1 | tee "$OUT/kernel_tests.txt" | grep -E "^\[  (PASSED|FAILED) |^\[  FAILED|case [0-9]" || true
grep -q "^\[  PASSED" "$OUT/kernel_tests.txt" && ! grep -q "FAILED" "$OUT/kernel_tests.txt" || status=1
for dir in "$MF_FIXTURES_DIR"/reference/*/; do
  "$BUNDLE/moduleformer" verify --device cuda --precision exact --model "$dir" --cases "$dir/cases.json" --logit-tolerance 5e-2 --gate-tolerance 1e-3 \
    2>&1 | tee -a "$OUT/verify_cuda.txt" | tail -n 1 || status=1
done
if [ -z "${SKIP_MEMCHECK:-}" ]; then
  SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
  "$SANITIZER" --tool memcheck --error-exitcode 3 "$BUNDLE/kernel_tests" --gtest_brief=1 \
    --gtest_filter="${MEMCHECK_FILTER:-*}" > "$OUT/memcheck.txt" 2>&1 || status=1
  tail -n 3 "$OUT/memcheck.txt"
fi
# The real server on the GPU: generate through gRPC, scrape /metrics, a short load.
work=$(mktemp -d)
"$BUNDLE/moduleformer-server" --device cuda --model "$MF_FIXTURES_DIR/reference/molm-tiny" \
  --host 127.0.0.1 --port 0 --port-file "$work/port" --metrics-port 0 --metrics-port-file "$work/metrics" --http-port 0 \
  > "$OUT/server.log" 2>&1 &
server=$!
for _ in $(seq 1 300); do [ -s "$work/port" ] && [ -s "$work/metrics" ] && break; sleep 0.1; done
if [ -s "$work/port" ]; then
  "$BUNDLE/moduleformer" generate --server "127.0.0.1:$(cat "$work/port")" --prompt-ids 1,2,3 --max-new-tokens 8 \
    --ignore-eos | tee "$OUT/server_generate.txt" || status=1
  python3 -c "import urllib.request,sys; t=urllib.request.urlopen(sys.argv[1]).read().decode(); \
print('metrics:', sum(l.startswith('moduleformer_expert_tokens_total') for l in t.splitlines()), 'expert series')" \
    "http://127.0.0.1:$(cat "$work/metrics")/metrics" | tee -a "$OUT/server_generate.txt" || status=1
  "$BUNDLE/bench/loadgen" --server "127.0.0.1:$(cat "$work/port")" --mode closed --concurrency 16 --requests 64 \
    --prompt-tokens 128 --max-new-tokens 64 | tee "$OUT/loadgen.txt" || status=1
else
  echo "server did not start"; cat "$OUT/server.log"; status=1
fi
kill -TERM $server; wait $server || status=1
if [ -z "${SKIP_BENCH:-}" ]; then
  for precision in exact bf16; do
    "$BUNDLE/bench/step_bench" --device cuda --precision "$precision" \
      --random-weights "$BUNDLE/configs/molm-350m-4b.json" --decode-batches 1,64,256 --context 512 2>&1 \
      | tee -a "$OUT/step_bench.txt" || status=1
  done
  # The cost of downloading every layer's routing (the engine does, for expert statistics).
  "$BUNDLE/bench/step_bench" --device cuda --precision bf16 --record-routing=false \
    --random-weights "$BUNDLE/configs/molm-350m-4b.json" --decode-batches 1,256 --context 512 --prefill-prompts 0 2>&1 \
    | sed 's/^/no routing download: /' | tee -a "$OUT/step_bench.txt" || status=1
  # The cost of downloading every sequence's logits (sampled requests; greedy ones take the argmax on the GPU).
  "$BUNDLE/bench/step_bench" --device cuda --precision bf16 --full-logits \
    --random-weights "$BUNDLE/configs/molm-350m-4b.json" --decode-batches 1,256 --context 512 --prefill-prompts 0 2>&1 \
    | sed 's/^/full logits download: /' | tee -a "$OUT/step_bench.txt" || status=1
  # Sampled decoding (temperature 0.8, top-p 0.95) beside the greedy step of the same run:
  # on the device, then downloaded and sampled on the host with 8 helper threads.
  "$BUNDLE/bench/step_bench" --device cuda --precision bf16 --sample \
    --random-weights "$BUNDLE/configs/molm-350m-4b.json" --decode-batches 1,64,256 --context 512 --prefill-prompts 0 2>&1 \
    | sed 's/^/device sampling: /' | tee -a "$OUT/step_bench.txt" || status=1
  "$BUNDLE/bench/step_bench" --device cuda --precision bf16 --sample --host-sampling --sampling-threads 8 \
    --random-weights "$BUNDLE/configs/molm-350m-4b.json" --decode-batches 1,256 --context 512 --prefill-prompts 0 2>&1 \
    | sed 's/^/host sampling: /' | tee -a "$OUT/step_bench.txt" || status=1
  # Prefill at several shapes, alone and beside 256 decodes (mixed steps), each with its
  # ratio to the bf16 GEMM rate measured in the same run; MoLM-700M-8B at 32 x 512.
  "$BUNDLE/bench/step_bench" --device cuda --random-weights "$BUNDLE/configs/molm-350m-4b.json" --decode-batches= \
    --context 1024 --mixed-decodes 256 --prefill-shapes 32x512,256x128,4x4096,8x1024,2x1024 2>&1 \
    | sed 's/^/prefill shapes: /' | tee -a "$OUT/step_bench.txt" || status=1
  "$BUNDLE/bench/step_bench" --device cuda --random-weights "$BUNDLE/configs/molm-700m-8b.json" --decode-batches= \
    --prefill-shapes 32x512 2>&1 | sed 's/^/molm-700m-8b: /' | tee -a "$OUT/step_bench.txt" || status=1
  # Expert product options on one prompt-sized mixture (per-expert cuBLAS with known and
  # changing segment sizes, the cuBLASLt plans the backend uses, grouped kernels, dense).
  "$BUNDLE/bench/expert_gemm_bench" --tokens 16384 2>&1 | tee "$OUT/expert_gemm_bench.txt" || status=1
  # The same at a 256-token decode step, against the weight bytes at copy speed, with the
  # grouped kernel's tile shapes side by side.
  "$BUNDLE/bench/expert_gemm_bench" --tokens 256 2>&1 | tee -a "$OUT/expert_gemm_bench.txt" || status=1
  # What a dependent kernel boundary costs in a replayed graph, plain or overlapped
  # (programmatic dependent launch), with and without allocations between kernels.
  "$BUNDLE/bench/launch_chain_bench" --kernels 168 2>&1 | tee "$OUT/launch_chain_bench.txt" || status=1
  # Where the time goes (CUDA events per backend operation), one workload at a time.
  if [ -n "${OP_TIMING:-}" ]; then
    for workload in "--decode-batches 1 --prefill-prompts 0" "--decode-batches 256 --prefill-prompts 0" \
                    "--decode-batches= --prefill-prompts 32"; do
      echo "== bf16, $workload" | tee -a "$OUT/op_timing.txt"
      MF_CUDA_OP_TIMING=1 "$BUNDLE/bench/step_bench" --device cuda --precision bf16 --steps 10 \
        --random-weights "$BUNDLE/configs/molm-350m-4b.json" $workload 2>&1 | tee -a "$OUT/op_timing.txt"
    done
  fi
fi
# Small-batch decode (1 to 16 sequences, context 512, bf16), MoLM-350M-4B and MoLM-700M-8B:
# each step with its kernel count and against the bytes it must read at the measured copy rate.
if [ -n "${DECODE_BENCH:-}" ]; then
  for config in molm-350m-4b molm-700m-8b; do
    "$BUNDLE/bench/step_bench" --device cuda --precision bf16 --random-weights "$BUNDLE/configs/$config.json" \
      --decode-batches "${DECODE_BATCHES:-1,2,4,8,16}" --context 512 --prefill-prompts 0 2>&1 \
      | sed "s/^/$config: /" | tee -a "$OUT/decode_bench.txt" || status=1
  done
fi
# Batched decode (64 and 256 sequences at context 512, both model shapes; 64 at contexts 128
# and 2,048; 16 at context 8,192), each step against the bytes it must read at copy speed.
if [ -n "${BATCH_BENCH:-}" ]; then
  for config in molm-350m-4b molm-700m-8b; do
    "$BUNDLE/bench/step_bench" --device cuda --precision bf16 --random-weights "$BUNDLE/configs/$config.json" \
      --decode-batches 64,256 --context 512 --prefill-prompts 0 2>&1 | sed "s/^/$config: /" | tee -a "$OUT/batch_bench.txt" || status=1
  done
  for shape in "64 128" "64 2048" "16 8192"; do
    set -- $shape
    "$BUNDLE/bench/step_bench" --device cuda --precision bf16 --random-weights "$BUNDLE/configs/molm-350m-4b.json" \
      --decode-batches "$1" --context "$2" --prefill-prompts 0 2>&1 | sed "s/^/context $2: /" | tee -a "$OUT/batch_bench.txt" || status=1
  done
fi
# The server under load on the MoLM-350M-4B shape (random weights, the GPU defaults: bf16,
# KV cache at 0.9 of free memory, sampling on the device), beside step_bench's figures for
# the same shape in the same run: 256 concurrent streams greedy and sampled, then long prompts.
if [ -n "${SERVING_BENCH:-}" ]; then
  CONFIG="$BUNDLE/configs/molm-350m-4b.json"
  "$BUNDLE/bench/step_bench" --device cuda --random-weights "$CONFIG" --decode-batches 256 --context 192 \
    --prefill-prompts 32 --prefill-length 1024 --prefill-runs 3 2>&1 | tee -a "$OUT/serving.txt" || status=1
  "$BUNDLE/moduleformer-server" --device cuda --random-weights "$CONFIG" --host 127.0.0.1 --port 0 \
    --port-file "$work/serving_port" --metrics-port 0 --metrics-port-file "$work/serving_metrics" \
    ${SERVER_FLAGS:-} > "$OUT/serving_server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 1200); do [ -s "$work/serving_port" ] && break; sleep 0.1; done
  address="127.0.0.1:$(cat "$work/serving_port" 2>/dev/null)"
  head -n 3 "$OUT/serving_server.log" | tee -a "$OUT/serving.txt"
  load() { "$BUNDLE/bench/loadgen" --server "$address" --mode closed --concurrency 256 "$@" 2>&1 | tee -a "$OUT/serving.txt"; }
  load --requests 256 --prompt-tokens 128 --max-new-tokens 16 > /dev/null  # warm-up: graphs for every batch size
  echo "== greedy, 256 streams, prompt 128, 128 new" | tee -a "$OUT/serving.txt"
  load --requests 768 --prompt-tokens 128 --max-new-tokens 128 || status=1
  echo "== sampled (temperature 0.8, top-p 0.95), 256 streams, prompt 128, 128 new" | tee -a "$OUT/serving.txt"
  load --requests 768 --prompt-tokens 128 --max-new-tokens 128 --temperature 0.8 --top-p 0.95 || status=1
  echo "== long prompts, 256 streams, prompt 1024, 32 new" | tee -a "$OUT/serving.txt"
  load --requests 768 --prompt-tokens 1024 --max-new-tokens 32 || status=1
  python3 -c "import urllib.request,sys; t=urllib.request.urlopen(sys.argv[1]).read().decode(); \
print('\n'.join(l for l in t.splitlines() if l.startswith(('moduleformer_engine_','moduleformer_forward_', \
'moduleformer_sampling_','moduleformer_metrics_recording','moduleformer_preemptions','moduleformer_update_delivery')) and '_bucket' not in l))" \
    "http://127.0.0.1:$(cat "$work/serving_metrics")/metrics" | tee -a "$OUT/serving.txt" || true
  kill -TERM $server; wait $server || true
fi
exit $status
