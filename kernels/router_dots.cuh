// The router's dot products as device functions, shared by the router kernels
// (kernels/router_gemv.cu) and the fused decode gate (kernels/decode_gate.cu), so both
// compute the same logits bit for bit.
#pragma once

#include <cstdint>

namespace mf::kernels {

__device__ __forceinline__ float RouterWarpSum(float value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// A gate row is read in batches of kRouterLoads 16-byte loads per lane, all in flight
// before the first is used: lane l's batch at `base` (= 4 l + a multiple of
// kRouterBatchFloats) covers columns base + j * 128.
constexpr int kRouterLoads = 8;
constexpr int kRouterBatchFloats = 32 * 4 * kRouterLoads;

__device__ __forceinline__ void LoadRouterBatch(const float* __restrict__ row, int d, int base,
                                                float4 (&weights)[kRouterLoads]) {
#pragma unroll
  for (int j = 0; j < kRouterLoads; ++j) {
    const int column = base + j * 128;
    weights[j] = column < d ? __ldg(reinterpret_cast<const float4*>(row + column)) : make_float4(0, 0, 0, 0);
  }
}

// sums[t] += the batch · staged row t for t < tokens, where staged holds the token rows as
// [tokens][d / 4] float4s.
template <int kMaxTokens>
__device__ __forceinline__ void AccumulateRouterBatch(const float4 (&weights)[kRouterLoads], const float4* staged,
                                                      int d, int base, int tokens, float (&sums)[kMaxTokens]) {
  const int quads = d / 4;
#pragma unroll
  for (int j = 0; j < kRouterLoads; ++j) {
    const int column = base + j * 128;
    if (column >= d) break;
#pragma unroll
    for (int t = 0; t < kMaxTokens; ++t) {
      if (t >= tokens) break;
      const float4 v = staged[t * quads + column / 4];
      sums[t] += weights[j].x * v.x + weights[j].y * v.y + weights[j].z * v.z + weights[j].w * v.w;
    }
  }
}

// One warp: sums[t] += row · staged row t for t < tokens (d % 4 == 0). Each lane's partial
// sums; RouterWarpSum finishes them.
template <int kMaxTokens>
__device__ __forceinline__ void RouterRowDots(const float* __restrict__ row, const float4* staged, int d, int tokens,
                                              float (&sums)[kMaxTokens]) {
  for (int base = (threadIdx.x % 32) * 4; base < d; base += kRouterBatchFloats) {
    float4 weights[kRouterLoads];
    LoadRouterBatch(row, d, base, weights);
    AccumulateRouterBatch<kMaxTokens>(weights, staged, d, base, tokens, sums);
  }
}

// One warp: hidden [g] · w2 row [g], the gate's second product (the result in every lane).
// Either may be in shared or global memory.
__device__ __forceinline__ float RouterOutDot(const float* hidden, const float* w2_row, int g) {
  float sum = 0.0f;
  for (int i = threadIdx.x % 32; i < g; i += 32) sum += hidden[i] * w2_row[i];
  return RouterWarpSum(sum);
}

}  // namespace mf::kernels
