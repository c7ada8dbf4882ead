#include "kernels/expert_gemv.h"

namespace mf::kernels {
namespace {

constexpr int kThreads = 256;    // output columns per block
constexpr int kSlice = 64;       // reduction rows per block
constexpr int kRowsPerPass = 8;  // token rows sharing one read of the weights

__host__ __device__ int Slices(int k) { return (k + kSlice - 1) / kSlice; }

// partial[h][slice][slot][n] = in[h][slot, slice rows] · W[e][slice rows, :] for the
// slots of expert e = blockIdx.y / slices.
__global__ void __launch_bounds__(kThreads)
    PartialKernel(const __nv_bfloat16* __restrict__ in, int num_slots, int k, const int32_t* __restrict__ offsets,
                  const __nv_bfloat16* __restrict__ weights, int n, float* __restrict__ partial) {
  const int slices = Slices(k);
  const int expert = blockIdx.y / slices, slice = blockIdx.y % slices;
  const int begin = offsets[expert];
  const int count = offsets[expert + 1] - begin;
  const int column = blockIdx.x * kThreads + threadIdx.x;
  if (count == 0 || column >= n) return;
  const int k_begin = slice * kSlice, k_end = min(k, k_begin + kSlice);
  const __nv_bfloat16* input = in + static_cast<int64_t>(blockIdx.z) * num_slots * k;
  const __nv_bfloat16* matrix = weights + static_cast<int64_t>(expert) * k * n + column;
  float* output = partial + ((static_cast<int64_t>(blockIdx.z) * slices + slice) * num_slots) * n + column;
  for (int first = 0; first < count; first += kRowsPerPass) {
    const int rows = min(kRowsPerPass, count - first);
    const __nv_bfloat16* row_input = input + static_cast<int64_t>(begin + first) * k;
    float accumulator[kRowsPerPass] = {};
#pragma unroll 8
    for (int i = k_begin; i < k_end; ++i) {
      const float weight = __bfloat162float(matrix[static_cast<int64_t>(i) * n]);
#pragma unroll
      for (int r = 0; r < kRowsPerPass; ++r) {
        if (r < rows) accumulator[r] += __bfloat162float(row_input[static_cast<int64_t>(r) * k + i]) * weight;
      }
    }
    for (int r = 0; r < rows; ++r) output[static_cast<int64_t>(begin + first + r) * n] = accumulator[r];
  }
}

// out[h][slot][c] = Σ_slice partial[h][slice][slot][c], in slice order.
__global__ void ReduceKernel(const float* __restrict__ partial, int num_halves, int num_slots, int slices, int n,
                             float* __restrict__ out) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t per_half = static_cast<int64_t>(num_slots) * n;
  if (index >= num_halves * per_half) return;
  const int64_t half = index / per_half, within = index % per_half;
  float total = 0;
  for (int slice = 0; slice < slices; ++slice) total += partial[(half * slices + slice) * per_half + within];
  out[index] = total;
}

}  // namespace

size_t ExpertGemvWorkspaceFloats(int num_halves, int num_slots, int k, int n) {
  return static_cast<size_t>(num_halves) * Slices(k) * num_slots * n;
}

cudaError_t ExpertGemv(const __nv_bfloat16* in, int num_halves, int num_slots, int k, const int32_t* expert_offsets,
                       int num_experts, const __nv_bfloat16* weights, int n, float* workspace, float* out,
                       cudaStream_t stream) {
  if (num_slots == 0) return cudaSuccess;
  const dim3 grid((n + kThreads - 1) / kThreads, num_experts * Slices(k), num_halves);
  PartialKernel<<<grid, kThreads, 0, stream>>>(in, num_slots, k, expert_offsets, weights, n, workspace);
  const int64_t outputs = static_cast<int64_t>(num_halves) * num_slots * n;
  ReduceKernel<<<static_cast<int>((outputs + 255) / 256), 256, 0, stream>>>(workspace, num_halves, num_slots, Slices(k), n,
                                                                            out);
  return cudaGetLastError();
}

}  // namespace mf::kernels
