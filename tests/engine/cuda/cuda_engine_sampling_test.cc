// Sampled requests through the engine on the CUDA backend, drawn on the device: the same
// seed and request give the same tokens and log-probabilities whatever else is in the
// batch, penalties follow the sequence, and its penalty slot comes back at the end.
#include <gtest/gtest.h>

#include <memory>

#include "engine/cuda/cuda_backend.h"
#include "engine/engine.h"
#include "tests/cuda_test_util.h"
#include "tests/test_util.h"

namespace mf {
namespace {

using testing::Collector;

std::unique_ptr<Engine> CudaEngine(bool device_sampling) {
  auto weights = LoadWeights(testing::ReferenceDir("molm-tiny"));
  EXPECT_TRUE(weights.ok()) << weights.status();
  auto backend = CudaBackend::Create(0, CudaPrecision::kBf16);
  EXPECT_TRUE(backend.ok()) << backend.status();
  KvCacheOptions cache;
  cache.block_size = 4;
  cache.num_blocks = 512;
  auto model = Model::Create(*weights, *std::move(backend), cache);
  EXPECT_TRUE(model.ok()) << model.status();
  EngineConfig config;
  config.scheduler.max_batch_tokens = 64;
  config.device_sampling = device_sampling;
  return std::make_unique<Engine>(*std::move(model), nullptr, config);
}

GenerationRequest Sampled(std::vector<int32_t> prompt, uint64_t seed, bool penalties) {
  GenerationRequest request;
  request.prompt = std::move(prompt);
  request.max_new_tokens = 24;
  request.ignore_eos = true;
  request.seed = seed;
  request.sampling.temperature = 0.9f;
  request.sampling.top_p = 0.9f;
  request.sampling.top_k = 40;
  request.sampling.num_logprobs = 3;
  request.sampling.chosen_logprob = true;
  if (penalties) {
    request.sampling.repetition_penalty = 1.3f;
    request.sampling.presence_penalty = 0.4f;
    request.sampling.frequency_penalty = 0.2f;
  }
  return request;
}

// Runs `target` alone or beside `companions` other sampled and greedy requests.
std::unique_ptr<Collector> RunBeside(Engine& engine, const GenerationRequest& target, int companions) {
  std::vector<std::unique_ptr<Collector>> others;
  for (int i = 0; i < companions; ++i) {
    others.push_back(std::make_unique<Collector>());
    GenerationRequest other = Sampled({5, 6, static_cast<int32_t>(7 + i)}, 1000 + i, i % 2 == 0);
    other.max_new_tokens = 10 + 3 * i;
    if (i % 3 == 2) other.sampling.temperature = 0;
    EXPECT_TRUE(engine.Submit(other, others.back()->Callback()).ok());
  }
  auto collector = std::make_unique<Collector>();
  EXPECT_TRUE(engine.Submit(target, collector->Callback()).ok());
  collector->Wait();
  for (auto& other : others) other->Wait();
  return collector;
}

TEST(CudaEngineSamplingTest, SeededDrawsDoNotDependOnTheBatch) {
  MF_SKIP_WITHOUT_GPU();
  auto engine = CudaEngine(/*device_sampling=*/true);
  for (bool penalties : {false, true}) {
    const GenerationRequest target = Sampled({11, 12, 13, 14, 15, 16, 17}, 42, penalties);
    auto alone = RunBeside(*engine, target, 0);
    ASSERT_TRUE(alone->finals.back().status.ok()) << alone->finals.back().status;
    ASSERT_EQ(alone->tokens.size(), 24u);
    ASSERT_EQ(alone->logprobs.size(), 24u);
    for (const SampleResult& sample : alone->logprobs) {
      EXPECT_LE(sample.logprob, 0.0f);
      ASSERT_EQ(sample.top.size(), 3u);
      EXPECT_GE(sample.top[0].logprob, sample.top[1].logprob);
    }
    for (int companions : {3, 7}) {
      auto crowded = RunBeside(*engine, target, companions);
      EXPECT_EQ(crowded->tokens, alone->tokens) << "penalties " << penalties << ", " << companions << " companions";
      // The draw depends on the row alone; the row itself does not, quite: bf16 expert
      // products take other kernels at other batch sizes, so logits move by ~1e-3.
      for (size_t i = 0; i < alone->logprobs.size() && i < crowded->logprobs.size(); ++i) {
        EXPECT_NEAR(crowded->logprobs[i].logprob, alone->logprobs[i].logprob, 2e-2);
      }
    }
    // Another seed, another continuation.
    GenerationRequest reseeded = target;
    reseeded.seed = 43;
    EXPECT_NE(RunBeside(*engine, reseeded, 0)->tokens, alone->tokens);
  }
  ASSERT_TRUE(engine->WaitUntilIdle(absl::Seconds(10)));
  EXPECT_EQ(engine->model().num_free_penalty_slots(), Model::kPenaltySlots);
  EXPECT_EQ(engine->stats().kv_blocks_used, 0);
}

// A repetition penalty of 1e4 on a greedy request forbids every token seen: the device
// applies the prompt's marks and counts what it generates.
TEST(CudaEngineSamplingTest, PenaltiesFollowTheSequence) {
  MF_SKIP_WITHOUT_GPU();
  auto engine = CudaEngine(/*device_sampling=*/true);
  GenerationRequest request = Sampled({3, 4, 5, 6}, 1, false);
  request.sampling.temperature = 0;
  request.sampling.repetition_penalty = 1e4f;
  request.max_new_tokens = 30;
  auto result = RunBeside(*engine, request, 2);
  ASSERT_TRUE(result->finals.back().status.ok()) << result->finals.back().status;
  std::vector<int32_t> seen = {3, 4, 5, 6};
  for (int32_t token : result->tokens) {
    EXPECT_EQ(std::count(seen.begin(), seen.end(), token), 0) << "token " << token << " repeated";
    seen.push_back(token);
  }
  // The host sampler, given the same logits, picks the same greedy tokens.
  auto host = CudaEngine(/*device_sampling=*/false);
  EXPECT_EQ(RunBeside(*host, request, 2)->tokens, result->tokens);
}

}  // namespace
}  // namespace mf
