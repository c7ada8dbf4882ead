#include "engine/routing.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace mf {
namespace {

TEST(SoftmaxTopKTest, GatesAreSoftmaxProbabilitiesNotRenormalised) {
  const float logits[4] = {1.0f, 3.0f, 0.5f, 2.0f};
  int32_t experts[2];
  float gates[2];
  SoftmaxTopK(logits, 4, 2, experts, gates);
  const double total = std::exp(1.0) + std::exp(3.0) + std::exp(0.5) + std::exp(2.0);
  EXPECT_EQ(experts[0], 1);
  EXPECT_EQ(experts[1], 3);
  EXPECT_NEAR(gates[0], std::exp(3.0) / total, 1e-6);
  EXPECT_NEAR(gates[1], std::exp(2.0) / total, 1e-6);
  EXPECT_LT(gates[0] + gates[1], 0.95f);
}

TEST(SoftmaxTopKTest, TiesGoToTheLowerExpert) {
  const float logits[5] = {0.0f, 2.0f, 1.0f, 2.0f, 2.0f};
  int32_t experts[3];
  float gates[3];
  SoftmaxTopK(logits, 5, 3, experts, gates);
  EXPECT_EQ(experts[0], 1);
  EXPECT_EQ(experts[1], 3);
  EXPECT_EQ(experts[2], 4);
}

TEST(GroupByExpertTest, StableSegmentsWithEmptyExperts) {
  // 3 tokens, top-2, 4 experts: expert 2 is never chosen.
  const std::vector<int32_t> experts = {3, 0, 0, 1, 3, 0};
  const std::vector<float> gates = {0.5f, 0.2f, 0.6f, 0.1f, 0.7f, 0.3f};
  const ExpertGrouping grouping = GroupByExpert(experts, gates, 3, 2, 4);
  EXPECT_EQ(grouping.expert_offsets, (std::vector<int32_t>{0, 3, 4, 4, 6}));
  EXPECT_EQ(grouping.slot_tokens, (std::vector<int32_t>{0, 1, 2, 1, 0, 2}));
  EXPECT_EQ(grouping.slot_gates, (std::vector<float>{0.2f, 0.6f, 0.3f, 0.1f, 0.5f, 0.7f}));
  EXPECT_EQ(grouping.expert_load(2), 0);
  EXPECT_EQ(grouping.expert_load(0), 3);
}

TEST(GroupByExpertTest, TokenSlotsInvertTheGrouping) {
  std::mt19937 rng(7);
  const int num_tokens = 257, top_k = 3, num_experts = 11;
  std::vector<int32_t> experts;
  std::vector<float> gates;
  for (int t = 0; t < num_tokens; ++t) {
    std::vector<int32_t> pool(num_experts);
    for (int e = 0; e < num_experts; ++e) pool[e] = e;
    std::shuffle(pool.begin(), pool.end(), rng);
    for (int r = 0; r < top_k; ++r) {
      experts.push_back(pool[r]);
      gates.push_back(static_cast<float>(t * 10 + r));
    }
  }
  const ExpertGrouping grouping = GroupByExpert(experts, gates, num_tokens, top_k, num_experts);
  ASSERT_EQ(grouping.expert_offsets.back(), num_tokens * top_k);
  for (int slot = 0; slot < num_tokens * top_k; ++slot) {
    const int32_t grouped = grouping.token_slots[slot];
    EXPECT_EQ(grouping.slot_tokens[grouped], slot / top_k);
    EXPECT_EQ(grouping.slot_gates[grouped], gates[slot]);
    // The slot lies in its expert's segment.
    EXPECT_GE(grouped, grouping.expert_offsets[experts[slot]]);
    EXPECT_LT(grouped, grouping.expert_offsets[experts[slot] + 1]);
  }
  for (int e = 0; e < num_experts; ++e) {  // tokens ascend within each segment
    for (int s = grouping.expert_offsets[e] + 1; s < grouping.expert_offsets[e + 1]; ++s) {
      EXPECT_LT(grouping.slot_tokens[s - 1], grouping.slot_tokens[s]);
    }
  }
}

}  // namespace
}  // namespace mf
