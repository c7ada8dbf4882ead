#include "kernels/expert_gemv.h"

#include <algorithm>

#include "kernels/activations.cuh"

namespace mf::kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kColumnsPerThread = 8;                           // one 16-byte load of bf16 weights
constexpr int kColumnsPerBlock = kThreads * kColumnsPerThread;  // 1024
constexpr int kRowsPerPass = 8;                                 // token rows sharing one read of the weights
constexpr int kMaxSlice = 256;                                  // reduction rows per block, at most
constexpr int kRowsInFlight = 16;                               // weight rows loaded before use
constexpr int kMaxExperts = 1024;
constexpr int kSliceGroups = 8;  // threads summing one output's slices, in a fixed order

__host__ __device__ int Slices(int k, int slice) { return (k + slice - 1) / slice; }

// Reduction rows per block: small batches want many blocks (short slices) to keep every
// multiprocessor reading weights; large ones want few partial sums to add up.
int SliceFor(int num_slots) {
  return num_slots <= 4 ? 16 : num_slots <= 16 ? 32 : num_slots <= 128 ? 128 : kMaxSlice;
}

__device__ void Bf16x8ToFloat(const uint4& packed, float (&out)[kColumnsPerThread]) {
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&packed);
#pragma unroll
  for (int i = 0; i < kColumnsPerThread / 2; ++i) {
    const float2 pair = __bfloat1622float2(pairs[i]);
    out[2 * i] = pair.x;
    out[2 * i + 1] = pair.y;
  }
}

// Blocks of the grid's y dimension cover the non-empty experts only (at most one per slot):
// block row j works for the j-th expert with slots. The offsets come in with one parallel
// load; a chain of dependent loads would cost a memory latency per expert.
__device__ int ActiveExpert(const int32_t* __restrict__ offsets, int num_experts, int wanted) {
  __shared__ int32_t staged_offsets[kMaxExperts + 1];
  __shared__ int expert;
  for (int e = threadIdx.x; e <= num_experts; e += blockDim.x) staged_offsets[e] = offsets[e];
  __syncthreads();
  if (threadIdx.x == 0) {
    expert = -1;
    for (int e = 0, seen = -1; e < num_experts; ++e) {
      if (staged_offsets[e + 1] > staged_offsets[e] && ++seen == wanted) {
        expert = e;
        break;
      }
    }
  }
  __syncthreads();
  return expert;
}

// partial[h][slice][slot][n] = in[h][slot, slice rows] · W[e][slice rows, :] for the slots
// of the expert ActiveExpert finds for blockIdx.y / slices. Rows of both halves (exact
// mode) share the block, so each weight tile is read from memory once and reused from L1
// across row passes.
__global__ void __launch_bounds__(kThreads)
    PartialKernel(const float* __restrict__ x, const int32_t* __restrict__ gather, int num_halves, int num_slots, int k,
                  int slice_rows, const int32_t* __restrict__ offsets, int num_experts,
                  const __nv_bfloat16* __restrict__ weights, int n, float* __restrict__ partial) {
  __shared__ float staged[kRowsPerPass][kMaxSlice];
  const int slices = Slices(k, slice_rows);
  const int expert = ActiveExpert(offsets, num_experts, blockIdx.y / slices), slice = blockIdx.y % slices;
  if (expert < 0) return;
  const int begin = offsets[expert];
  const int count = offsets[expert + 1] - begin;
  const int column = (blockIdx.x * kThreads + threadIdx.x) * kColumnsPerThread;
  const int k_begin = slice * slice_rows, k_rows = min(k, k_begin + slice_rows) - k_begin;
  const __nv_bfloat16* matrix = weights + (static_cast<int64_t>(expert) * k + k_begin) * n + column;
  const int virtual_rows = num_halves * count;  // (half, row) pairs
  for (int first = 0; first < virtual_rows; first += kRowsPerPass) {
    const int rows = min(kRowsPerPass, virtual_rows - first);
    __syncthreads();  // the previous pass is done with `staged`
    for (int index = threadIdx.x; index < rows * k_rows; index += kThreads) {
      const int r = index / k_rows, i = index % k_rows;
      const int half = (first + r) / count, row = begin + (first + r) % count;
      const int64_t source = gather == nullptr ? row : gather[row];
      const float value = x[source * k + k_begin + i];
      // bf16(value), and in exact mode's second half what bf16 lost of it.
      const float high = __bfloat162float(__float2bfloat16(value));
      staged[r][i] = half == 0 ? high : __bfloat162float(__float2bfloat16(value - high));
    }
    __syncthreads();
    if (column >= n) continue;
    float accumulator[kRowsPerPass][kColumnsPerThread] = {};
    for (int first_row = 0; first_row < k_rows; first_row += kRowsInFlight) {
      // Every load of the group is issued before the first is used: small batches are
      // bound by how many bytes each multiprocessor keeps in flight.
      uint4 packed[kRowsInFlight];
#pragma unroll
      for (int j = 0; j < kRowsInFlight; ++j) {
        packed[j] = first_row + j < k_rows
                        ? __ldg(reinterpret_cast<const uint4*>(matrix + static_cast<int64_t>(first_row + j) * n))
                        : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int j = 0; j < kRowsInFlight; ++j) {
        if (first_row + j >= k_rows) break;
        float weight[kColumnsPerThread];
        Bf16x8ToFloat(packed[j], weight);
#pragma unroll
        for (int r = 0; r < kRowsPerPass; ++r) {
          const float x = staged[r][first_row + j];  // rows past `rows` hold stale values; their sums are dropped
#pragma unroll
          for (int c = 0; c < kColumnsPerThread; ++c) accumulator[r][c] += x * weight[c];
        }
      }
    }
    for (int r = 0; r < rows; ++r) {
      const int half = (first + r) / count, row = begin + (first + r) % count;
      float* output = partial + ((static_cast<int64_t>(half) * slices + slice) * num_slots + row) * n + column;
      reinterpret_cast<float4*>(output)[0] = make_float4(accumulator[r][0], accumulator[r][1], accumulator[r][2], accumulator[r][3]);
      reinterpret_cast<float4*>(output)[1] = make_float4(accumulator[r][4], accumulator[r][5], accumulator[r][6], accumulator[r][7]);
    }
  }
}

// out[slot][c] = Σ_h Σ_g Σ_{slice ≡ g mod 8} partial[h][slice][slot][c], in a fixed order
// (deterministic). Eight threads share each 4 columns, so the slices' loads are in flight
// together rather than one after the other.
__global__ void __launch_bounds__(kSliceGroups * 32)
    ReduceKernel(const float4* __restrict__ partial, int num_halves, int num_slots, int slices, int n, bool gelu_new,
                 float4* __restrict__ out) {
  __shared__ float4 sums[kSliceGroups][32];
  const int lane = threadIdx.x % 32, group = threadIdx.x / 32;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * 32 + lane;
  const int64_t per_half = static_cast<int64_t>(num_slots) * n / 4;
  float4 sum = make_float4(0, 0, 0, 0);
  if (index < per_half) {
    for (int half = 0; half < num_halves; ++half) {
      float4 total = make_float4(0, 0, 0, 0);
#pragma unroll 8
      for (int slice = group; slice < slices; slice += kSliceGroups) {
        const float4 value = partial[(static_cast<int64_t>(half) * slices + slice) * per_half + index];
        total.x += value.x;
        total.y += value.y;
        total.z += value.z;
        total.w += value.w;
      }
      sum.x += total.x;
      sum.y += total.y;
      sum.z += total.z;
      sum.w += total.w;
    }
  }
  sums[group][lane] = sum;
  __syncthreads();
  if (group != 0 || index >= per_half) return;
  for (int g = 1; g < kSliceGroups; ++g) {
    sum.x += sums[g][lane].x;
    sum.y += sums[g][lane].y;
    sum.z += sums[g][lane].z;
    sum.w += sums[g][lane].w;
  }
  if (gelu_new) {
    sum = make_float4(GeluNewValue(sum.x), GeluNewValue(sum.y), GeluNewValue(sum.z), GeluNewValue(sum.w));
  }
  out[index] = sum;
}

}  // namespace

bool ExpertGemvSupports(int n) { return n % kColumnsPerThread == 0; }

size_t ExpertGemvWorkspaceFloats(int num_halves, int num_slots, int k, int n) {
  return static_cast<size_t>(num_halves) * Slices(k, SliceFor(num_slots)) * num_slots * n;
}

cudaError_t ExpertGemv(const float* x, const int32_t* gather, int num_halves, int num_slots, int k,
                       const int32_t* expert_offsets,
                       int num_experts, const __nv_bfloat16* weights, int n, bool gelu_new, float* workspace,
                       float* out, cudaStream_t stream) {
  if (num_slots == 0) return cudaSuccess;
  if (!ExpertGemvSupports(n) || num_experts > kMaxExperts) return cudaErrorInvalidValue;
  const int slice_rows = SliceFor(num_slots);
  const int active_experts = std::min(num_experts, num_slots);
  const dim3 grid((n + kColumnsPerBlock - 1) / kColumnsPerBlock, active_experts * Slices(k, slice_rows));
  PartialKernel<<<grid, kThreads, 0, stream>>>(x, gather, num_halves, num_slots, k, slice_rows, expert_offsets,
                                               num_experts, weights, n, workspace);
  const int64_t outputs = static_cast<int64_t>(num_slots) * n / 4;
  ReduceKernel<<<static_cast<int>((outputs + 31) / 32), kSliceGroups * 32, 0, stream>>>(
      reinterpret_cast<const float4*>(workspace), num_halves, num_slots, Slices(k, slice_rows), n, gelu_new,
      reinterpret_cast<float4*>(out));
  return cudaGetLastError();
}

}  // namespace mf::kernels
