#include "engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

#include "engine/sampling/sampler_math.h"
#include "engine/sampling/sampler_select.h"

namespace mf {
namespace {

// Penalised logits stay finite whatever the penalty (a tiny repetition penalty divides a
// logit past the float range): selection subtracts the top logit, and inf - inf is NaN.
float Finite(float logit) {
  constexpr float kLargest = std::numeric_limits<float>::max();
  return std::clamp(logit, -kLargest, kLargest);
}

void ApplyPenalties(std::vector<float>& logits, const SamplingParams& params, const TokenHistory& history) {
  if (params.repetition_penalty != 1.0f) {
    const float penalty = ClampedRepetitionPenalty(params);
    // As in the CTRL paper and common servers: shrink positive logits, grow negative ones.
    for (size_t token = 0; token < history.seen.size() && token < logits.size(); ++token) {
      if (!history.seen[token]) continue;
      float& logit = logits[token];
      logit = Finite(logit > 0 ? logit / penalty : logit * penalty);
    }
  }
  if (params.presence_penalty != 0.0f || params.frequency_penalty != 0.0f) {
    for (const auto& [token, count] : history.output_counts) {
      if (token < 0 || static_cast<size_t>(token) >= logits.size()) continue;
      float& logit = logits[static_cast<size_t>(token)];
      logit = Finite(logit - (params.presence_penalty + params.frequency_penalty * static_cast<float>(count)));
    }
  }
}

// Index of the first NaN or infinity, or `count`: a vectorised check, then a search only
// when it failed.
size_t FirstNonFinite(const float* values, size_t count) {
  if (AllFinite(values, count)) return count;
  size_t index = 0;
  while (index < count && std::isfinite(values[index])) ++index;
  return index;
}

int32_t Greedy(const std::vector<float>& logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

}  // namespace

std::vector<int32_t> SampleSupport(const std::vector<float>& logits, const SamplingParams& params) {
  std::vector<int32_t> tokens;
  if (params.greedy()) {
    tokens.push_back(Greedy(logits));
    return tokens;
  }
  for (const WeightedToken& c : FilteredCandidates(logits, params)) tokens.push_back(c.token);
  return tokens;
}

float MinPLogitOffset(const SamplingParams& params) { return params.temperature * std::log(params.min_p); }

float ClampedRepetitionPenalty(const SamplingParams& params) {
  return std::clamp(params.repetition_penalty, 1 / kMaxRepetitionPenalty, kMaxRepetitionPenalty);
}

absl::Status NonFiniteLogitError(float value, int64_t token) {
  return absl::InternalError(absl::StrCat("the model produced a non-finite logit (", value, " for token ", token,
                                          "): its weights or activations overflowed"));
}

bool Penalised(const SamplingParams& params) {
  return params.repetition_penalty != 1.0f || params.presence_penalty != 0.0f || params.frequency_penalty != 0.0f;
}

bool PicksArgmax(const SamplingParams& params) { return params.greedy() && !Penalised(params); }

void TokenHistory::Add(int32_t token, bool is_output) {
  if (token < 0) return;
  if (static_cast<size_t>(token) >= seen.size()) seen.resize(static_cast<size_t>(token) + 1, false);
  seen[static_cast<size_t>(token)] = true;
  if (is_output) ++output_counts[token];
}

void FillLogprobs(const std::vector<float>& raw_logits, int num_top, SampleResult* result) {
  const float max_logit = MaxValue(raw_logits.data(), raw_logits.size());
  thread_local std::vector<float> weights;  // reused from step to step, as in sampler_select.cc
  weights.resize(raw_logits.size());
  ScaledExp(raw_logits.data(), raw_logits.size(), max_logit, 1.0f, weights.data());
  const double log_total = std::log(Sum(weights.data(), weights.size())) + max_logit;
  result->logprob = static_cast<float>(raw_logits[static_cast<size_t>(result->token)] - log_total);
  if (num_top <= 0) return;
  const std::vector<WeightedToken> top = MostLikelyLogits(raw_logits, static_cast<size_t>(num_top));
  for (const WeightedToken& entry : top) result->top.push_back({entry.token, static_cast<float>(entry.logit - log_total)});
}

absl::StatusOr<SampleResult> Sample(std::vector<float>& logits, const SamplingParams& params,
                                    const TokenHistory& history, std::mt19937_64& rng) {
  if (const size_t bad = FirstNonFinite(logits.data(), logits.size()); bad < logits.size()) {
    return NonFiniteLogitError(logits[bad], static_cast<int64_t>(bad));
  }
  const bool wants_logprobs = params.chosen_logprob || params.num_logprobs > 0;
  const bool penalised = Penalised(params);
  // Log-probabilities describe the model's own distribution, before penalties. Reused per
  // thread, like the other vocabulary-sized buffers.
  thread_local std::vector<float> raw;
  if (wants_logprobs && penalised) raw.assign(logits.begin(), logits.end());
  if (penalised) ApplyPenalties(logits, params, history);
  SampleResult result;
  if (params.greedy()) {
    result.token = Greedy(logits);
  } else {
    const std::vector<WeightedToken>& candidates = FilteredCandidates(logits, params);
    // Cannot happen with finite logits (the top logit always has weight 1); kept as an
    // error rather than a read before the start of an empty list.
    if (candidates.empty()) return absl::InternalError("sampling: no token survived top-k, min-p and top-p");
    result.token = DrawToken(candidates, rng);
  }
  if (wants_logprobs) FillLogprobs(penalised ? raw : logits, params.num_logprobs, &result);
  return result;
}

absl::StatusOr<SampleResult> SampleFromRow(const float* logits, size_t vocab_size, const SamplingParams& params,
                                           const TokenHistory& history, std::mt19937_64& rng) {
  thread_local std::vector<float> copy;
  copy.assign(logits, logits + vocab_size);
  return Sample(copy, params, history, rng);
}

}  // namespace mf
