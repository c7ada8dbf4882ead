#include "engine/routing.h"

#include <algorithm>
#include <cmath>

namespace mf {

void SoftmaxTopK(const float* router_logits, int num_experts, int top_k, int32_t* experts, float* gates) {
  float max_logit = router_logits[0];
  for (int e = 1; e < num_experts; ++e) max_logit = std::max(max_logit, router_logits[e]);
  // Experts are few (tens); a stack buffer avoids allocating per token.
  constexpr int kMaxExperts = 1024;
  float probs[kMaxExperts];
  float total = 0;
  for (int e = 0; e < num_experts; ++e) {
    probs[e] = std::exp(router_logits[e] - max_logit);
    total += probs[e];
  }
  for (int e = 0; e < num_experts; ++e) probs[e] /= total;
  // Selection by repeated arg-max: strict '>' keeps the lower index on ties.
  bool taken[kMaxExperts] = {};
  for (int rank = 0; rank < top_k; ++rank) {
    int best = -1;
    for (int e = 0; e < num_experts; ++e) {
      if (!taken[e] && (best < 0 || probs[e] > probs[best])) best = e;
    }
    taken[best] = true;
    experts[rank] = best;
    gates[rank] = probs[best];
  }
}

ExpertGrouping GroupByExpert(const std::vector<int32_t>& token_experts, const std::vector<float>& token_gates,
                             int num_tokens, int top_k, int num_experts) {
  ExpertGrouping grouping;
  grouping.num_tokens = num_tokens;
  grouping.top_k = top_k;
  grouping.num_experts = num_experts;
  const int num_slots = num_tokens * top_k;
  grouping.expert_offsets.assign(num_experts + 1, 0);
  for (int slot = 0; slot < num_slots; ++slot) ++grouping.expert_offsets[token_experts[slot] + 1];
  for (int e = 0; e < num_experts; ++e) grouping.expert_offsets[e + 1] += grouping.expert_offsets[e];

  std::vector<int32_t> next_free(grouping.expert_offsets.begin(), grouping.expert_offsets.end() - 1);
  grouping.slot_tokens.resize(num_slots);
  grouping.slot_gates.resize(num_slots);
  grouping.token_slots.resize(num_slots);
  for (int slot = 0; slot < num_slots; ++slot) {  // token-major order keeps the sort stable
    const int32_t destination = next_free[token_experts[slot]]++;
    grouping.slot_tokens[destination] = slot / top_k;
    grouping.slot_gates[destination] = token_gates[slot];
    grouping.token_slots[slot] = destination;
  }
  return grouping;
}

}  // namespace mf
