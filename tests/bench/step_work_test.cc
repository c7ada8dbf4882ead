#include "bench/step_work.h"

#include <gtest/gtest.h>

namespace mf::bench {
namespace {

ModelConfig Molm350m4b() {
  ModelConfig config;
  config.vocab_size = 50295;
  config.n_embd = 1024;
  config.n_layer = 24;
  config.att_hidden = 1024;
  config.ffd_hidden = 2048;
  config.gating_size = 256;
  config.n_att_experts = 16;
  config.n_mlp_experts = 32;
  config.k_att = 2;
  config.k_mlp = 2;
  return config;
}

// Every layer's routing for `tokens` tokens, token t choosing experts (t % E, (t + 1) % E).
std::vector<std::array<MixtureRouting, 2>> Routing(const ModelConfig& config, int tokens) {
  std::vector<std::array<MixtureRouting, 2>> routing(static_cast<size_t>(config.n_layer));
  for (auto& layer : routing) {
    for (int mixture = 0; mixture < 2; ++mixture) {
      const int experts = static_cast<int>(mixture == 0 ? config.n_att_experts : config.n_mlp_experts);
      layer[static_cast<size_t>(mixture)] = {2, experts, {}, {}};
      for (int t = 0; t < tokens; ++t) {
        layer[static_cast<size_t>(mixture)].experts.push_back(t % experts);
        layer[static_cast<size_t>(mixture)].experts.push_back((t + 1) % experts);
      }
    }
  }
  return routing;
}

TEST(StepWorkTest, PrefillFlopsCountExpertsRoutersAndCausalAttention) {
  // Per layer: attention experts 2 x 2 x 2 x 1024^2, MLP experts 2 x 2 x 2 x 1024 x 2048,
  // routers 2 x 2 x 1024 x 256 + 2 x 256 x 48, attention 2 x 2 x 2 x 256.5 x 1024.
  const double per_layer = 8388608.0 + 16777216.0 + 1048576.0 + 24576.0 + 2101248.0;
  EXPECT_DOUBLE_EQ(PrefillFlopsPerToken(Molm350m4b(), 256.5), 24 * per_layer);
  ModelConfig projected = Molm350m4b();
  projected.n_head = 2;  // K/V projections appear
  EXPECT_DOUBLE_EQ(PrefillFlopsPerToken(projected, 256.5), 24 * (per_layer + 4.0 * 1024 * 1024));
}

TEST(StepWorkTest, DecodeFloorReadsEachChosenExpertOnce) {
  const ModelConfig config = Molm350m4b();
  const StoredSizes bf16{2, 4, 2};
  // One token: two experts of each mixture a layer.
  const DecodeStepBytes one = DecodeStepFloor(config, Routing(config, 1), 512, 1, bf16);
  EXPECT_DOUBLE_EQ(one.experts, 24 * (2 * 2.0 * 1024 * 1024 * 2 + 2 * 2.0 * 1024 * 2048 * 2));
  EXPECT_DOUBLE_EQ(one.lm_head, 50295.0 * 1024 * 2);
  // 513 rows read (the cached ones and the new one), one written, 24 layers of 1024 bf16 values.
  EXPECT_DOUBLE_EQ(one.kv_cache, (513 + 1) * 24 * 1024.0 * 2);
  // Routers (w1, b1, w2 of both mixtures), two LayerNorms a layer, the embedding row.
  const double routers = (256 * 1024 + 256 + 16 * 256) * 4.0 + (256 * 1024 + 256 + 32 * 256) * 4.0;
  EXPECT_DOUBLE_EQ(one.other, 24 * routers + 24 * 4 * 1024 * 4.0 + 1024 * 2.0);
  EXPECT_DOUBLE_EQ(one.total(), one.experts + one.kv_cache + one.lm_head + one.other);

  // 256 tokens choose every expert, each still read once: the whole model's experts.
  const DecodeStepBytes full = DecodeStepFloor(config, Routing(config, 256), 256 * 512, 256, bf16);
  EXPECT_DOUBLE_EQ(full.experts, 24 * (16 * 2.0 * 1024 * 1024 * 2 + 32 * 2.0 * 1024 * 2048 * 2));
  EXPECT_NEAR(full.kv_cache / 1e9, 6.46, 0.01);
}

}  // namespace
}  // namespace mf::bench
