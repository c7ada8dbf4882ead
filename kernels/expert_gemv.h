// Grouped expert products for decode-sized batches (up to 64 slots) on CUDA cores, in one
// launch: each expert's slot rows times its weight matrix, with the expert segments read
// on the device (no host round trip). A block owns a tile of 64 output columns of one
// expert and a slice of the reduction dimension; its 32 row streams (8 lanes x 16 bytes
// across the tile each) keep many weight bytes in flight and every weight byte is read
// once for all of the expert's slots. With several slices, each block leaves a partial
// sum and the last block of a column tile to finish (an atomic counter) adds the slices
// in a fixed order (deterministic) and applies the epilogue: gelu_new, or the gated
// combine of each token's slots into the residual stream, so a mixture's second product
// and its combine are one launch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace mf::kernels {

enum class GemvEpilogue { kNone, kGeluNew, kCombine };

struct ExpertGemvArgs {
  // Slot r's input row is x[gather[r]] (x[r] without gather), fp32 [*, k]; rounded to bf16
  // first when round_to_bf16 (bf16 mode), else used as is (fp32 times bf16 weights).
  const float* x = nullptr;
  const int32_t* gather = nullptr;
  bool round_to_bf16 = false;
  int num_slots = 0, k = 0;
  const int32_t* expert_offsets = nullptr;  // [E + 1]
  int num_experts = 0;
  const __nv_bfloat16* weights = nullptr;  // [E, k, n] row-major
  int n = 0;
  GemvEpilogue epilogue = GemvEpilogue::kNone;
  float* out = nullptr;  // [slots, n] (kNone, kGeluNew)
  // kCombine: residual[t] += Σ_r gates[t, r] · product of slot token_slots[t, r], in rank order.
  const float* gates = nullptr;         // [T, top_k]
  const int32_t* token_slots = nullptr;  // [T, top_k]
  int num_tokens = 0, top_k = 0;
  float* residual = nullptr;  // [T, n]
  float* workspace = nullptr;   // ExpertGemvWorkspaceFloats
  uint32_t* counters = nullptr;  // ExpertGemvCounters words, zero before; left at zero
};

// Whether ExpertGemv handles a depth of k (up to 16,384) and n output columns (a multiple of 8).
bool ExpertGemvSupports(int k, int n);

// Scratch floats and counter words ExpertGemv needs.
size_t ExpertGemvWorkspaceFloats(int num_slots, int num_experts, int k, int n);
int ExpertGemvCounters(int n);

cudaError_t ExpertGemv(const ExpertGemvArgs& args, cudaStream_t stream);

}  // namespace mf::kernels
