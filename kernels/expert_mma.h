// Grouped expert GEMM on tensor cores: one launch multiplies every expert's segment of
// rows by that expert's weight matrix, reading the segment bounds on the device, so the
// host never waits for the routing. bf16 operands, fp32 accumulation and output, with
// gelu_new optionally applied on the way out (the MLP's first product), written as fp32 or bf16.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mf::kernels {

enum class MmaEpilogue { kNone, kGeluNew };

// Whether ExpertMma handles these shapes (16-byte rows: k and n multiples of 8).
bool ExpertMmaSupports(int k, int n);

// For each expert e and row r of its segment [offsets[e], offsets[e+1]):
// out[r, :] = epilogue(Σ_h a[h][r, :] · W[e]), a: num_halves bf16 matrices [rows, k] spaced
// half_stride elements apart (exact mode passes a value and its remainder; both products
// accumulate in fp32), W: [E, k, n] bf16 row-major, out: [rows, n].
cudaError_t ExpertMma(const __nv_bfloat16* a, int num_halves, int64_t half_stride, int num_rows, int k,
                      const int32_t* expert_offsets, int num_experts, const __nv_bfloat16* weights, int n,
                      MmaEpilogue epilogue, float* out, cudaStream_t stream);
// The same with the output rounded to bf16 (the MLP's hidden activations in bf16 mode).
cudaError_t ExpertMma(const __nv_bfloat16* a, int num_halves, int64_t half_stride, int num_rows, int k,
                      const int32_t* expert_offsets, int num_experts, const __nv_bfloat16* weights, int n,
                      MmaEpilogue epilogue, __nv_bfloat16* out, cudaStream_t stream);

// Tile shapes for benchmarks (bench/expert_gemm_bench): one product (a single half, fp32
// out, no epilogue) with tile shape `variant` of ExpertMmaNumVariants().
int ExpertMmaNumVariants();
const char* ExpertMmaVariantName(int variant);
cudaError_t ExpertMmaVariant(int variant, const __nv_bfloat16* a, int num_rows, int k, const int32_t* expert_offsets,
                             int num_experts, const __nv_bfloat16* weights, int n, float* out, cudaStream_t stream);

}  // namespace mf::kernels
