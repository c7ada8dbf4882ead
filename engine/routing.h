// Routing: top-k expert selection per token and the grouping of token slots by
// expert. The plan's layout is shared by every backend (the CUDA backend builds
// the same arrays on the device and is tested against these functions).
#pragma once

#include <cstdint>
#include <vector>

namespace mf {

// Softmax over one token's router logits, then the k most probable experts
// (ties: lower index first). Gates are the probabilities, not renormalised.
// Writes `top_k` experts and gates in falling probability.
void SoftmaxTopK(const float* router_logits, int num_experts, int top_k, int32_t* experts, float* gates);

// Token slots (token t, rank r) grouped by expert with a stable counting sort, so
// each expert's segment lists its tokens in batch order.
struct ExpertGrouping {
  int num_tokens = 0;
  int top_k = 0;
  int num_experts = 0;
  std::vector<int32_t> expert_offsets;  // [E + 1]: expert e owns slots [offsets[e], offsets[e+1])
  std::vector<int32_t> slot_tokens;     // [T * k]: the token each grouped slot belongs to
  std::vector<float> slot_gates;        // [T * k]: that slot's gate
  std::vector<int32_t> token_slots;     // [T, k]: where token t's r-th choice landed

  int32_t expert_load(int expert) const { return expert_offsets[expert + 1] - expert_offsets[expert]; }
};

ExpertGrouping GroupByExpert(const std::vector<int32_t>& token_experts, const std::vector<float>& token_gates,
                             int num_tokens, int top_k, int num_experts);

}  // namespace mf
