// Host sampling cost per sequence and step on a GPT-2-sized vocabulary (50,295 logits),
// one thread: the engine samples every row that is not plain greedy on the host.
// Logits are drawn like a language model's: a few strong candidates over a long tail.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "engine/base/worker_pool.h"
#include "engine/sampling/sampler.h"

namespace {

constexpr int kVocab = 50295;

std::vector<float> ModelLikeLogits(uint64_t seed, bool flat = false) {
  const float spread = flat ? 0.05f : 2.0f;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> tail(0.0f, spread);
  std::vector<float> logits(kVocab);
  for (float& logit : logits) logit = tail(rng);
  std::uniform_int_distribution<int> token(0, kVocab - 1);
  for (int strong = 0; strong < (flat ? 0 : 20); ++strong) logits[static_cast<size_t>(token(rng))] += 12.0f - strong * 0.5f;
  return logits;
}

void RunSample(benchmark::State& state, mf::SamplingParams params, bool penalties, bool flat = false) {
  // Flat: an untrained model's logits, where top-p keeps most of the vocabulary.
  const std::vector<float> source = ModelLikeLogits(1, flat);
  mf::TokenHistory history;
  if (penalties) {
    for (int32_t token = 0; token < 600; ++token) history.Add(token * 83 % kVocab, /*is_output=*/token % 3 == 0);
  }
  std::mt19937_64 rng(7);
  std::vector<float> logits;
  for (auto _ : state) {
    logits = source;
    benchmark::DoNotOptimize(mf::Sample(logits, params, history, rng)->token);
  }
  state.SetItemsProcessed(state.iterations());  // sequences sampled
}

mf::SamplingParams Params(float temperature, int top_k, float top_p, float min_p, int num_logprobs = 0,
                          bool logprob = false) {
  mf::SamplingParams params;
  params.temperature = temperature;
  params.top_k = top_k;
  params.top_p = top_p;
  params.min_p = min_p;
  params.num_logprobs = num_logprobs;
  params.chosen_logprob = logprob || num_logprobs > 0;
  return params;
}

void BM_Temperature(benchmark::State& state) { RunSample(state, Params(0.8f, 0, 1.0f, 0.0f), false); }
void BM_TopP095Flat(benchmark::State& state) { RunSample(state, Params(0.8f, 0, 0.95f, 0.0f), false, true); }
void BM_TopK50(benchmark::State& state) { RunSample(state, Params(0.8f, 50, 1.0f, 0.0f), false); }
void BM_TopP095(benchmark::State& state) { RunSample(state, Params(0.8f, 0, 0.95f, 0.0f), false); }
void BM_TopK50TopP095(benchmark::State& state) { RunSample(state, Params(1.3f, 50, 0.95f, 0.0f), false); }
void BM_MinP005(benchmark::State& state) { RunSample(state, Params(1.0f, 0, 1.0f, 0.05f), false); }
void BM_TopPWithPenalties(benchmark::State& state) { RunSample(state, Params(0.8f, 0, 0.9f, 0.0f), true); }
void BM_TopPWithLogprobs5(benchmark::State& state) { RunSample(state, Params(0.8f, 0, 0.9f, 0.0f, 5), false); }
void BM_GreedyWithPenalties(benchmark::State& state) { RunSample(state, Params(0.0f, 0, 1.0f, 0.0f), true); }

// A decode step's worth of rows (256 sequences at temperature 0.8, top-p 0.95) sampled
// the way the engine does: the loop thread plus `range(0)` helpers.
void BM_Batch256(benchmark::State& state) {
  constexpr int kRows = 256;
  std::vector<std::vector<float>> sources;
  for (int row = 0; row < 8; ++row) sources.push_back(ModelLikeLogits(static_cast<uint64_t>(row)));
  std::vector<std::mt19937_64> rngs;
  for (int row = 0; row < kRows; ++row) rngs.emplace_back(static_cast<uint64_t>(row));
  const mf::SamplingParams params = Params(0.8f, 0, 0.95f, 0.0f);
  const mf::TokenHistory history;
  mf::WorkerPool pool(static_cast<int>(state.range(0)));
  std::vector<int32_t> tokens(kRows);
  for (auto _ : state) {
    pool.ParallelFor(kRows, [&](int row) {
      const std::vector<float>& logits = sources[static_cast<size_t>(row) % sources.size()];
      tokens[static_cast<size_t>(row)] =
          mf::SampleFromRow(logits.data(), logits.size(), params, history, rngs[static_cast<size_t>(row)])->token;
    });
    benchmark::DoNotOptimize(tokens.data());
  }
  state.SetItemsProcessed(state.iterations() * kRows);
}

// At least a second each: the first rows pay for fresh pages.
BENCHMARK(BM_Batch256)->Arg(0)->Arg(1)->Arg(3)->Arg(7)->UseRealTime()->MinTime(1.0)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Temperature);
BENCHMARK(BM_TopP095Flat);
BENCHMARK(BM_TopK50);
BENCHMARK(BM_TopP095);
BENCHMARK(BM_TopK50TopP095);
BENCHMARK(BM_MinP005);
BENCHMARK(BM_TopPWithPenalties);
BENCHMARK(BM_TopPWithLogprobs5);
BENCHMARK(BM_GreedyWithPenalties);

}  // namespace

BENCHMARK_MAIN();
