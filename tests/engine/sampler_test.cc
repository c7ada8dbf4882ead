#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

namespace mf {
namespace {

std::vector<float> Logits() { return {2.0f, 1.0f, 0.5f, 3.0f, -1.0f}; }

std::map<int32_t, int> Histogram(const SamplingParams& params, int draws, uint64_t seed = 1) {
  std::mt19937_64 rng(seed);
  TokenHistory history;
  std::map<int32_t, int> counts;
  for (int i = 0; i < draws; ++i) {
    std::vector<float> logits = Logits();
    ++counts[Sample(logits, params, history, rng).token];
  }
  return counts;
}

TEST(SamplerTest, GreedyPicksTheLargestLogit) {
  SamplingParams params;
  params.temperature = 0;
  EXPECT_EQ(Histogram(params, 10), (std::map<int32_t, int>{{3, 10}}));
}

TEST(SamplerTest, TopKKeepsOnlyTheKMostLikely) {
  SamplingParams params;
  params.top_k = 2;
  const auto counts = Histogram(params, 2000);
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_TRUE(counts.count(3) && counts.count(0));
  // p(3) / p(0) = e^(3-2)
  EXPECT_NEAR(static_cast<double>(counts.at(3)) / counts.at(0), std::exp(1.0), 0.35);
}

TEST(SamplerTest, TopPKeepsTheSmallestSetReachingTheMass) {
  // Softmax of the logits: 0.638 (3), 0.235 (0), 0.086 (1), 0.052 (2), 0.012 (4).
  SamplingParams params;
  params.top_p = 0.8f;  // {3, 0} reach 0.873
  auto counts = Histogram(params, 1000);
  EXPECT_EQ(std::set<int32_t>({3, 0}), (std::set<int32_t>{counts.begin()->first, std::next(counts.begin())->first}));
  EXPECT_EQ(counts.size(), 2u);
  params.top_p = 0.5f;  // {3} alone reaches 0.638
  EXPECT_EQ(Histogram(params, 100), (std::map<int32_t, int>{{3, 100}}));
}

TEST(SamplerTest, MinPDropsTokensFarBelowTheTop) {
  SamplingParams params;
  params.min_p = 0.1f;  // keeps p >= 0.0638: tokens 3, 0, 1
  const auto counts = Histogram(params, 3000);
  EXPECT_EQ(counts.size(), 3u);
  EXPECT_FALSE(counts.count(2) || counts.count(4));
}

TEST(SamplerTest, SameSeedSameDraws) {
  SamplingParams params;
  params.temperature = 1.5f;
  std::vector<int32_t> first, second, other;
  for (auto [seed, out] : {std::pair{7ull, &first}, std::pair{7ull, &second}, std::pair{8ull, &other}}) {
    std::mt19937_64 rng(seed);
    for (int i = 0; i < 50; ++i) {
      std::vector<float> logits = Logits();
      out->push_back(Sample(logits, params, TokenHistory{}, rng).token);
    }
  }
  EXPECT_EQ(first, second);
  EXPECT_NE(first, other);
}

TEST(SamplerTest, PenaltiesChangeTheLogitsAsSpecified) {
  TokenHistory history;
  history.Add(3, /*is_output=*/false);  // prompt token
  history.Add(0, true);
  history.Add(0, true);
  history.Add(4, true);
  SamplingParams params;
  params.temperature = 0;
  params.repetition_penalty = 2.0f;
  params.presence_penalty = 0.5f;
  params.frequency_penalty = 0.25f;
  std::vector<float> logits = Logits();
  std::mt19937_64 rng(1);
  Sample(logits, params, history, rng);
  EXPECT_FLOAT_EQ(logits[3], 1.5f);                 // 3 / 2
  EXPECT_FLOAT_EQ(logits[0], 2.0f / 2 - 0.5f - 0.5f);  // /2, presence, 2 x frequency
  EXPECT_FLOAT_EQ(logits[4], -2.0f - 0.5f - 0.25f);    // x2 (negative), presence, frequency
  EXPECT_FLOAT_EQ(logits[1], 1.0f);
}

TEST(SamplerTest, LogprobsComeFromTheRawLogits) {
  SamplingParams params;
  params.temperature = 0;
  params.num_logprobs = 2;
  params.repetition_penalty = 3.0f;
  TokenHistory history;
  history.Add(3, false);
  std::vector<float> logits = Logits();
  std::mt19937_64 rng(1);
  const SampleResult result = Sample(logits, params, history, rng);
  double total = 0;
  for (float logit : Logits()) total += std::exp(logit);
  EXPECT_EQ(result.token, 0);  // 3 was penalised to 1.0
  EXPECT_NEAR(result.logprob, 2.0 - std::log(total), 1e-5);
  ASSERT_EQ(result.top.size(), 2u);
  EXPECT_EQ(result.top[0].token, 3);
  EXPECT_NEAR(result.top[0].logprob, 3.0 - std::log(total), 1e-5);
  EXPECT_EQ(result.top[1].token, 0);
}

}  // namespace
}  // namespace mf
