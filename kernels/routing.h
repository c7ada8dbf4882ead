// Device routing: softmax + top-k per token and the stable grouping of token
// slots by expert, producing the arrays of engine/routing.h's ExpertGrouping.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace mf::kernels {

// router_logits [T, E] f32 -> experts/gates [T, k], falling probability, ties to
// the lower expert, gates not renormalised. E <= 1024, k <= 32.
cudaError_t SoftmaxTopK(const float* router_logits, int num_tokens, int num_experts, int top_k, int32_t* experts,
                        float* gates, cudaStream_t stream);

// Scratch bytes GroupByExpert needs for `num_slots` slots and `num_experts` experts.
size_t GroupByExpertWorkspaceBytes(int num_slots, int num_experts);

// Stable grouping of the T*k slots by expert. Outputs: expert_offsets [E+1],
// slot_tokens [T*k], token_slots [T*k]. `workspace` holds the returned number of bytes.
cudaError_t GroupByExpert(const int32_t* token_experts, int num_tokens, int top_k, int num_experts,
                          int32_t* expert_offsets, int32_t* slot_tokens, int32_t* token_slots, void* workspace,
                          size_t workspace_bytes, cudaStream_t stream);

}  // namespace mf::kernels
