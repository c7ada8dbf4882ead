#include <cuda_bf16.h>

#include "kernels/activations.cuh"
#include "kernels/decode_gate.h"
#include "kernels/router_dots.cuh"
#include "kernels/routing.cuh"
#include "kernels/vector_io.cuh"

namespace mf::kernels {
namespace {

constexpr int kWarps = 4;  // one hidden unit of the router per warp
constexpr int kThreads = 32 * kWarps;
static_assert(kThreads >= kMaxDecodeGateSlots, "the grouping takes one thread per slot");
constexpr int kMaxExperts = 256;
constexpr size_t kMaxSharedBytes = 96 << 10;

// The normed rows [T, d] first; the last block's hidden [T, g], the second gate matrix
// [E, g] and logits [T, E] after.
size_t SharedBytes(int num_tokens, int d, int g, int num_experts) {
  const size_t rows = static_cast<size_t>(num_tokens) * d;
  const size_t tail = static_cast<size_t>(num_tokens) * (g + num_experts) + static_cast<size_t>(num_experts) * g;
  return (rows > tail ? rows : tail) * sizeof(float);
}

// Normed row `row` of x into `staged` (and, from block 0, to memory and the cache): a warp
// per row, mean then centred variance, as the reference does.
__device__ void NormRow(const DecodeGateArgs& args, int row, float4* staged) {
  const int lane = threadIdx.x % 32, d = args.d;
  const float* in = args.x + static_cast<int64_t>(row) * d;
  float sum = 0;
  for (int c = 4 * lane; c < d; c += 128) {
    const float4 v = Load4(in + c);
    sum += (v.x + v.y) + (v.z + v.w);
  }
  const float mean = RouterWarpSum(sum) / d;
  float squares = 0;
  for (int c = 4 * lane; c < d; c += 128) {
    const float4 v = Map4(Load4(in + c), [mean](float value) { return value - mean; });
    squares += (v.x * v.x + v.y * v.y) + (v.z * v.z + v.w * v.w);
  }
  const float inv_std = rsqrtf(RouterWarpSum(squares) / d + args.eps);
  const bool writer = blockIdx.x == 0;
  for (int c = 4 * lane; c < d; c += 128) {
    const float4 v = Load4(in + c), w = Load4(args.ln_weight + c), b = Load4(args.ln_bias + c);
    const float4 normed = make_float4((v.x - mean) * inv_std * w.x + b.x, (v.y - mean) * inv_std * w.y + b.y,
                                      (v.z - mean) * inv_std * w.z + b.z, (v.w - mean) * inv_std * w.w + b.w);
    staged[(row * d + c) / 4] = normed;
    if (!writer) continue;
    Store4(args.normed + static_cast<int64_t>(row) * d + c, normed);
    if (args.kv_cache == nullptr) continue;
    const int64_t target = static_cast<int64_t>(args.cache_rows[row]) * args.row_width + c;
    if (args.kv_cache_bf16) {
      Store4(static_cast<__nv_bfloat16*>(args.kv_cache) + target, normed);
    } else {
      Store4(static_cast<float*>(args.kv_cache) + target, normed);
    }
  }
}

// Whether this block is the last of the grid to get here; its writes before are visible
// to that block.
__device__ bool LastBlockToArrive(uint32_t* counter) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// dst[i] = src[i] for i < count (a multiple of 4, 16-byte aligned), kBatch 16-byte loads
// per thread in flight before the first store.
template <bool kBypassL1>
__device__ void CopyToShared(float* dst, const float* src, int count) {
  constexpr int kBatch = 8;
  const int quads = count / 4;
  const float4* source = reinterpret_cast<const float4*>(src);
  for (int first = threadIdx.x; first < quads; first += kThreads * kBatch) {
    float4 values[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int quad = first + j * kThreads;
      if (quad < quads) values[j] = kBypassL1 ? __ldcg(source + quad) : __ldg(source + quad);
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int quad = first + j * kThreads;
      if (quad < quads) reinterpret_cast<float4*>(dst)[quad] = values[j];
    }
  }
}

// The router's second product, softmax + top-k and the grouping, by the last block.
__device__ void FinishRouting(const DecodeGateArgs& args, float* shared) {
  __shared__ int32_t chosen[kMaxDecodeGateSlots];
  __shared__ int32_t slot_experts[kThreads];
  __shared__ int32_t starts[kMaxExperts + 1];
  const int num_tokens = args.num_tokens, g = args.g, num_experts = args.num_experts, top_k = args.top_k;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* hidden = shared;                       // [T, g]
  float* w2 = hidden + num_tokens * g;          // [E, g]
  float* logits = w2 + num_experts * g;         // [T, E]
  // Other blocks' hidden units (past L1, which is not coherent) and all of w2 (which the
  // grid put in L2): the dot products below would otherwise wait on one latency after another.
  CopyToShared<true>(hidden, args.hidden, num_tokens * g);
  CopyToShared<false>(w2, args.w2, num_experts * g);
  __syncthreads();
  for (int index = warp; index < num_tokens * num_experts; index += kWarps) {
    const int token = index / num_experts, expert = index % num_experts;
    const float sum = RouterOutDot(hidden + token * g, w2 + expert * g, g);
    if (lane == 0) {
      logits[index] = sum;
      args.logits[index] = sum;
    }
  }
  __syncthreads();
  for (int token = warp; token < num_tokens; token += kWarps) {
    WarpSoftmaxTopK(logits + token * num_experts, num_experts, top_k, chosen + token * top_k,
                    args.token_gates + static_cast<int64_t>(token) * top_k);
  }
  __syncthreads();
  const int num_slots = num_tokens * top_k;
  for (int slot = threadIdx.x; slot < num_slots; slot += kThreads) args.token_experts[slot] = chosen[slot];
  BlockGroupSlots(chosen, num_slots, top_k, num_experts, slot_experts, starts, args.expert_offsets, args.slot_tokens,
                  args.token_slots);
}

__global__ void __launch_bounds__(kThreads) DecodeGateKernel(DecodeGateArgs args) {
  extern __shared__ float4 staged[];  // normed rows [T][d / 4]; later the routing's scratch
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // Each block asks L2 for its share of w2, which only the last block reads, and later.
  constexpr int kLineFloats = 32;
  const int w2_lines = (args.num_experts * args.g + kLineFloats - 1) / kLineFloats;
  for (int line = blockIdx.x * kThreads + threadIdx.x; line < w2_lines; line += gridDim.x * kThreads) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(args.w2 + static_cast<int64_t>(line) * kLineFloats));
  }
  // hidden[t, unit] = gelu_exact(b1[unit] + normed[t] · w1[unit]); the unit's first batch of
  // w1 is in flight while the rows are normed.
  const int unit = blockIdx.x * kWarps + warp;
  const float* w1_row = args.w1 + static_cast<int64_t>(min(unit, args.g - 1)) * args.d;
  float4 first_batch[kRouterLoads];
  LoadRouterBatch(w1_row, args.d, lane * 4, first_batch);
  for (int row = warp; row < args.num_tokens; row += kWarps) NormRow(args, row, staged);
  __syncthreads();
  if (unit < args.g) {
    float sums[kMaxDecodeGateTokens] = {};
    AccumulateRouterBatch<kMaxDecodeGateTokens>(first_batch, staged, args.d, lane * 4, args.num_tokens, sums);
    for (int base = lane * 4 + kRouterBatchFloats; base < args.d; base += kRouterBatchFloats) {
      float4 weights[kRouterLoads];
      LoadRouterBatch(w1_row, args.d, base, weights);
      AccumulateRouterBatch<kMaxDecodeGateTokens>(weights, staged, args.d, base, args.num_tokens, sums);
    }
#pragma unroll
    for (int t = 0; t < kMaxDecodeGateTokens; ++t) {
      if (t >= args.num_tokens) break;
      const float total = RouterWarpSum(sums[t]);
      if (lane == 0) args.hidden[static_cast<int64_t>(t) * args.g + unit] = GeluExactValue(total + args.b1[unit]);
    }
  }
  if (!LastBlockToArrive(args.counter)) return;
  __syncthreads();  // every warp is done with `staged`
  FinishRouting(args, reinterpret_cast<float*>(staged));
  if (threadIdx.x == 0) *args.counter = 0;
}

}  // namespace

bool DecodeGateSupports(int num_tokens, int d, int g, int num_experts, int top_k) {
  return num_tokens >= 1 && num_tokens <= kMaxDecodeGateTokens && num_tokens * top_k <= kMaxDecodeGateSlots &&
         top_k >= 1 && top_k <= num_experts && num_experts <= kMaxExperts && d % 4 == 0 && g % 4 == 0 &&
         SharedBytes(num_tokens, d, g, num_experts) <= kMaxSharedBytes;
}

cudaError_t DecodeGate(const DecodeGateArgs& args, cudaStream_t stream) {
  if (!DecodeGateSupports(args.num_tokens, args.d, args.g, args.num_experts, args.top_k)) return cudaErrorInvalidValue;
  const size_t shared = SharedBytes(args.num_tokens, args.d, args.g, args.num_experts);
  const cudaError_t configured =
      cudaFuncSetAttribute(DecodeGateKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kMaxSharedBytes));
  if (configured != cudaSuccess) return configured;
  DecodeGateKernel<<<(args.g + kWarps - 1) / kWarps, kThreads, shared, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace mf::kernels
