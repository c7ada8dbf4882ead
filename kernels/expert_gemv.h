// Grouped expert products for decode-sized batches: each expert's rows times its weight
// matrix, with the expert segments read on the device, so the host needs no copy of the
// routing and nothing synchronises. Blocks split both the output columns (8 per thread,
// 16-byte weight loads) and the reduction dimension (partial sums reduced in a fixed
// order, so results are deterministic); a block's weight tile is read from memory once
// and reused from L1 for every 8 rows of its expert. CUDA cores, no tensor cores: for
// batches of a few dozen slots; larger ones go to cuBLAS on tensor cores.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace mf::kernels {

// Whether ExpertGemv handles `n` output columns (a multiple of 8).
bool ExpertGemvSupports(int n);

// Scratch floats ExpertGemv needs.
size_t ExpertGemvWorkspaceFloats(int num_halves, int num_slots, int k, int n);

// For each expert e and slot r of its segment [offsets[e], offsets[e+1]):
// out[r, :] = a_r · W[e], where a_r = x[gather[r]] (x[r] without gather), fp32 [*, k], taken
// as bf16, plus (num_halves == 2, exact mode) its bf16 remainder in a second product:
// the same numbers as splitting on the host and summing both halves. W: [E, k, n] bf16
// row-major; out: [slots, n] fp32, through gelu_new when asked.
cudaError_t ExpertGemv(const float* x, const int32_t* gather, int num_halves, int num_slots, int k,
                       const int32_t* expert_offsets, int num_experts, const __nv_bfloat16* weights, int n,
                       bool gelu_new, float* workspace, float* out, cudaStream_t stream);

}  // namespace mf::kernels
