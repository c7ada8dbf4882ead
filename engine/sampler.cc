#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

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

int32_t Greedy(const std::vector<float>& logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

// Candidates surviving top-k, top-p and min-p, with their probabilities, most likely first.
std::vector<std::pair<float, int32_t>> Candidates(const std::vector<float>& logits, const SamplingParams& params) {
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  std::vector<std::pair<float, int32_t>> candidates;
  candidates.reserve(logits.size());
  double total = 0;
  for (size_t token = 0; token < logits.size(); ++token) {
    const float weight = std::exp((logits[token] - max_logit) / params.temperature);
    if (weight > 0) {
      candidates.emplace_back(weight, static_cast<int32_t>(token));
      total += weight;
    }
  }
  // Most likely first; ties to the lower id, so the order never depends on the sort.
  auto more_likely = [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; };
  if (params.top_k > 0 && static_cast<size_t>(params.top_k) < candidates.size()) {
    std::partial_sort(candidates.begin(), candidates.begin() + params.top_k, candidates.end(), more_likely);
    candidates.resize(static_cast<size_t>(params.top_k));
  } else {
    std::sort(candidates.begin(), candidates.end(), more_likely);
  }
  for (auto& candidate : candidates) candidate.first = static_cast<float>(candidate.first / total);
  if (params.min_p > 0) {
    const float floor = params.min_p * candidates.front().first;
    while (candidates.size() > 1 && candidates.back().first < floor) candidates.pop_back();
  }
  if (params.top_p < 1.0f) {
    // The smallest prefix whose mass reaches top_p (mass renormalised over the survivors).
    double kept_total = 0;
    for (const auto& candidate : candidates) kept_total += candidate.first;
    double mass = 0;
    size_t keep = 0;
    while (keep < candidates.size()) {
      mass += candidates[keep++].first / kept_total;
      if (mass >= params.top_p) break;
    }
    candidates.resize(keep);
  }
  return candidates;
}

}  // namespace

bool PicksArgmax(const SamplingParams& params) {
  return params.greedy() && params.repetition_penalty == 1.0f && params.presence_penalty == 0.0f &&
         params.frequency_penalty == 0.0f;
}

void TokenHistory::Add(int32_t token, bool is_output) {
  if (token < 0) return;
  if (static_cast<size_t>(token) >= seen.size()) seen.resize(static_cast<size_t>(token) + 1, false);
  seen[static_cast<size_t>(token)] = true;
  if (is_output) ++output_counts[token];
}

void FillLogprobs(const std::vector<float>& raw_logits, int num_top, SampleResult* result) {
  const float max_logit = *std::max_element(raw_logits.begin(), raw_logits.end());
  double total = 0;
  for (float logit : raw_logits) total += std::exp(static_cast<double>(logit - max_logit));
  const double log_total = std::log(total) + max_logit;
  result->logprob = static_cast<float>(raw_logits[static_cast<size_t>(result->token)] - log_total);
  if (num_top <= 0) return;
  std::vector<int32_t> order(raw_logits.size());
  std::iota(order.begin(), order.end(), 0);
  const size_t count = std::min(static_cast<size_t>(num_top), order.size());
  std::partial_sort(order.begin(), order.begin() + static_cast<int64_t>(count), order.end(), [&](int32_t a, int32_t b) {
    return raw_logits[static_cast<size_t>(a)] != raw_logits[static_cast<size_t>(b)]
               ? raw_logits[static_cast<size_t>(a)] > raw_logits[static_cast<size_t>(b)]
               : a < b;
  });
  for (size_t i = 0; i < count; ++i) {
    result->top.push_back({order[i], static_cast<float>(raw_logits[static_cast<size_t>(order[i])] - log_total)});
  }
}

SampleResult Sample(std::vector<float>& logits, const SamplingParams& params, const TokenHistory& history,
                    std::mt19937_64& rng) {
  const std::vector<float> raw = logits;  // the model's own distribution, for logprobs
  ApplyPenalties(logits, params, history);
  SampleResult result;
  if (params.greedy()) {
    result.token = Greedy(logits);
  } else {
    const auto candidates = Candidates(logits, params);
    double total = 0;
    for (const auto& candidate : candidates) total += candidate.first;
    // 53 random bits -> uniform in [0, total); the walk is in a fixed order, so a seed fixes the draw.
    const double draw = static_cast<double>(rng() >> 11) * 0x1.0p-53 * total;
    double cumulative = 0;
    result.token = candidates.back().second;
    for (const auto& candidate : candidates) {
      cumulative += candidate.first;
      if (draw < cumulative) {
        result.token = candidate.second;
        break;
      }
    }
  }
  FillLogprobs(raw, params.num_logprobs, &result);
  return result;
}

}  // namespace mf
