#include "engine/sampling/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
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
    ++counts[Sample(logits, params, history, rng)->token];
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
      out->push_back(Sample(logits, params, TokenHistory{}, rng)->token);
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
  ASSERT_TRUE(Sample(logits, params, history, rng).ok());
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
  const SampleResult result = *Sample(logits, params, history, rng);
  double total = 0;
  for (float logit : Logits()) total += std::exp(logit);
  EXPECT_EQ(result.token, 0);  // 3 was penalised to 1.0
  EXPECT_NEAR(result.logprob, 2.0 - std::log(total), 1e-5);
  ASSERT_EQ(result.top.size(), 2u);
  EXPECT_EQ(result.top[0].token, 3);
  EXPECT_NEAR(result.top[0].logprob, 3.0 - std::log(total), 1e-5);
  EXPECT_EQ(result.top[1].token, 0);
}

// What top-k, min-p and top-p keep, the plain way: the whole vocabulary sorted most likely
// first (ties to the lower id), then each filter in turn.
std::vector<int32_t> ReferenceSupport(const std::vector<float>& logits, const SamplingParams& params) {
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  std::vector<std::pair<float, int32_t>> ranked;  // (logit, token)
  for (size_t token = 0; token < logits.size(); ++token) ranked.emplace_back(logits[token], static_cast<int32_t>(token));
  std::sort(ranked.begin(), ranked.end(),
            [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
  if (params.top_k > 0 && static_cast<size_t>(params.top_k) < ranked.size()) ranked.resize(static_cast<size_t>(params.top_k));
  if (params.min_p > 0) {
    const double floor = std::log(static_cast<double>(params.min_p));  // of the weight relative to the top one
    std::erase_if(ranked, [&](const auto& c) { return (c.first - max_logit) / params.temperature < floor; });
  }
  std::vector<double> weights;
  double total = 0;
  for (const auto& c : ranked) {
    weights.push_back(std::exp(static_cast<double>(c.first - max_logit) / params.temperature));
    total += weights.back();
  }
  size_t keep = ranked.size();
  if (params.top_p < 1.0f) {
    double mass = 0;
    keep = 0;
    while (keep < ranked.size() && mass < params.top_p) mass += weights[keep++] / total;
  }
  std::vector<int32_t> tokens;
  for (size_t i = 0; i < keep; ++i) tokens.push_back(ranked[i].second);
  std::sort(tokens.begin(), tokens.end());
  return tokens;
}

// Logits on a grid, so that many tokens tie and tie-breaking by id decides. A small
// spread is an untrained model: nearly flat, top-p keeps most of the vocabulary.
std::vector<float> GridLogits(int vocab, uint64_t seed, float spread = 2.5f, float step = 0.25f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> logit(0.0f, spread);
  std::vector<float> logits(static_cast<size_t>(vocab));
  for (float& value : logits) value = std::round(logit(rng) / step) * step;
  return logits;
}

TEST(SamplerTest, SupportMatchesAFullSortOnLargeVocabulariesWithTies) {
  std::mt19937_64 rng(2024);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (int trial = 0; trial < 200; ++trial) {
    const int vocab = trial % 4 == 0 ? 50295 : 1 + static_cast<int>(rng() % 5000);
    const bool flat = trial % 5 == 1;
    const std::vector<float> logits = flat ? GridLogits(vocab, rng(), 0.05f, 0.01f) : GridLogits(vocab, rng());
    SamplingParams params;
    params.temperature = 0.3f + 1.5f * unit(rng);
    const int filters = trial % 8;  // every combination of top-k, min-p and top-p
    if (filters & 1) params.top_k = 1 + static_cast<int>(rng() % (trial % 3 == 0 ? 3000 : 60));
    if (filters & 2) params.min_p = 0.3f * unit(rng);
    if (filters & 4) params.top_p = 0.05f + 0.94f * unit(rng);
    SCOPED_TRACE(::testing::Message() << "trial " << trial << (flat ? " (flat)" : "") << ": vocab " << vocab << ", T " << params.temperature
                                      << ", top_k " << params.top_k << ", min_p " << params.min_p << ", top_p "
                                      << params.top_p);
    const std::vector<int32_t> support = SampleSupport(logits, params), reference = ReferenceSupport(logits, params);
    EXPECT_EQ(support, reference);
    if (support != reference) {
      std::vector<int32_t> extra, missing;
      std::set_difference(support.begin(), support.end(), reference.begin(), reference.end(), std::back_inserter(extra));
      std::set_difference(reference.begin(), reference.end(), support.begin(), support.end(), std::back_inserter(missing));
      std::cerr << "sizes " << support.size() << " vs " << reference.size() << ", extra";
      for (int32_t t : extra) std::cerr << " " << t << ":" << logits[t];
      std::cerr << "; missing";
      for (int32_t t : missing) std::cerr << " " << t << ":" << logits[t];
      std::cerr << "\n";
    }
  }
}

TEST(SamplerTest, DrawsFollowTheFilteredDistributionOnALargeVocabulary) {
  // 2,000 draws from top-p 0.9 over a 50k vocabulary: every draw is in the support, and the
  // most likely token's share matches its renormalised probability.
  const std::vector<float> logits = GridLogits(50295, 5);
  SamplingParams params;
  params.temperature = 0.5f;
  params.top_p = 0.9f;
  const std::vector<int32_t> support = ReferenceSupport(logits, params);
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  double kept_mass = 0;
  for (int32_t token : support) kept_mass += std::exp((logits[static_cast<size_t>(token)] - max_logit) / 0.5);
  const int32_t top_token = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  std::mt19937_64 rng(9);
  int top_draws = 0;
  constexpr int kDraws = 2000;
  for (int i = 0; i < kDraws; ++i) {
    std::vector<float> copy = logits;
    const int32_t token = Sample(copy, params, TokenHistory{}, rng)->token;
    ASSERT_TRUE(std::binary_search(support.begin(), support.end(), token)) << token;
    top_draws += token == top_token;
  }
  const double expected = 1.0 / kept_mass;  // the top token's weight is exp(0)
  EXPECT_NEAR(static_cast<double>(top_draws) / kDraws, expected, 4 * std::sqrt(expected * (1 - expected) / kDraws));
}

TEST(SamplerTest, LogprobsOnALargeVocabularyMatchADoubleLogSoftmax) {
  const std::vector<float> logits = GridLogits(50295, 11);
  SamplingParams params;
  params.temperature = 0;
  params.num_logprobs = 20;
  std::vector<float> copy = logits;
  std::mt19937_64 rng(1);
  const SampleResult result = *Sample(copy, params, TokenHistory{}, rng);
  double total = 0;
  for (float logit : logits) total += std::exp(static_cast<double>(logit));
  const std::vector<int32_t> top = ReferenceSupport(logits, SamplingParams{.temperature = 1.0f, .top_k = 20});
  ASSERT_EQ(result.top.size(), 20u);
  std::vector<int32_t> reported;
  for (const TokenLogprob& entry : result.top) {
    reported.push_back(entry.token);
    EXPECT_NEAR(entry.logprob, logits[static_cast<size_t>(entry.token)] - std::log(total), 1e-5);
  }
  for (size_t i = 1; i < result.top.size(); ++i) EXPECT_GE(result.top[i - 1].logprob, result.top[i].logprob);
  std::sort(reported.begin(), reported.end());
  EXPECT_EQ(reported, top);
  EXPECT_NEAR(result.logprob, logits[static_cast<size_t>(result.token)] - std::log(total), 1e-5);
}

// Extreme but valid parameters: each once drew from an empty candidate list (every token
// id 0, or a read before the list). The draw must be the top token, as greedy would.
TEST(SamplerTest, ExtremeTemperatureAndPenaltiesStillDrawTheTopToken) {
  struct Case {
    const char* name;
    SamplingParams params;
    bool seen;  // whether every token is in the history (the repetition penalty applies)
  };
  const Case cases[] = {
      {"temperature 1e-40, top-k", {.temperature = 1e-40f, .top_k = 3}, false},
      {"temperature 1e-40, min-p", {.temperature = 1e-40f, .min_p = 0.1f}, false},
      {"temperature 1e-40", {.temperature = 1e-40f}, false},
      {"repetition 1e-45, top-k", {.temperature = 1.0f, .top_k = 2, .repetition_penalty = 1e-45f}, true},
      {"repetition 1e-45, min-p", {.temperature = 1.0f, .min_p = 0.5f, .repetition_penalty = 1e-45f}, true},
      {"repetition 1e-45, temperature 1e-5",
       {.temperature = 1e-5f, .top_p = 0.5f, .repetition_penalty = 1e-45f}, true},
  };
  for (const Case& c : cases) {
    TokenHistory history;
    if (c.seen) {
      for (int32_t token = 0; token < 5; ++token) history.Add(token, false);
    }
    for (uint64_t seed = 1; seed <= 20; ++seed) {
      std::vector<float> logits = Logits();
      std::mt19937_64 rng(seed);
      absl::StatusOr<SampleResult> result = Sample(logits, c.params, history, rng);
      ASSERT_TRUE(result.ok()) << c.name << ": " << result.status();
      EXPECT_EQ(result->token, 3) << c.name;  // the largest logit (3.0), penalised or not
    }
  }
}

TEST(SamplerTest, TemperaturesBelowTheFloorAreGreedy) {
  EXPECT_TRUE((SamplingParams{.temperature = 0.0f}).greedy());
  EXPECT_TRUE((SamplingParams{.temperature = 1e-40f}).greedy());
  EXPECT_TRUE((SamplingParams{.temperature = kMinTemperature / 2}).greedy());
  EXPECT_FALSE((SamplingParams{.temperature = kMinTemperature}).greedy());
  EXPECT_TRUE(PicksArgmax(SamplingParams{.temperature = 1e-30f}));
}

TEST(SamplerTest, NonFiniteLogitsAreAnErrorNamingTheToken) {
  const float broken[] = {std::nanf(""), std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()};
  const SamplingParams params_list[] = {{.temperature = 0.0f}, {.temperature = 0.8f, .top_p = 0.9f},
                                        {.temperature = 1.0f, .top_k = 2, .num_logprobs = 2}};
  for (float value : broken) {
    for (const SamplingParams& params : params_list) {
      std::vector<float> logits = Logits();
      logits[2] = value;
      std::mt19937_64 rng(1);
      absl::StatusOr<SampleResult> result = Sample(logits, params, TokenHistory{}, rng);
      ASSERT_FALSE(result.ok()) << value;
      EXPECT_EQ(result.status().code(), absl::StatusCode::kInternal);
      EXPECT_NE(result.status().message().find("token 2"), std::string::npos) << result.status();
    }
  }
  std::vector<float> all_nan(50295, std::nanf(""));
  std::mt19937_64 rng(1);
  EXPECT_FALSE(SampleFromRow(all_nan.data(), all_nan.size(), SamplingParams{}, TokenHistory{}, rng).ok());
}

}  // namespace
}  // namespace mf
