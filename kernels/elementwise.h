// Row-wise and element-wise kernels of the forward pass. Activations are fp32;
// matrices stored in bf16 are widened on load. Every launcher is asynchronous on
// `stream` and returns the launch status.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mf::kernels {

// out[t] = float(table[ids[t]])                     table [V, width] bf16
cudaError_t Embed(const __nv_bfloat16* table, const int32_t* ids, int num_tokens, int width, float* out,
                  cudaStream_t stream);
// LayerNorm of each row (biased variance, eps inside the square root).
cudaError_t LayerNorm(const float* x, const float* weight, const float* bias, float eps, int rows, int width,
                      float* out, cudaStream_t stream);
// out[i] = bf16(x[rows[i]]) (or of x[i] when rows is null).
cudaError_t GatherToBf16(const float* x, const int32_t* rows, int num_rows, int width, __nv_bfloat16* out,
                         cudaStream_t stream);
// out[i] = bf16(gelu_new(x[i])) over [num_rows, width]: an expert product's activation and
// its narrowing to the next product's input in one pass.
cudaError_t GeluNewToBf16(const float* x, int num_rows, int width, __nv_bfloat16* out, cudaStream_t stream);
// Splits each (gathered) row into two bf16 rows whose sum is the fp32 value to ~16
// bits: out[i] = bf16(v), out[num_rows + i] = bf16(v - bf16(v)). A GEMM over both
// halves, summed, gives fp32-accurate activations with bf16 weights.
cudaError_t GatherToBf16Split(const float* x, const int32_t* rows, int num_rows, int width, __nv_bfloat16* out,
                              cudaStream_t stream);
// out[i] = halves[i] + halves[count + i]
cudaError_t SumHalves(const float* halves, int64_t count, float* out, cudaStream_t stream);
// out[i] = x[rows[i]]
cudaError_t GatherRows(const float* x, const int32_t* rows, int num_rows, int width, float* out, cudaStream_t stream);
// x[r, c] += bias[c]
cudaError_t AddBias(float* x, const float* bias, int rows, int width, cudaStream_t stream);
cudaError_t GeluExact(float* x, int64_t count, cudaStream_t stream);
cudaError_t GeluNew(float* x, int64_t count, cudaStream_t stream);
// residual[t] += Σ_r gates[t, r] · slot_out[token_slots[t, r]], summed in rank order.
cudaError_t CombineExperts(const float* slot_out, const float* gates, const int32_t* token_slots, int num_tokens,
                           int top_k, int width, float* residual, cudaStream_t stream);

}  // namespace mf::kernels
