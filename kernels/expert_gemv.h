// Grouped expert products for small batches (decode): each expert's rows times its
// weight matrix, with the expert segments read on the device, so the host needs no
// copy of the routing and nothing synchronises. Blocks split both the output
// columns and the reduction dimension (partial sums reduced in a fixed order, so
// results are deterministic); weights are read once per 8 rows, so this is for
// batches of a few dozen slots, and larger ones go to cuBLAS.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace mf::kernels {

// Scratch floats ExpertGemv needs.
size_t ExpertGemvWorkspaceFloats(int num_halves, int num_slots, int k, int n);

// For each half h and expert e: out[h][r, :] = in[h][r, :] · W[e] for rows r of e's
// segment [offsets[e], offsets[e+1]). in: [halves, slots, k] bf16; W: [E, k, n] bf16
// row-major; out: [halves, slots, n] fp32.
cudaError_t ExpertGemv(const __nv_bfloat16* in, int num_halves, int num_slots, int k, const int32_t* expert_offsets,
                       int num_experts, const __nv_bfloat16* weights, int n, float* workspace, float* out,
                       cudaStream_t stream);

}  // namespace mf::kernels
