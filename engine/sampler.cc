#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "engine/sampler_math.h"

namespace mf {
namespace {

void ApplyPenalties(std::vector<float>& logits, const SamplingParams& params, const TokenHistory& history) {
  if (params.repetition_penalty != 1.0f) {
    // As in the CTRL paper and common servers: shrink positive logits, grow negative ones.
    for (size_t token = 0; token < history.seen.size() && token < logits.size(); ++token) {
      if (!history.seen[token]) continue;
      float& logit = logits[token];
      logit = logit > 0 ? logit / params.repetition_penalty : logit * params.repetition_penalty;
    }
  }
  if (params.presence_penalty != 0.0f || params.frequency_penalty != 0.0f) {
    for (const auto& [token, count] : history.output_counts) {
      if (token < 0 || static_cast<size_t>(token) >= logits.size()) continue;
      logits[static_cast<size_t>(token)] -= params.presence_penalty + params.frequency_penalty * static_cast<float>(count);
    }
  }
}

bool PenaltiesOff(const SamplingParams& params) {
  return params.repetition_penalty == 1.0f && params.presence_penalty == 0.0f && params.frequency_penalty == 0.0f;
}

int32_t Greedy(const std::vector<float>& logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

// A token, its logit and its unnormalised probability exp((logit - max) / temperature).
// Order comes from the logit: equal logits may get weights a rounding apart (vector and
// scalar exponentials differ in the last bit), and ties must go to the lower id.
struct Weighted {
  float logit;
  float weight;
  int32_t token;
};

// Most likely first; ties to the lower id, so selections never depend on the algorithm.
bool MoreLikely(const Weighted& a, const Weighted& b) {
  return a.logit != b.logit ? a.logit > b.logit : a.token < b.token;
}

// Per-thread buffers, reused from step to step: vocabulary-sized vectors allocated
// afresh each time come from mmap and fault their pages in on every use.
struct Scratch {
  std::vector<float> weights;
  std::vector<Weighted> candidates;
  std::vector<Weighted> work;
};

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

// The `count` most likely of `size` entries (`entry(i)` gives the i-th, ids ascending
// with i), most likely first. One pass that keeps only entries above the running count-th
// value, so it costs little more than reading them: no sort of the whole vocabulary.
template <typename Entry>
std::vector<Weighted> MostLikely(size_t size, size_t count, Entry entry) {
  std::vector<Weighted> kept;
  if (count == 0) return kept;
  const size_t capacity = std::max<size_t>(4 * count, 1024);
  kept.reserve(capacity);
  auto shrink = [&] {
    if (kept.size() <= count) return;
    std::nth_element(kept.begin(), kept.begin() + static_cast<int64_t>(count) - 1, kept.end(), MoreLikely);
    kept.resize(count);
  };
  // An entry equal to the count-th kept logit comes later, so has a higher id: it loses.
  float threshold = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < size; ++i) {
    const Weighted candidate = entry(i);
    if (!(candidate.logit > threshold)) continue;
    kept.push_back(candidate);
    if (kept.size() == capacity) {
      shrink();
      threshold = kept.back().logit;  // nth_element left the count-th most likely last
    }
  }
  shrink();
  std::sort(kept.begin(), kept.end(), MoreLikely);
  return kept;
}

// Sum of the weights of candidates [begin, end) in a fixed order, four running sums so
// the additions overlap.
double WeightSum(const std::vector<Weighted>& candidates, size_t begin, size_t end) {
  double sums[4] = {0, 0, 0, 0};
  size_t i = begin;
  for (; i + 4 <= end; i += 4) {
    for (size_t lane = 0; lane < 4; ++lane) sums[lane] += candidates[i + lane].weight;
  }
  for (; i < end; ++i) sums[0] += candidates[i].weight;
  return (sums[0] + sums[1]) + (sums[2] + sums[3]);
}

void SortByToken(std::vector<Weighted>& candidates) {
  std::sort(candidates.begin(), candidates.end(), [](const Weighted& a, const Weighted& b) { return a.token < b.token; });
}

// The smallest most-likely-first prefix of `candidates` (token order) whose share of their
// total weight reaches top_p, in token order. A model's distribution is usually peaked,
// so the most likely 64 tokens (one selection pass) mostly suffice; otherwise (an
// untrained or very uncertain model, most of the vocabulary kept) a quickselect on mass:
// each round splits the undecided range around a pivot and keeps the side where the
// prefix ends, O(n) where a sort would be O(n log n).
void TopP(std::vector<Weighted>& candidates, float top_p, std::vector<Weighted>& work) {
  constexpr size_t kSortBelow = 512;  // undecided ranges this small are sorted and walked
  constexpr size_t kFirstWindow = 64;
  const double target = top_p * WeightSum(candidates, 0, candidates.size());
  if (candidates.size() > kFirstWindow) {
    std::vector<Weighted> prefix =
        MostLikely(candidates.size(), kFirstWindow, [&](size_t i) { return candidates[i]; });
    double mass = 0;
    size_t keep = 0;
    while (keep < prefix.size() && mass < target) mass += prefix[keep++].weight;
    if (mass >= target) {
      prefix.resize(keep);
      SortByToken(prefix);
      candidates.assign(prefix.begin(), prefix.end());
      return;
    }
  }
  // On a copy: [0, lo) is in the prefix (any order), [hi, size) is not; `mass` is the
  // weight of [0, lo).
  work.assign(candidates.begin(), candidates.end());
  const auto begin = work.begin();
  size_t lo = 0, hi = work.size();
  double mass = 0;
  Weighted last_in = work.front();  // the least likely token of the prefix, once known
  while (hi - lo > kSortBelow && mass < target) {
    const Weighted a = work[lo], b = work[lo + (hi - lo) / 2], c = work[hi - 1];
    const Weighted pivot = MoreLikely(a, b) ? (MoreLikely(b, c) ? b : (MoreLikely(a, c) ? c : a))
                                            : (MoreLikely(a, c) ? a : (MoreLikely(b, c) ? c : b));
    const size_t middle = static_cast<size_t>(
        std::partition(begin + static_cast<int64_t>(lo), begin + static_cast<int64_t>(hi),
                       [&](const Weighted& x) { return MoreLikely(x, pivot); }) - begin);
    const double left = WeightSum(work, lo, middle);
    if (mass + left >= target) {
      hi = middle;  // the prefix ends among the tokens more likely than the pivot
      continue;
    }
    // All of those are in, and the pivot comes next: move it to `middle` and take it too.
    std::iter_swap(begin + static_cast<int64_t>(middle),
                   std::find_if(begin + static_cast<int64_t>(middle), begin + static_cast<int64_t>(hi),
                                [&](const Weighted& x) { return x.token == pivot.token; }));
    mass += left + pivot.weight;
    last_in = pivot;
    lo = middle + 1;
  }
  if (mass < target) {
    std::sort(begin + static_cast<int64_t>(lo), begin + static_cast<int64_t>(hi), MoreLikely);
    for (size_t next = lo; next < hi && mass < target; ++next) {
      mass += work[next].weight;
      last_in = work[next];
    }
  }
  // The prefix is every token at least as likely as its last one; the input is in token order.
  std::erase_if(candidates, [&](const Weighted& c) { return MoreLikely(last_in, c); });
}

// Tokens that survive top-k, min-p and top-p, with their weights, in token order.
const std::vector<Weighted>& Candidates(const std::vector<float>& logits, const SamplingParams& params) {
  const float max_logit = MaxValue(logits.data(), logits.size());
  const float inverse_temperature = 1.0f / params.temperature;
  Scratch& scratch = ThreadScratch();
  std::vector<Weighted>& candidates = scratch.candidates;
  candidates.clear();
  bool filtered = false;           // whether `candidates` holds what top-k and min-p keep
  if (params.top_k > 0 && static_cast<size_t>(params.top_k) < logits.size()) {
    const std::vector<Weighted> top = MostLikely(logits.size(), static_cast<size_t>(params.top_k), [&](size_t i) {
      return Weighted{logits[i], 0.0f, static_cast<int32_t>(i)};
    });
    candidates.assign(top.begin(), top.end());
    SortByToken(candidates);
    filtered = true;
  }
  if (params.min_p > 0) {
    // weight >= min_p x the top weight (exp(0) = 1), as a bound on the logit.
    const float floor = max_logit + params.temperature * std::log(params.min_p);
    if (!filtered) {
      for (size_t token = 0; token < logits.size(); ++token) {
        if (logits[token] >= floor) candidates.push_back({logits[token], 0.0f, static_cast<int32_t>(token)});
      }
    } else {
      std::erase_if(candidates, [&](const Weighted& c) { return c.logit < floor; });
    }
    filtered = true;
  }
  if (!filtered) {  // no filter so far: the whole vocabulary, weighed at once
    std::vector<float>& weights = scratch.weights;
    weights.resize(logits.size());
    ScaledExp(logits.data(), logits.size(), max_logit, inverse_temperature, weights.data());
    candidates.resize(logits.size());
    for (size_t token = 0; token < logits.size(); ++token) {
      candidates[token] = {logits[token], weights[token], static_cast<int32_t>(token)};
    }
  } else {
    for (Weighted& c : candidates) c.weight = std::exp((c.logit - max_logit) * inverse_temperature);
  }
  std::erase_if(candidates, [](const Weighted& c) { return !(c.weight > 0); });  // underflowed: never drawn
  if (params.top_p < 1.0f && !candidates.empty()) TopP(candidates, params.top_p, scratch.work);
  return candidates;
}

// A seeded draw from the candidates' weights: 53 random bits give a uniform point in
// [0, total), found by walking the candidates in token order, a block at a time.
int32_t Draw(const std::vector<Weighted>& candidates, std::mt19937_64& rng) {
  constexpr size_t kBlock = 256;
  std::vector<double> block_sums;
  block_sums.reserve(candidates.size() / kBlock + 1);
  double total = 0;
  for (size_t begin = 0; begin < candidates.size(); begin += kBlock) {
    block_sums.push_back(WeightSum(candidates, begin, std::min(begin + kBlock, candidates.size())));
    total += block_sums.back();
  }
  const double point = static_cast<double>(rng() >> 11) * 0x1.0p-53 * total;
  double cumulative = 0;
  size_t block = 0;
  while (block + 1 < block_sums.size() && point >= cumulative + block_sums[block]) cumulative += block_sums[block++];
  const size_t end = std::min((block + 1) * kBlock, candidates.size());
  for (size_t i = block * kBlock; i < end; ++i) {
    cumulative += candidates[i].weight;
    if (point < cumulative) return candidates[i].token;
  }
  return candidates[end - 1].token;  // rounding left the point at the block's very end
}

}  // namespace

std::vector<int32_t> SampleSupport(const std::vector<float>& logits, const SamplingParams& params) {
  std::vector<int32_t> tokens;
  if (params.greedy()) {
    tokens.push_back(Greedy(logits));
    return tokens;
  }
  for (const Weighted& c : Candidates(logits, params)) tokens.push_back(c.token);
  return tokens;
}

bool PicksArgmax(const SamplingParams& params) { return params.greedy() && PenaltiesOff(params); }

void TokenHistory::Add(int32_t token, bool is_output) {
  if (token < 0) return;
  if (static_cast<size_t>(token) >= seen.size()) seen.resize(static_cast<size_t>(token) + 1, false);
  seen[static_cast<size_t>(token)] = true;
  if (is_output) ++output_counts[token];
}

void FillLogprobs(const std::vector<float>& raw_logits, int num_top, SampleResult* result) {
  const float max_logit = MaxValue(raw_logits.data(), raw_logits.size());
  std::vector<float>& weights = ThreadScratch().weights;
  weights.resize(raw_logits.size());
  ScaledExp(raw_logits.data(), raw_logits.size(), max_logit, 1.0f, weights.data());
  const double log_total = std::log(Sum(weights.data(), weights.size())) + max_logit;
  result->logprob = static_cast<float>(raw_logits[static_cast<size_t>(result->token)] - log_total);
  if (num_top <= 0) return;
  const std::vector<Weighted> top =
      MostLikely(raw_logits.size(), std::min(static_cast<size_t>(num_top), raw_logits.size()),
                 [&](size_t i) { return Weighted{raw_logits[i], 0.0f, static_cast<int32_t>(i)}; });
  for (const Weighted& entry : top) result->top.push_back({entry.token, static_cast<float>(entry.logit - log_total)});
}

SampleResult Sample(std::vector<float>& logits, const SamplingParams& params, const TokenHistory& history,
                    std::mt19937_64& rng) {
  const bool wants_logprobs = params.chosen_logprob || params.num_logprobs > 0;
  const bool penalised = !PenaltiesOff(params);
  // Log-probabilities describe the model's own distribution, before penalties.
  std::vector<float> raw;
  if (wants_logprobs && penalised) raw = logits;
  if (penalised) ApplyPenalties(logits, params, history);
  SampleResult result;
  result.token = params.greedy() ? Greedy(logits) : Draw(Candidates(logits, params), rng);
  if (wants_logprobs) FillLogprobs(penalised ? raw : logits, params.num_logprobs, &result);
  return result;
}

}  // namespace mf
