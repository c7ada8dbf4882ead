// The device sampler against the host sampler (engine/sampling/), the reference: the same
// support for every filter combination, the same distribution (chi-square), the same
// log-probabilities; and draws that depend only on the row, never on the batch.
#include "kernels/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "engine/model.h"
#include "engine/sampling/sampler.h"
#include "tests/cuda_test_util.h"

namespace mf {
namespace {

using testing::DeviceBuffer;

struct Case {
  std::vector<float> logits;
  SamplingParams sampling;
  std::vector<int32_t> prompt, generated;
  uint64_t seed = 0;
  uint32_t draw_index = 0;
};

// The engine's packing (engine/backend.h's layout, the kernels' by static_asserts in the CUDA backend).
kernels::SampleRowParams DeviceParams(const Case& c, int penalty_slot) {
  static_assert(sizeof(SampleRowParams) == sizeof(kernels::SampleRowParams));
  SampleRowParams packed = PackSampleRow(c.sampling, c.seed, c.draw_index, penalty_slot);
  packed.enabled = 1;
  kernels::SampleRowParams params;
  std::memcpy(&params, &packed, sizeof(params));
  return params;
}

struct DeviceDraws {
  std::vector<kernels::SampleRowResult> results;
  std::vector<uint8_t> support;   // [rows, vocab]
  std::vector<uint32_t> counts;   // [rows, vocab] after the draw
};

// Samples every case (all of one vocabulary size) in one launch, each with its own penalty slot.
DeviceDraws SampleOnDevice(const std::vector<Case>& cases) {
  const int rows = static_cast<int>(cases.size());
  const int vocab = static_cast<int>(cases[0].logits.size());
  std::vector<float> logits;
  std::vector<kernels::SampleRowParams> params;
  for (int row = 0; row < rows; ++row) {
    logits.insert(logits.end(), cases[row].logits.begin(), cases[row].logits.end());
    params.push_back(DeviceParams(cases[row], row));
  }
  DeviceBuffer<float> device_logits(logits), scratch(logits.size());
  DeviceBuffer<kernels::SampleRowParams> device_params(params);
  DeviceBuffer<uint32_t> counts(logits.size());
  DeviceBuffer<kernels::SampleRowResult> results(static_cast<size_t>(rows));
  DeviceBuffer<uint8_t> support(logits.size());
  for (int row = 0; row < rows; ++row) {
    const Case& c = cases[row];
    DeviceBuffer<int32_t> prompt(c.prompt), generated(c.generated);
    EXPECT_EQ(kernels::SetPenaltyHistory(counts.get() + static_cast<size_t>(row) * vocab, vocab, prompt.get(),
                                         static_cast<int>(c.prompt.size()), generated.get(),
                                         static_cast<int>(c.generated.size()), nullptr),
              cudaSuccess);
  }
  EXPECT_EQ(kernels::SampleRows(device_logits.get(), rows, vocab, device_params.get(), counts.get(), scratch.get(),
                                results.get(), support.get(), nullptr),
            cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return {results.ToHost(), support.ToHost(), counts.ToHost()};
}

TokenHistory History(const Case& c) {
  TokenHistory history;
  for (int32_t token : c.prompt) history.Add(token, false);
  for (int32_t token : c.generated) history.Add(token, true);
  return history;
}

// Random logits: some rounded to bf16 (many ties), some peaked, some flat.
Case RandomCase(std::mt19937_64& rng, int vocab) {
  Case c;
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  const float scale = 0.5f + 8.0f * unit(rng);
  std::normal_distribution<float> normal(0.0f, scale);
  c.logits.resize(static_cast<size_t>(vocab));
  const bool ties = unit(rng) < 0.5f;
  for (float& logit : c.logits) {
    logit = normal(rng);
    if (ties) logit = std::ldexp(std::round(std::ldexp(logit, 3)), -3);
  }
  if (unit(rng) < 0.3f) c.logits[rng() % static_cast<size_t>(vocab)] += 20.0f;
  SamplingParams& s = c.sampling;
  const float temperatures[] = {0.0f, 0.3f, 0.7f, 1.0f, 1.5f};
  s.temperature = temperatures[rng() % 5];
  const int top_ks[] = {0, 0, 1, 5, 50, vocab + 10};
  s.top_k = top_ks[rng() % 6];
  const float top_ps[] = {1.0f, 1.0f, 0.5f, 0.9f, 0.99f};
  s.top_p = top_ps[rng() % 5];
  const float min_ps[] = {0.0f, 0.0f, 0.01f, 0.1f};
  s.min_p = min_ps[rng() % 4];
  if (unit(rng) < 0.4f) {
    s.repetition_penalty = unit(rng) < 0.5f ? 1.3f : 0.8f;
    s.presence_penalty = unit(rng) < 0.5f ? 0.5f : 0.0f;
    s.frequency_penalty = unit(rng) < 0.5f ? 0.2f : 0.0f;
    for (int i = 0; i < 20; ++i) c.prompt.push_back(static_cast<int32_t>(rng() % static_cast<size_t>(vocab)));
    for (int i = 0; i < 12; ++i) c.generated.push_back(static_cast<int32_t>(rng() % 40));  // repeats
  }
  const int logprobs[] = {0, 0, 1, 5, 20};
  s.num_logprobs = logprobs[rng() % 5];
  s.chosen_logprob = s.num_logprobs > 0 || unit(rng) < 0.3f;
  c.seed = rng();
  c.draw_index = static_cast<uint32_t>(rng() % 1000);
  return c;
}

TEST(DeviceSamplerTest, SupportAndLogprobsMatchTheHostSampler) {
  MF_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(20261202);
  int checked = 0;
  for (int vocab : {257, 1000, 4099, 50295}) {
    std::vector<Case> cases;
    for (int i = 0; i < 60; ++i) cases.push_back(RandomCase(rng, vocab));
    const DeviceDraws device = SampleOnDevice(cases);
    for (size_t row = 0; row < cases.size(); ++row) {
      const Case& c = cases[row];
      const std::string where = "vocab " + std::to_string(vocab) + " case " + std::to_string(row);
      std::vector<float> penalised = c.logits;
      std::mt19937_64 host_rng(c.seed);
      auto host = Sample(penalised, c.sampling, History(c), host_rng);  // leaves the penalised logits
      ASSERT_TRUE(host.ok()) << host.status();
      const std::vector<int32_t> support = SampleSupport(penalised, c.sampling);
      std::vector<int32_t> device_support;
      for (int token = 0; token < vocab; ++token) {
        if (device.support[row * vocab + token] != 0) device_support.push_back(token);
      }
      ASSERT_EQ(device_support, support) << where;
      const kernels::SampleRowResult& drawn = device.results[row];
      ASSERT_EQ(drawn.bad_token, -1) << where;
      EXPECT_TRUE(std::binary_search(support.begin(), support.end(), drawn.token)) << where;
      if (c.sampling.greedy()) {
        EXPECT_EQ(drawn.token, host->token) << where;
      }
      if (c.sampling.chosen_logprob) {
        SampleResult expected;
        expected.token = drawn.token;
        FillLogprobs(c.logits, c.sampling.num_logprobs, &expected);
        EXPECT_NEAR(drawn.logprob, expected.logprob, 1e-3) << where;
        ASSERT_EQ(expected.top.size(), static_cast<size_t>(std::min(c.sampling.num_logprobs, vocab)));
        for (size_t i = 0; i < expected.top.size(); ++i) {
          EXPECT_EQ(drawn.top_tokens[i], expected.top[i].token) << where << " top " << i;
          EXPECT_NEAR(drawn.top_logprobs[i], expected.top[i].logprob, 1e-3) << where << " top " << i;
        }
      }
      // The slot now counts the drawn token once more.
      const uint32_t before = static_cast<uint32_t>(std::count(c.generated.begin(), c.generated.end(), drawn.token));
      EXPECT_EQ(device.counts[row * vocab + drawn.token] & ~kernels::kPromptTokenBit, before + 1) << where;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 240);
}

// Wilson-Hilferty: the chi-square quantile for `df` degrees of freedom at normal quantile z.
double ChiSquareQuantile(double df, double z) {
  const double a = 2.0 / (9.0 * df);
  return df * std::pow(1.0 - a + z * std::sqrt(a), 3.0);
}

TEST(DeviceSamplerTest, DrawFrequenciesFollowTheHostDistribution) {
  MF_SKIP_WITHOUT_GPU();
  constexpr int kVocab = 50257, kRows = 1024, kLaunches = 200;
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  Case base;
  base.logits.resize(kVocab);
  for (float& logit : base.logits) logit = normal(rng);
  base.sampling.temperature = 0.8f;
  base.sampling.top_p = 0.95f;
  base.sampling.top_k = 2000;
  // The host's distribution: weights exp((l - max) / t) over its support.
  const std::vector<int32_t> support = SampleSupport(base.logits, base.sampling);
  const float max_logit = *std::max_element(base.logits.begin(), base.logits.end());
  std::vector<double> probability(kVocab, 0.0);
  double total = 0;
  for (int32_t token : support) total += probability[token] = std::exp((base.logits[token] - max_logit) / 0.8);
  for (double& p : probability) p /= total;

  std::vector<float> logits;
  for (int row = 0; row < kRows; ++row) logits.insert(logits.end(), base.logits.begin(), base.logits.end());
  DeviceBuffer<float> device_logits(logits), scratch(logits.size());
  DeviceBuffer<kernels::SampleRowResult> results(kRows);
  std::vector<int64_t> observed(kVocab, 0);
  for (int launch = 0; launch < kLaunches; ++launch) {
    std::vector<kernels::SampleRowParams> params;
    for (int row = 0; row < kRows; ++row) {
      Case c = base;
      c.seed = static_cast<uint64_t>(launch);  // one seed per launch, one draw index per row
      c.draw_index = static_cast<uint32_t>(row);
      params.push_back(DeviceParams(c, -1));
    }
    DeviceBuffer<kernels::SampleRowParams> device_params(params);
    ASSERT_EQ(kernels::SampleRows(device_logits.get(), kRows, kVocab, device_params.get(), nullptr, scratch.get(),
                                  results.get(), nullptr, nullptr),
              cudaSuccess);
    for (const kernels::SampleRowResult& result : results.ToHost()) {
      ASSERT_GE(result.token, 0);
      ++observed[result.token];
    }
  }
  const double draws = static_cast<double>(kRows) * kLaunches;
  // Bins of at least 5 expected draws, most likely tokens first; never-possible tokens apart.
  std::vector<int32_t> order(support.begin(), support.end());
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return probability[a] > probability[b]; });
  double statistic = 0, bin_expected = 0, bin_observed = 0;
  int bins = 0;
  for (int32_t token : order) {
    bin_expected += probability[token] * draws;
    bin_observed += static_cast<double>(observed[token]);
    if (bin_expected >= 5) {
      statistic += (bin_observed - bin_expected) * (bin_observed - bin_expected) / bin_expected;
      ++bins;
      bin_expected = bin_observed = 0;
    }
  }
  if (bin_expected > 0) {
    statistic += (bin_observed - bin_expected) * (bin_observed - bin_expected) / std::max(bin_expected, 1e-9);
    ++bins;
  }
  int64_t outside = 0;
  for (int token = 0; token < kVocab; ++token) outside += probability[token] == 0 ? observed[token] : 0;
  EXPECT_EQ(outside, 0);
  const double critical = ChiSquareQuantile(bins - 1, 3.719);  // p = 1e-4
  std::printf("chi-square %.1f over %d bins (critical %.1f at p = 1e-4), %zu tokens in the support, %.0f draws\n",
              statistic, bins, critical, support.size(), draws);
  EXPECT_LT(statistic, critical);
}

TEST(DeviceSamplerTest, DrawsDependOnlyOnTheRow) {
  MF_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(99);
  std::vector<Case> others;
  for (int i = 0; i < 64; ++i) others.push_back(RandomCase(rng, 4099));
  Case target = RandomCase(rng, 4099);
  target.sampling.temperature = 1.0f;
  target.sampling.top_p = 0.99f;
  target.sampling.chosen_logprob = true;
  const kernels::SampleRowResult alone = SampleOnDevice({target}).results[0];
  for (size_t position : {size_t{0}, size_t{17}, size_t{64}}) {
    std::vector<Case> batch = others;
    batch.insert(batch.begin() + static_cast<int64_t>(position), target);
    const kernels::SampleRowResult within = SampleOnDevice(batch).results[position];
    EXPECT_EQ(within.token, alone.token) << "at " << position;
    EXPECT_EQ(within.logprob, alone.logprob) << "at " << position;
  }
  // Another draw index is another draw: over 32 indices, more than one token comes up.
  std::vector<Case> indices(32, target);
  for (size_t i = 0; i < indices.size(); ++i) indices[i].draw_index = static_cast<uint32_t>(i);
  std::vector<int32_t> tokens;
  for (const auto& result : SampleOnDevice(indices).results) tokens.push_back(result.token);
  std::sort(tokens.begin(), tokens.end());
  EXPECT_GT(std::unique(tokens.begin(), tokens.end()) - tokens.begin(), 1);
}

TEST(DeviceSamplerTest, NonFiniteLogitsAreReportedNotDrawn) {
  MF_SKIP_WITHOUT_GPU();
  Case c;
  c.logits.assign(1000, 0.5f);
  c.logits[9] = std::numeric_limits<float>::infinity();
  c.logits[5] = std::numeric_limits<float>::quiet_NaN();
  const kernels::SampleRowResult result = SampleOnDevice({c}).results[0];
  EXPECT_EQ(result.token, -1);
  EXPECT_EQ(result.bad_token, 5);
  EXPECT_TRUE(std::isnan(result.bad_value));
}

TEST(DeviceSamplerTest, PenaltyHistoryMarksPromptAndCountsOutput) {
  MF_SKIP_WITHOUT_GPU();
  DeviceBuffer<uint32_t> counts(100);
  DeviceBuffer<int32_t> prompt(std::vector<int32_t>{3, 7, 3, 200}), generated(std::vector<int32_t>{7, 9, 9, -1});
  ASSERT_EQ(kernels::SetPenaltyHistory(counts.get(), 100, prompt.get(), 4, generated.get(), 4, nullptr), cudaSuccess);
  const std::vector<uint32_t> values = counts.ToHost();
  EXPECT_EQ(values[3], kernels::kPromptTokenBit);
  EXPECT_EQ(values[7], kernels::kPromptTokenBit | 1u);
  EXPECT_EQ(values[9], 2u);
  EXPECT_EQ(std::count(values.begin(), values.end(), 0u), 97);
}

}  // namespace
}  // namespace mf
