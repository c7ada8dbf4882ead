// Which tokens a draw can pick, and the draw: top-k, min-p and top-p over a whole
// vocabulary without sorting it.
#include "engine/sampling/sampler_select.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/sampling/sampler_math.h"

namespace mf {
namespace {

// Most likely first; ties to the lower id, so selections never depend on the algorithm.
bool MoreLikely(const WeightedToken& a, const WeightedToken& b) {
  return a.logit != b.logit ? a.logit > b.logit : a.token < b.token;
}

// This thread's vocabulary-sized buffers, reused from step to step.
struct Scratch {
  std::vector<float> weights;
  std::vector<WeightedToken> candidates;
  std::vector<WeightedToken> work;
};

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

// The `count` most likely of `size` entries (`entry(i)` gives the i-th, ids ascending
// with i), most likely first. One pass that keeps only entries above the running count-th
// value, so it costs little more than reading them: no sort of the whole vocabulary.
template <typename Entry>
std::vector<WeightedToken> MostLikely(size_t size, size_t count, Entry entry) {
  std::vector<WeightedToken> kept;
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
    const WeightedToken candidate = entry(i);
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
double WeightSum(const std::vector<WeightedToken>& candidates, size_t begin, size_t end) {
  double sums[4] = {0, 0, 0, 0};
  size_t i = begin;
  for (; i + 4 <= end; i += 4) {
    for (size_t lane = 0; lane < 4; ++lane) sums[lane] += candidates[i + lane].weight;
  }
  for (; i < end; ++i) sums[0] += candidates[i].weight;
  return (sums[0] + sums[1]) + (sums[2] + sums[3]);
}

void SortByToken(std::vector<WeightedToken>& candidates) {
  std::sort(candidates.begin(), candidates.end(), [](const WeightedToken& a, const WeightedToken& b) { return a.token < b.token; });
}

// The smallest most-likely-first prefix of `candidates` (token order) whose share of their
// total weight reaches top_p, in token order. A model's distribution is usually peaked,
// so the most likely 64 tokens (one selection pass) mostly suffice; otherwise (an
// untrained or very uncertain model, most of the vocabulary kept) a quickselect on mass:
// each round splits the undecided range around a pivot and keeps the side where the
// prefix ends, O(n) where a sort would be O(n log n).
void TopP(std::vector<WeightedToken>& candidates, float top_p, std::vector<WeightedToken>& work) {
  constexpr size_t kSortBelow = 512;  // undecided ranges this small are sorted and walked
  constexpr size_t kFirstWindow = 64;
  const double target = top_p * WeightSum(candidates, 0, candidates.size());
  if (candidates.size() > kFirstWindow) {
    std::vector<WeightedToken> prefix =
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
  WeightedToken last_in = work.front();  // the least likely token of the prefix, once known
  while (hi - lo > kSortBelow && mass < target) {
    const WeightedToken a = work[lo], b = work[lo + (hi - lo) / 2], c = work[hi - 1];
    const WeightedToken pivot = MoreLikely(a, b) ? (MoreLikely(b, c) ? b : (MoreLikely(a, c) ? c : a))
                                            : (MoreLikely(a, c) ? a : (MoreLikely(b, c) ? c : b));
    const size_t middle = static_cast<size_t>(
        std::partition(begin + static_cast<int64_t>(lo), begin + static_cast<int64_t>(hi),
                       [&](const WeightedToken& x) { return MoreLikely(x, pivot); }) - begin);
    const double left = WeightSum(work, lo, middle);
    if (mass + left >= target) {
      hi = middle;  // the prefix ends among the tokens more likely than the pivot
      continue;
    }
    // All of those are in, and the pivot comes next: move it to `middle` and take it too.
    std::iter_swap(begin + static_cast<int64_t>(middle),
                   std::find_if(begin + static_cast<int64_t>(middle), begin + static_cast<int64_t>(hi),
                                [&](const WeightedToken& x) { return x.token == pivot.token; }));
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
  std::erase_if(candidates, [&](const WeightedToken& c) { return MoreLikely(last_in, c); });
}

}  // namespace

const std::vector<WeightedToken>& FilteredCandidates(const std::vector<float>& logits, const SamplingParams& params) {
  const float max_logit = MaxValue(logits.data(), logits.size());
  const float inverse_temperature = 1.0f / params.temperature;
  Scratch& scratch = ThreadScratch();
  std::vector<WeightedToken>& candidates = scratch.candidates;
  candidates.clear();
  bool filtered = false;  // whether `candidates` holds what top-k and min-p keep
  if (params.top_k > 0 && static_cast<size_t>(params.top_k) < logits.size()) {
    const std::vector<WeightedToken> top = MostLikely(logits.size(), static_cast<size_t>(params.top_k), [&](size_t i) {
      return WeightedToken{logits[i], 0.0f, static_cast<int32_t>(i)};
    });
    candidates.assign(top.begin(), top.end());
    SortByToken(candidates);
    filtered = true;
  }
  if (params.min_p > 0) {
    // weight >= min_p x the top weight (exp(0) = 1), as a bound on the logit.
    const float floor = max_logit + MinPLogitOffset(params);
    if (!filtered) {
      for (size_t token = 0; token < logits.size(); ++token) {
        if (logits[token] >= floor) candidates.push_back({logits[token], 0.0f, static_cast<int32_t>(token)});
      }
    } else {
      std::erase_if(candidates, [&](const WeightedToken& c) { return c.logit < floor; });
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
    for (WeightedToken& c : candidates) c.weight = std::exp((c.logit - max_logit) * inverse_temperature);
  }
  std::erase_if(candidates, [](const WeightedToken& c) { return !(c.weight > 0); });  // underflowed: never drawn
  if (params.top_p < 1.0f && !candidates.empty()) TopP(candidates, params.top_p, scratch.work);
  return candidates;
}

// A seeded draw from the candidates' weights: 53 random bits give a uniform point in
// [0, total), found by walking the candidates in token order, a block at a time.
int32_t DrawToken(const std::vector<WeightedToken>& candidates, std::mt19937_64& rng) {
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

std::vector<WeightedToken> MostLikelyLogits(const std::vector<float>& logits, size_t count) {
  return MostLikely(logits.size(), std::min(count, logits.size()),
                    [&](size_t i) { return WeightedToken{logits[i], 0.0f, static_cast<int32_t>(i)}; });
}

}  // namespace mf
