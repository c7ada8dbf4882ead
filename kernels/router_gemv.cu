#include "kernels/router_gemv.h"

#include <cstdint>

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

// The second product of both router paths: logits[t, e] = hidden[t] · w2[e].
cudaError_t LaunchRouterOut(const float* hidden, int num_tokens, int g, const float* w2, int num_experts, float* logits,
                            cudaStream_t stream) {
  const int outputs = num_tokens * num_experts;
  RouterOutKernel<<<(outputs + kWarpsPerBlock - 1) / kWarpsPerBlock, kWarp * kWarpsPerBlock, 0, stream>>>(
      hidden, num_tokens, g, w2, num_experts, logits);
  return cudaGetLastError();
}

constexpr int kMmaTokens = 16;      // rows of a block's tile (one m16 fragment)
constexpr int kMmaUnits = 32;       // gate units of a block's tile (four n8 fragments)
constexpr int kMmaWarps = 8;        // split the reduction dimension eight ways
constexpr int kMmaKBlock = 32;      // floats of a row a lane group loads per pass (8 per lane)
constexpr int kMmaKBlocksInFlight = 2;

__device__ __forceinline__ uint32_t ToTf32(float value) {
  uint32_t rounded;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(rounded) : "f"(value));
  return rounded;
}

// d[16x8] += a[16x8] · b[8x8] on TF32 tensor cores, fp32 accumulation.
__device__ __forceinline__ void MmaTf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ float4 LoadOrZero(const float* source, bool valid) {
  return valid ? __ldg(reinterpret_cast<const float4*>(source)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
}

// hidden[t, u] = gelu_exact(b1[u] + x[t] · w1[u]) for a tile of 16 tokens x 32 units, on
// TF32 tensor cores. Each warp takes an eighth of the reduction dimension; lanes load their
// operands straight from global memory (x and w1 are small and stay in L2) 16 bytes at a
// time. A k-step's eight columns are a permutation of the row (lane group t's columns
// 8t + 2s and 8t + 2s + 1 at step s), the same for both operands, so the sums are unchanged.
__global__ void __launch_bounds__(kMmaWarps * kWarp)
    RouterHiddenMmaKernel(const float* __restrict__ x, int num_tokens, int d, const float* __restrict__ w1,
                          const float* __restrict__ b1, int g, float* __restrict__ hidden) {
  __shared__ float partial[kMmaWarps][kMmaTokens][kMmaUnits];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int group = lane / 4, in_group = lane % 4;
  const int token0 = blockIdx.x * kMmaTokens, unit0 = blockIdx.y * kMmaUnits;
  const int rows[2] = {token0 + group, token0 + group + 8};
  const int k_per_warp = d / kMmaWarps;
  const int k_begin = warp * k_per_warp, k_end = k_begin + k_per_warp;
  float accumulators[kMmaUnits / 8][4] = {};
  for (int k0 = k_begin; k0 < k_end; k0 += kMmaKBlock * kMmaKBlocksInFlight) {
    float4 a[kMmaKBlocksInFlight][2][2], b[kMmaKBlocksInFlight][kMmaUnits / 8][2];
#pragma unroll
    for (int block = 0; block < kMmaKBlocksInFlight; ++block) {
      const int column = k0 + block * kMmaKBlock + in_group * 8;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float* row = x + static_cast<int64_t>(rows[half]) * d + column;
        a[block][half][0] = LoadOrZero(row, rows[half] < num_tokens);
        a[block][half][1] = LoadOrZero(row + 4, rows[half] < num_tokens);
      }
#pragma unroll
      for (int tile = 0; tile < kMmaUnits / 8; ++tile) {
        const int unit = unit0 + tile * 8 + group;
        const float* row = w1 + static_cast<int64_t>(unit) * d + column;
        b[block][tile][0] = LoadOrZero(row, unit < g);
        b[block][tile][1] = LoadOrZero(row + 4, unit < g);
      }
    }
#pragma unroll
    for (int block = 0; block < kMmaKBlocksInFlight; ++block) {
#pragma unroll
      for (int step = 0; step < 4; ++step) {
        // Step s uses this lane's columns 2s and 2s + 1 of its eight.
        auto pick = [step](const float4 (&pair)[2], int second) {
          const float4& quad = pair[step / 2];
          return step % 2 == 0 ? (second ? quad.y : quad.x) : (second ? quad.w : quad.z);
        };
        const uint32_t fragment_a[4] = {ToTf32(pick(a[block][0], 0)), ToTf32(pick(a[block][1], 0)),
                                        ToTf32(pick(a[block][0], 1)), ToTf32(pick(a[block][1], 1))};
#pragma unroll
        for (int tile = 0; tile < kMmaUnits / 8; ++tile) {
          const uint32_t fragment_b[2] = {ToTf32(pick(b[block][tile], 0)), ToTf32(pick(b[block][tile], 1))};
          MmaTf32(accumulators[tile], fragment_a, fragment_b);
        }
      }
    }
  }
#pragma unroll
  for (int tile = 0; tile < kMmaUnits / 8; ++tile) {
    const int column = tile * 8 + 2 * in_group;
    partial[warp][group][column] = accumulators[tile][0];
    partial[warp][group][column + 1] = accumulators[tile][1];
    partial[warp][group + 8][column] = accumulators[tile][2];
    partial[warp][group + 8][column + 1] = accumulators[tile][3];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kMmaTokens * kMmaUnits; i += blockDim.x) {
    const int row = i / kMmaUnits, column = i % kMmaUnits;
    const int token = token0 + row, unit = unit0 + column;
    if (token >= num_tokens || unit >= g) continue;
    float sum = b1[unit];
    for (int w = 0; w < kMmaWarps; ++w) sum += partial[w][row][column];  // fixed order: deterministic
    hidden[static_cast<int64_t>(token) * g + unit] = GeluExactValue(sum);
  }
}

}  // namespace

bool RouterMmaSupports(int num_tokens, int d) {
  return num_tokens <= kMaxRouterMmaTokens && d > 0 && d % (kMmaWarps * kMmaKBlock * kMmaKBlocksInFlight) == 0;
}

cudaError_t RouterMma(const float* x, int num_tokens, int d, const float* w1, const float* b1, int g, const float* w2,
                      int num_experts, float* hidden, float* logits, cudaStream_t stream) {
  if (num_tokens == 0) return cudaSuccess;
  if (!RouterMmaSupports(num_tokens, d)) return cudaErrorInvalidValue;
  const dim3 grid((num_tokens + kMmaTokens - 1) / kMmaTokens, (g + kMmaUnits - 1) / kMmaUnits);
  RouterHiddenMmaKernel<<<grid, kMmaWarps * kWarp, 0, stream>>>(x, num_tokens, d, w1, b1, g, hidden);
  return LaunchRouterOut(hidden, num_tokens, g, w2, num_experts, logits, stream);
}

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
  return LaunchRouterOut(hidden, num_tokens, g, w2, num_experts, logits, stream);
}

}  // namespace mf::kernels
