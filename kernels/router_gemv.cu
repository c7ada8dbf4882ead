#include "kernels/router_gemv.h"

#include "kernels/activations.cuh"

namespace mf::kernels {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr int kTokensPerPass = 8;  // tokens sharing one read of a gate row
constexpr int kLoadsInFlight = 8;  // 16-byte loads of a gate row issued before use
constexpr size_t kMaxStagedBytes = 48 << 10;  // token rows staged per block (the default shared-memory limit)

__device__ float WarpSum(float value) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// One warp per gate unit: hidden[t, unit] = gelu_exact(b1[unit] + x[t] · w1[unit]). The
// block stages its tokens' rows in shared memory first, so the products wait on one read
// of the gate row only.
__global__ void __launch_bounds__(kWarp * kWarpsPerBlock)
    RouterHiddenKernel(const float* __restrict__ x, int num_tokens, int d, const float* __restrict__ w1,
                       const float* __restrict__ b1, int g, float* __restrict__ hidden) {
  extern __shared__ float4 staged[];  // [kTokensPerPass][d / 4]
  const int lane = threadIdx.x % kWarp;
  const int unit = blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp;
  const float* row = w1 + static_cast<int64_t>(min(unit, g - 1)) * d;
  const int quads = d / 4;
  constexpr int kStride = kWarp * 4;  // floats a warp reads per load
  for (int first_token = 0; first_token < num_tokens; first_token += kTokensPerPass) {
    const int tokens = min(kTokensPerPass, num_tokens - first_token);
    __syncthreads();  // the previous pass is done with `staged`
    for (int i = threadIdx.x; i < tokens * quads; i += blockDim.x) {
      staged[i] = __ldg(reinterpret_cast<const float4*>(x + static_cast<int64_t>(first_token) * d) + i);
    }
    __syncthreads();
    if (unit >= g) continue;
    float sums[kTokensPerPass] = {};
    for (int base = lane * 4; base < d; base += kStride * kLoadsInFlight) {
      float4 weights[kLoadsInFlight];
#pragma unroll
      for (int j = 0; j < kLoadsInFlight; ++j) {
        const int column = base + j * kStride;
        weights[j] = column < d ? __ldg(reinterpret_cast<const float4*>(row + column)) : make_float4(0, 0, 0, 0);
      }
#pragma unroll
      for (int j = 0; j < kLoadsInFlight; ++j) {
        const int column = base + j * kStride;
        if (column >= d) break;
#pragma unroll
        for (int t = 0; t < kTokensPerPass; ++t) {
          if (t >= tokens) break;
          const float4 v = staged[t * quads + column / 4];
          sums[t] += weights[j].x * v.x + weights[j].y * v.y + weights[j].z * v.z + weights[j].w * v.w;
        }
      }
    }
#pragma unroll
    for (int t = 0; t < kTokensPerPass; ++t) {
      if (t >= tokens) break;
      const float total = WarpSum(sums[t]);
      if (lane == 0) hidden[static_cast<int64_t>(first_token + t) * g + unit] = GeluExactValue(total + b1[unit]);
    }
  }
}

// One warp per (token, expert): logits[t, e] = hidden[t] · w2[e].
__global__ void __launch_bounds__(kWarp * kWarpsPerBlock)
    RouterOutKernel(const float* __restrict__ hidden, int num_tokens, int g, const float* __restrict__ w2,
                    int num_experts, float* __restrict__ logits) {
  const int lane = threadIdx.x % kWarp;
  const int index = blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp;
  if (index >= num_tokens * num_experts) return;
  const int token = index / num_experts, expert = index % num_experts;
  const float* h = hidden + static_cast<int64_t>(token) * g;
  const float* w = w2 + static_cast<int64_t>(expert) * g;
  float sum = 0.0f;
  for (int i = lane; i < g; i += kWarp) sum += h[i] * __ldg(w + i);
  sum = WarpSum(sum);
  if (lane == 0) logits[index] = sum;
}

}  // namespace

bool RouterGemvSupports(int num_tokens, int d) {
  return num_tokens <= kMaxRouterGemvTokens && d % 4 == 0 &&
         static_cast<size_t>(kTokensPerPass) * d * sizeof(float) <= kMaxStagedBytes;
}

cudaError_t RouterGemv(const float* x, int num_tokens, int d, const float* w1, const float* b1, int g, const float* w2,
                       int num_experts, float* hidden, float* logits, cudaStream_t stream) {
  if (num_tokens == 0) return cudaSuccess;
  if (!RouterGemvSupports(num_tokens, d)) return cudaErrorInvalidValue;
  const int threads = kWarp * kWarpsPerBlock;
  const size_t staged_bytes = static_cast<size_t>(kTokensPerPass) * d * sizeof(float);
  RouterHiddenKernel<<<(g + kWarpsPerBlock - 1) / kWarpsPerBlock, threads, staged_bytes, stream>>>(x, num_tokens, d, w1,
                                                                                                   b1, g, hidden);
  const int outputs = num_tokens * num_experts;
  RouterOutKernel<<<(outputs + kWarpsPerBlock - 1) / kWarpsPerBlock, threads, 0, stream>>>(hidden, num_tokens, g, w2,
                                                                                           num_experts, logits);
  return cudaGetLastError();
}

}  // namespace mf::kernels
