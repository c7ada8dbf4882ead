// Routing steps as device functions, shared by the routing kernels (kernels/routing.cu)
// and the fused decode gate (kernels/decode_gate.cu), so both decide bit for bit alike.
#pragma once

#include <cstdint>

namespace mf::kernels {

constexpr int kMaxTopK = 32;

// One warp routes one token: softmax over `logits` [num_experts] (max and sum by
// shuffles), then top_k rounds of arg-max, ties to the lower expert; lane 0 writes the
// chosen experts and their probabilities (not renormalised) to experts/gates [top_k].
__device__ __forceinline__ void WarpSoftmaxTopK(const float* logits, int num_experts, int top_k, int32_t* experts,
                                                float* gates) {
  constexpr int kWarp = 32;
  const int lane = threadIdx.x % kWarp;
  float max_logit = -INFINITY;
  for (int e = lane; e < num_experts; e += kWarp) max_logit = fmaxf(max_logit, logits[e]);
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    max_logit = fmaxf(max_logit, __shfl_xor_sync(0xffffffffu, max_logit, offset));
  }
  float total = 0.0f;
  for (int e = lane; e < num_experts; e += kWarp) total += expf(logits[e] - max_logit);
  for (int offset = kWarp / 2; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);

  int chosen[kMaxTopK];
  for (int rank = 0; rank < top_k; ++rank) {
    // Each lane proposes its best untaken expert; the warp keeps the largest, lower index on ties.
    float best_logit = -INFINITY;
    int best_expert = num_experts;
    for (int e = lane; e < num_experts; e += kWarp) {
      bool taken = false;
      for (int r = 0; r < rank; ++r) taken |= chosen[r] == e;
      if (!taken && (logits[e] > best_logit || best_expert == num_experts)) {
        best_logit = logits[e];
        best_expert = e;
      }
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      const float other_logit = __shfl_xor_sync(0xffffffffu, best_logit, offset);
      const int other_expert = __shfl_xor_sync(0xffffffffu, best_expert, offset);
      if (other_logit > best_logit || (other_logit == best_logit && other_expert < best_expert)) {
        best_logit = other_logit;
        best_expert = other_expert;
      }
    }
    chosen[rank] = best_expert;
    if (lane == 0) {
      experts[rank] = best_expert;
      gates[rank] = expf(best_logit - max_logit) / total;
    }
  }
}

// The stable grouping of num_slots (<= blockDim.x) slots by expert, by the whole block: a
// counting sort in shared memory, one thread per slot. `token_experts` may be in shared or
// global memory; `staged_experts` [blockDim.x] and `starts` [num_experts + 1] are shared
// scratch. Writes expert_offsets [E + 1], slot_tokens [slots] and token_slots [slots].
__device__ __forceinline__ void BlockGroupSlots(const int32_t* token_experts, int num_slots, int top_k,
                                                int num_experts, int32_t* staged_experts, int32_t* starts,
                                                int32_t* expert_offsets, int32_t* slot_tokens,
                                                int32_t* token_slots) {
  const int slot = threadIdx.x;
  const int expert = slot < num_slots ? token_experts[slot] : -1;
  staged_experts[slot] = expert;
  for (int e = threadIdx.x; e <= num_experts; e += blockDim.x) starts[e] = 0;
  __syncthreads();
  if (expert >= 0) atomicAdd(&starts[expert + 1], 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int e = 1; e <= num_experts; ++e) starts[e] += starts[e - 1];
  }
  __syncthreads();
  for (int e = threadIdx.x; e <= num_experts; e += blockDim.x) expert_offsets[e] = starts[e];
  if (expert < 0) return;
  int rank = 0;  // earlier slots of the same expert: the sort is stable
  for (int earlier = 0; earlier < slot; ++earlier) rank += staged_experts[earlier] == expert;
  const int position = starts[expert] + rank;
  slot_tokens[position] = slot / top_k;
  token_slots[slot] = position;
}

}  // namespace mf::kernels
