#include "engine/model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "engine/cpu/cpu_backend.h"
#include "engine/generator.h"
#include "tests/test_util.h"

namespace mf {
namespace {

using ::testing::HasSubstr;

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) worst = std::max(worst, std::abs(double(a[i]) - b[i]));
  return worst;
}

// Decoding through the KV cache gives what recomputing the whole sequence gives.
TEST(ModelTest, CachedDecodingEqualsFullRecomputation) {
  for (const std::string& fixture : testing::ReferenceModelNames()) {
    auto model = testing::LoadReferenceModel(fixture);
    const std::vector<int32_t> prompt = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3};
    GenerateOptions options;
    options.max_new_tokens = 24;
    auto generated = GenerateGreedy(*model, {prompt}, options);
    ASSERT_TRUE(generated.ok()) << generated.status();
    const GenerationResult& result = generated->front();

    std::vector<int32_t> full = prompt;
    full.insert(full.end(), result.tokens.begin(), result.tokens.end() - 1);
    const std::vector<float> recomputed = testing::PromptLogits(*model, full);
    const int64_t vocab = model->config().vocab_size;
    ASSERT_EQ(result.step_logits.size(), result.tokens.size() - 1);
    for (size_t step = 0; step < result.step_logits.size(); ++step) {
      const size_t position = prompt.size() + step;
      const std::vector<float> row(recomputed.begin() + position * vocab, recomputed.begin() + (position + 1) * vocab);
      EXPECT_LE(MaxAbsDiff(result.step_logits[step], row), 1e-4) << fixture << " step " << step;
      EXPECT_EQ(ArgMax(row.data(), vocab), result.tokens[step + 1]) << fixture << " step " << step;
    }
  }
}

// A sequence's logits do not depend on what else shares its batch.
TEST(ModelTest, BatchCompositionDoesNotChangeLogits) {
  auto model = testing::LoadReferenceModel("projected-kv");
  const std::vector<std::vector<int32_t>> prompts = {{7}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {300, 200, 100}};
  std::vector<std::vector<float>> alone;
  for (const auto& prompt : prompts) alone.push_back(testing::PromptLogits(*model, prompt));

  std::vector<std::vector<int32_t>> tables;
  ForwardBatch batch;
  for (const auto& prompt : prompts) {
    tables.push_back(*model->kv_cache().allocator().Allocate(model->kv_cache().BlocksFor(prompt.size())));
  }
  for (size_t i = 0; i < prompts.size(); ++i) batch.sequences.push_back({prompts[i], 0, tables[i], true});
  auto together = model->Forward(batch);
  ASSERT_TRUE(together.ok()) << together.status();
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto begin = together->logits.begin() + together->logit_row_offsets[i] * together->vocab_size;
    const auto end = together->logits.begin() + together->logit_row_offsets[i + 1] * together->vocab_size;
    EXPECT_LE(MaxAbsDiff(std::vector<float>(begin, end), alone[i]), 1e-4) << "prompt " << i;
  }
  for (const auto& table : tables) model->kv_cache().allocator().Release(table);
}

// Chunks that do not ask for full logits get only their rows' argmax; the full rows of
// the others come back compacted, in row order.
TEST(ModelTest, ArgmaxOnlyRowsSkipTheirLogits) {
  auto model = testing::LoadReferenceModel("molm-tiny");
  const std::vector<std::vector<int32_t>> prompts = {{7, 8}, {1, 2, 3, 4}, {300, 200, 100}, {42}};
  const std::vector<bool> full = {false, true, false, true};
  std::vector<std::vector<int32_t>> tables;
  ForwardBatch batch;
  for (size_t i = 0; i < prompts.size(); ++i) {
    tables.push_back(*model->kv_cache().allocator().Allocate(model->kv_cache().BlocksFor(prompts[i].size())));
    batch.sequences.push_back({prompts[i], 0, tables[i], /*all_logits=*/i == 1, full[i]});
  }
  auto output = model->Forward(batch);
  ASSERT_TRUE(output.ok()) << output.status();
  const int64_t vocab = output->vocab_size;
  ASSERT_EQ(output->logits.size(), static_cast<size_t>(5 * vocab));  // 4 rows of prompt 1, 1 of prompt 3
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::vector<float> alone = testing::PromptLogits(*model, prompts[i]);
    for (int row = output->logit_row_offsets[i]; row < output->logit_row_offsets[i + 1]; ++row) {
      const int64_t position = i == 1 ? row - output->logit_row_offsets[i] : static_cast<int64_t>(prompts[i].size()) - 1;
      const float* expected = alone.data() + position * vocab;
      EXPECT_EQ(output->argmax[static_cast<size_t>(row)], ArgMax(expected, vocab)) << "prompt " << i << " row " << row;
      ASSERT_EQ(output->has_full_logits(row), full[i]);
      if (full[i]) {
        EXPECT_LE(MaxAbsDiff(std::vector<float>(output->logits_row(row), output->logits_row(row) + vocab),
                             std::vector<float>(expected, expected + vocab)),
                  1e-4);
      }
    }
  }
  for (const auto& table : tables) model->kv_cache().allocator().Release(table);
}

TEST(ModelTest, RejectsBadBatchesNamingTheProblem) {
  auto model = testing::LoadReferenceModel("molm-tiny", /*num_blocks=*/4, /*block_size=*/4);
  const std::vector<int32_t> table = {0, 1};
  const std::vector<int32_t> good = {1, 2, 3};
  const std::vector<int32_t> out_of_range = {1, 512};
  const std::vector<int32_t> too_long = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  const std::vector<int32_t> bad_table = {0, 7};

  EXPECT_THAT(model->Forward(ForwardBatch{}).status().message(), HasSubstr("no sequences"));
  EXPECT_THAT(model->Forward(ForwardBatch{{{out_of_range, 0, table}}}).status().message(),
              HasSubstr("token id 512 out of range [0, 512)"));
  EXPECT_THAT(model->Forward(ForwardBatch{{{too_long, 0, table}}}).status().message(),
              HasSubstr("block table of 2 blocks cannot hold 9 tokens"));
  EXPECT_THAT(model->Forward(ForwardBatch{{{good, 0, bad_table}}}).status().message(),
              HasSubstr("block id 7 out of range"));
  EXPECT_THAT(model->Forward(ForwardBatch{{{{}, 0, table}}}).status().message(), HasSubstr("no new tokens"));
  SequenceChunk sampled{good, 0, table};
  sampled.device_sample = SampleRowParams{};
  EXPECT_THAT(model->Forward(ForwardBatch{{sampled}}).status().message(),
              HasSubstr("the cpu backend does not sample on the device"));
  EXPECT_TRUE(model->Forward(ForwardBatch{{{good, 0, table}}}).ok());
}

TEST(ModelTest, CacheExhaustionIsAnErrorAndLeaksNoBlocks) {
  auto model = testing::LoadReferenceModel("molm-tiny", /*num_blocks=*/3, /*block_size=*/4);
  GenerateOptions options;
  options.max_new_tokens = 20;  // 3 + 20 tokens need 6 blocks
  auto result = GenerateGreedy(*model, {{1, 2, 3}}, options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(model->kv_cache().allocator().num_used_blocks(), 0);
}

TEST(ModelTest, ReportsRoutingForEveryTokenAndLayer) {
  auto model = testing::LoadReferenceModel("pruned");
  const std::vector<int32_t> prompt = {4, 8, 15, 16, 23, 42};
  auto table = *model->kv_cache().allocator().Allocate(1);
  ForwardBatch batch{{{prompt, 0, table}}, /*record_routing=*/true};
  auto output = model->Forward(batch);
  ASSERT_TRUE(output.ok());
  ASSERT_EQ(output->routing.size(), static_cast<size_t>(model->config().n_layer));
  for (size_t layer = 0; layer < output->routing.size(); ++layer) {
    for (Mixture mixture : {Mixture::kAttention, Mixture::kMlp}) {
      const MixtureRouting& routing = output->routing[layer][static_cast<int>(mixture)];
      EXPECT_EQ(routing.num_experts, model->num_experts(static_cast<int>(layer), mixture));
      ASSERT_EQ(routing.experts.size(), prompt.size() * routing.top_k);
      for (size_t i = 0; i < routing.experts.size(); ++i) {
        EXPECT_GE(routing.experts[i], 0);
        EXPECT_LT(routing.experts[i], routing.num_experts);
        if (i % routing.top_k > 0) {
          EXPECT_LE(routing.gates[i], routing.gates[i - 1]);  // falling probability
        }
      }
    }
  }
  model->kv_cache().allocator().Release(table);
}

TEST(RandomWeightsTest, DeterministicRealShapeModelRuns) {
  auto config = LoadModelConfig(testing::ReferenceDir("projected-kv") + "/config.json");
  ASSERT_TRUE(config.ok());
  const ModelWeights a = RandomWeights(*config, 11);
  const ModelWeights b = RandomWeights(*config, 11);
  const ModelWeights c = RandomWeights(*config, 12);
  ASSERT_EQ(a.layers.size(), static_cast<size_t>(config->n_layer));
  EXPECT_EQ(a.layers[1].mlp.experts_in.shape, (std::vector<int64_t>{4, 48, 96}));
  EXPECT_EQ(0, std::memcmp(a.lm_head.data, b.lm_head.data, a.lm_head.num_bytes()));
  EXPECT_NE(0, std::memcmp(a.lm_head.data, c.lm_head.data, a.lm_head.num_bytes()));
  EXPECT_FALSE(a.layers[0].k_weight.empty());

  KvCacheOptions options;
  options.num_blocks = 8;
  auto model = Model::Create(a, MakeCpuBackend(), options);
  ASSERT_TRUE(model.ok());
  GenerateOptions generate;
  generate.max_new_tokens = 5;
  auto first = GenerateGreedy(**model, {{1, 2, 3}}, generate);
  auto second = GenerateGreedy(**model, {{1, 2, 3}}, generate);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->front().tokens, second->front().tokens);
  EXPECT_EQ(first->front().tokens.size(), 5u);
}

}  // namespace
}  // namespace mf
