#include "kernels/elementwise.h"

#include "kernels/activations.cuh"
#include "kernels/vector_io.cuh"

namespace mf::kernels {
namespace {

constexpr int kThreads = 256;

int Blocks(int64_t count) { return static_cast<int>((count + kThreads - 1) / kThreads); }

__global__ void EmbedKernel(const __nv_bfloat16* __restrict__ table, const int32_t* __restrict__ ids, int width,
                            float* __restrict__ out) {
  const __nv_bfloat16* row = table + static_cast<int64_t>(ids[blockIdx.x]) * width;
  for (int c = threadIdx.x; c < width; c += blockDim.x) {
    out[static_cast<int64_t>(blockIdx.x) * width + c] = __bfloat162float(row[c]);
  }
}

// One block per row; two passes over the row (mean, then centred variance), as the CPU
// reference does. Rows whose width is a multiple of four move as float4.
__global__ void LayerNormKernel(const float* __restrict__ x, const float* __restrict__ weight,
                                const float* __restrict__ bias, float eps, int width, float* __restrict__ out) {
  __shared__ float partial[32];
  const float* row = x + static_cast<int64_t>(blockIdx.x) * width;
  float* destination = out + static_cast<int64_t>(blockIdx.x) * width;
  auto block_sum = [&](float value) {
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = value;
    __syncthreads();
    float total = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += partial[w];
    __syncthreads();
    return total;
  };
  if (width % 4 == 0) {
    float sum = 0;
    for (int c = 4 * threadIdx.x; c < width; c += 4 * blockDim.x) {
      const float4 v = Load4(row + c);
      sum += (v.x + v.y) + (v.z + v.w);
    }
    const float mean = block_sum(sum) / width;
    float squares = 0;
    for (int c = 4 * threadIdx.x; c < width; c += 4 * blockDim.x) {
      const float4 v = Map4(Load4(row + c), [mean](float value) { return value - mean; });
      squares += (v.x * v.x + v.y * v.y) + (v.z * v.z + v.w * v.w);
    }
    const float inv_std = rsqrtf(block_sum(squares) / width + eps);
    for (int c = 4 * threadIdx.x; c < width; c += 4 * blockDim.x) {
      const float4 v = Load4(row + c), w = Load4(weight + c), b = Load4(bias + c);
      Store4(destination + c, make_float4((v.x - mean) * inv_std * w.x + b.x, (v.y - mean) * inv_std * w.y + b.y,
                                          (v.z - mean) * inv_std * w.z + b.z, (v.w - mean) * inv_std * w.w + b.w));
    }
    return;
  }
  float sum = 0;
  for (int c = threadIdx.x; c < width; c += blockDim.x) sum += row[c];
  const float mean = block_sum(sum) / width;
  float squares = 0;
  for (int c = threadIdx.x; c < width; c += blockDim.x) squares += (row[c] - mean) * (row[c] - mean);
  const float inv_std = rsqrtf(block_sum(squares) / width + eps);
  for (int c = threadIdx.x; c < width; c += blockDim.x) destination[c] = (row[c] - mean) * inv_std * weight[c] + bias[c];
}

// out row i = bf16(activation(x row rows[i])); whole rows in 4-wide pieces when the width allows.
template <bool kGeluNew>
__global__ void GatherToBf16Kernel(const float* __restrict__ x, const int32_t* __restrict__ rows, int width,
                                   __nv_bfloat16* __restrict__ out) {
  const int64_t source = rows == nullptr ? blockIdx.x : rows[blockIdx.x];
  const float* in = x + source * width;
  __nv_bfloat16* destination = out + static_cast<int64_t>(blockIdx.x) * width;
  auto activation = [](float value) { return kGeluNew ? GeluNewValue(value) : value; };
  if (width % 4 == 0) {
    for (int c = 4 * threadIdx.x; c < width; c += 4 * blockDim.x) Store4(destination + c, Map4(Load4(in + c), activation));
    return;
  }
  for (int c = threadIdx.x; c < width; c += blockDim.x) destination[c] = __float2bfloat16(activation(in[c]));
}

__global__ void GatherToBf16SplitKernel(const float* __restrict__ x, const int32_t* __restrict__ rows, int num_rows,
                                        int width, __nv_bfloat16* __restrict__ out) {
  const int64_t source = rows == nullptr ? blockIdx.x : rows[blockIdx.x];
  const float* in = x + source * width;
  __nv_bfloat16* high_row = out + static_cast<int64_t>(blockIdx.x) * width;
  __nv_bfloat16* low_row = out + (static_cast<int64_t>(num_rows) + blockIdx.x) * width;
  auto remainder = [](float value) { return value - __bfloat162float(__float2bfloat16(value)); };
  if (width % 4 == 0) {
    for (int c = 4 * threadIdx.x; c < width; c += 4 * blockDim.x) {
      const float4 value = Load4(in + c);
      Store4(high_row + c, value);
      Store4(low_row + c, Map4(value, remainder));
    }
    return;
  }
  for (int c = threadIdx.x; c < width; c += blockDim.x) {
    const float value = in[c];
    high_row[c] = __float2bfloat16(value);
    low_row[c] = __float2bfloat16(remainder(value));
  }
}

__global__ void SumHalvesKernel(const float* __restrict__ halves, int64_t count, float* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) out[i] = halves[i] + halves[count + i];
}

__global__ void GatherRowsKernel(const float* __restrict__ x, const int32_t* __restrict__ rows, int width,
                                 float* __restrict__ out) {
  const int64_t source = rows[blockIdx.x];
  for (int c = threadIdx.x; c < width; c += blockDim.x) {
    out[static_cast<int64_t>(blockIdx.x) * width + c] = x[source * width + c];
  }
}

__global__ void AddBiasKernel(float* __restrict__ x, const float* __restrict__ bias, int64_t count, int width) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) x[i] += bias[i % width];
}

__global__ void GeluExactKernel(float* __restrict__ x, int64_t count) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) x[i] = GeluExactValue(x[i]);
}

__global__ void GeluNewKernel(float* __restrict__ x, int64_t count) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) x[i] = GeluNewValue(x[i]);
}

__global__ void CombineExpertsKernel(const float* __restrict__ slot_out, const float* __restrict__ gates,
                                     const int32_t* __restrict__ token_slots, int top_k, int width,
                                     float* __restrict__ residual) {
  const int token = blockIdx.x;
  float* destination = residual + static_cast<int64_t>(token) * width;
  if (width % 4 == 0) {
    for (int c = 4 * threadIdx.x; c < width; c += 4 * blockDim.x) {
      float4 mixture = make_float4(0, 0, 0, 0);
      for (int rank = 0; rank < top_k; ++rank) {
        const int index = token * top_k + rank;
        const float gate = gates[index];
        const float4 v = Load4(slot_out + static_cast<int64_t>(token_slots[index]) * width + c);
        mixture = make_float4(mixture.x + gate * v.x, mixture.y + gate * v.y, mixture.z + gate * v.z,
                              mixture.w + gate * v.w);
      }
      const float4 r = Load4(destination + c);
      Store4(destination + c, make_float4(r.x + mixture.x, r.y + mixture.y, r.z + mixture.z, r.w + mixture.w));
    }
    return;
  }
  for (int c = threadIdx.x; c < width; c += blockDim.x) {
    float mixture = 0;
    for (int rank = 0; rank < top_k; ++rank) {
      const int index = token * top_k + rank;
      mixture += gates[index] * slot_out[static_cast<int64_t>(token_slots[index]) * width + c];
    }
    destination[c] += mixture;
  }
}

}  // namespace

cudaError_t Embed(const __nv_bfloat16* table, const int32_t* ids, int num_tokens, int width, float* out,
                  cudaStream_t stream) {
  if (num_tokens > 0) EmbedKernel<<<num_tokens, kThreads, 0, stream>>>(table, ids, width, out);
  return cudaGetLastError();
}

cudaError_t LayerNorm(const float* x, const float* weight, const float* bias, float eps, int rows, int width,
                      float* out, cudaStream_t stream) {
  if (rows > 0) LayerNormKernel<<<rows, kThreads, 0, stream>>>(x, weight, bias, eps, width, out);
  return cudaGetLastError();
}

cudaError_t GatherToBf16(const float* x, const int32_t* rows, int num_rows, int width, __nv_bfloat16* out,
                         cudaStream_t stream) {
  if (num_rows > 0) GatherToBf16Kernel<false><<<num_rows, kThreads, 0, stream>>>(x, rows, width, out);
  return cudaGetLastError();
}

cudaError_t GeluNewToBf16(const float* x, int num_rows, int width, __nv_bfloat16* out, cudaStream_t stream) {
  if (num_rows > 0) GatherToBf16Kernel<true><<<num_rows, kThreads, 0, stream>>>(x, nullptr, width, out);
  return cudaGetLastError();
}

cudaError_t GatherToBf16Split(const float* x, const int32_t* rows, int num_rows, int width, __nv_bfloat16* out,
                              cudaStream_t stream) {
  if (num_rows > 0) GatherToBf16SplitKernel<<<num_rows, kThreads, 0, stream>>>(x, rows, num_rows, width, out);
  return cudaGetLastError();
}

cudaError_t SumHalves(const float* halves, int64_t count, float* out, cudaStream_t stream) {
  if (count > 0) SumHalvesKernel<<<Blocks(count), kThreads, 0, stream>>>(halves, count, out);
  return cudaGetLastError();
}

cudaError_t GatherRows(const float* x, const int32_t* rows, int num_rows, int width, float* out, cudaStream_t stream) {
  if (num_rows > 0) GatherRowsKernel<<<num_rows, kThreads, 0, stream>>>(x, rows, width, out);
  return cudaGetLastError();
}

cudaError_t AddBias(float* x, const float* bias, int rows, int width, cudaStream_t stream) {
  const int64_t count = static_cast<int64_t>(rows) * width;
  if (count > 0) AddBiasKernel<<<Blocks(count), kThreads, 0, stream>>>(x, bias, count, width);
  return cudaGetLastError();
}

cudaError_t GeluExact(float* x, int64_t count, cudaStream_t stream) {
  if (count > 0) GeluExactKernel<<<Blocks(count), kThreads, 0, stream>>>(x, count);
  return cudaGetLastError();
}

cudaError_t GeluNew(float* x, int64_t count, cudaStream_t stream) {
  if (count > 0) GeluNewKernel<<<Blocks(count), kThreads, 0, stream>>>(x, count);
  return cudaGetLastError();
}

cudaError_t CombineExperts(const float* slot_out, const float* gates, const int32_t* token_slots, int num_tokens,
                           int top_k, int width, float* residual, cudaStream_t stream) {
  if (num_tokens > 0) {
    CombineExpertsKernel<<<num_tokens, kThreads, 0, stream>>>(slot_out, gates, token_slots, top_k, width, residual);
  }
  return cudaGetLastError();
}

}  // namespace mf::kernels
