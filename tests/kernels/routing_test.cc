// Device routing against the CPU reference of engine/routing.cc.
#include "kernels/routing.h"

#include <gtest/gtest.h>

#include <random>

#include "engine/routing.h"
#include "tests/cuda_test_util.h"

namespace mf {
namespace {

using testing::DeviceBuffer;

struct RoutingShape {
  int num_tokens, num_experts, top_k;
  bool skewed;  // most tokens prefer expert 0, some experts get nothing
};

void PrintTo(const RoutingShape& shape, std::ostream* os) {
  *os << shape.num_tokens << " tokens, " << shape.num_experts << " experts, top-" << shape.top_k
      << (shape.skewed ? ", skewed" : "");
}

class DeviceRoutingTest : public ::testing::TestWithParam<RoutingShape> {};

TEST_P(DeviceRoutingTest, MatchesCpuReference) {
  MF_SKIP_WITHOUT_GPU();
  const RoutingShape shape = GetParam();
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(static_cast<size_t>(shape.num_tokens) * shape.num_experts);
  for (size_t i = 0; i < logits.size(); ++i) {
    const int expert = static_cast<int>(i % shape.num_experts);
    logits[i] = normal(rng) + (shape.skewed ? (expert == 0 ? 8.0f : expert >= shape.num_experts / 2 ? -30.0f : 0) : 0);
  }
  const size_t num_slots = static_cast<size_t>(shape.num_tokens) * shape.top_k;
  std::vector<int32_t> cpu_experts(num_slots);
  std::vector<float> cpu_gates(num_slots);
  for (int t = 0; t < shape.num_tokens; ++t) {
    SoftmaxTopK(&logits[static_cast<size_t>(t) * shape.num_experts], shape.num_experts, shape.top_k,
                &cpu_experts[static_cast<size_t>(t) * shape.top_k], &cpu_gates[static_cast<size_t>(t) * shape.top_k]);
  }
  const ExpertGrouping cpu = GroupByExpert(cpu_experts, cpu_gates, shape.num_tokens, shape.top_k, shape.num_experts);

  DeviceBuffer<float> device_logits(logits);
  DeviceBuffer<int32_t> experts(num_slots), offsets(shape.num_experts + 1), slot_tokens(num_slots),
      token_slots(num_slots);
  DeviceBuffer<float> gates(num_slots);
  const size_t workspace_bytes = kernels::GroupByExpertWorkspaceBytes(static_cast<int>(num_slots), shape.num_experts);
  DeviceBuffer<char> workspace(workspace_bytes);
  ASSERT_EQ(kernels::SoftmaxTopK(device_logits.get(), shape.num_tokens, shape.num_experts, shape.top_k, experts.get(),
                                 gates.get(), nullptr),
            cudaSuccess);
  ASSERT_EQ(kernels::GroupByExpert(experts.get(), shape.num_tokens, shape.top_k, shape.num_experts, offsets.get(),
                                   slot_tokens.get(), token_slots.get(), workspace.get(), workspace_bytes, nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

  EXPECT_EQ(experts.ToHost(), cpu_experts);
  const std::vector<float> device_gates = gates.ToHost();
  for (size_t i = 0; i < num_slots; ++i) EXPECT_NEAR(device_gates[i], cpu_gates[i], 1e-6f) << i;
  EXPECT_EQ(offsets.ToHost(), cpu.expert_offsets);
  EXPECT_EQ(slot_tokens.ToHost(), cpu.slot_tokens);
  EXPECT_EQ(token_slots.ToHost(), cpu.token_slots);
}

INSTANTIATE_TEST_SUITE_P(Shapes, DeviceRoutingTest,
                         ::testing::Values(RoutingShape{1, 16, 2, false}, RoutingShape{7, 4, 2, false},
                                           RoutingShape{513, 32, 4, false}, RoutingShape{4096, 16, 2, false},
                                           RoutingShape{1000, 32, 2, true}, RoutingShape{0, 8, 2, false},
                                           // the single-block sort of small batches, skewed, and at its limit
                                           RoutingShape{400, 32, 2, true}, RoutingShape{512, 16, 2, false}));

}  // namespace
}  // namespace mf
