// Turning one sequence's logits into its next token: penalties, temperature,
// top-k / top-p / min-p filtering and a seeded draw, plus log-probabilities.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"

namespace mf {

// Temperatures below this are greedy: 1/t would overflow (and dividing logits by a
// denormal turns the top logit into infinity), and such a draw is the argmax anyway.
inline constexpr float kMinTemperature = 1e-5f;
// Repetition penalties are clamped to [1/kMaxRepetitionPenalty, kMaxRepetitionPenalty]:
// a logit divided by 1e-45 leaves the float range, and past 1e4 the order of penalised
// tokens no longer changes for any real model's logits.
inline constexpr float kMaxRepetitionPenalty = 1e4f;

struct SamplingParams {
  float temperature = 1.0f;  // below kMinTemperature (0 included): greedy
  int top_k = 0;             // 0: off
  float top_p = 1.0f;        // (0, 1]
  float min_p = 0.0f;        // [0, 1]: drop tokens below min_p x the top probability
  float repetition_penalty = 1.0f;  // > 0 (clamped, above); applied to every token of prompt and output
  float presence_penalty = 0.0f;    // subtracted once from each token already generated
  float frequency_penalty = 0.0f;   // subtracted per occurrence in the output
  int num_logprobs = 0;             // top-n alternatives to report per token
  bool chosen_logprob = false;      // report the chosen token's log-probability (implied by num_logprobs > 0)
  bool greedy() const { return !(temperature >= kMinTemperature); }
};

// Tokens a sequence has seen, for the penalties.
struct TokenHistory {
  std::unordered_map<int32_t, int> output_counts;
  std::vector<bool> seen;  // prompt or output, indexed by token id

  void Add(int32_t token, bool is_output);
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
};

struct SampleResult {
  int32_t token = 0;
  float logprob = 0;                 // of the chosen token under the model (raw logits)
  std::vector<TokenLogprob> top;     // the model's most likely tokens, when asked
};

// `logits` is modified in place (penalties and temperature applied). Logits that are not
// all finite (a broken model) are an error, never a token.
absl::StatusOr<SampleResult> Sample(std::vector<float>& logits, const SamplingParams& params,
                                    const TokenHistory& history, std::mt19937_64& rng);

// Sample on a row of logits the caller keeps (the step's output): copied first into this
// thread's buffer, reused from call to call (a fresh vocabulary-sized vector would fault
// its pages in every step).
absl::StatusOr<SampleResult> SampleFromRow(const float* logits, size_t vocab_size, const SamplingParams& params,
                                           const TokenHistory& history, std::mt19937_64& rng);

// The tokens Sample can draw from these (already penalised) logits, in token order:
// what top-k, min-p and top-p keep, less any whose weight underflows.
std::vector<int32_t> SampleSupport(const std::vector<float>& logits, const SamplingParams& params);

// Whether any penalty changes the logits.
bool Penalised(const SamplingParams& params);

// Whether Sample's token is the raw logits' argmax (lowest id among ties): greedy with no
// penalty changing the logits. Such requests need only the argmax from the model.
bool PicksArgmax(const SamplingParams& params);

// min-p as a bound on logits: tokens whose logit is below the top one plus this are
// dropped (the device sampler gets the same float, so both draw the line alike).
float MinPLogitOffset(const SamplingParams& params);
float ClampedRepetitionPenalty(const SamplingParams& params);

// The error for a row of logits that is not all finite (a broken model).
absl::Status NonFiniteLogitError(float value, int64_t token);

// Model log-probabilities: log-softmax of raw logits, the chosen token's and the top n.
void FillLogprobs(const std::vector<float>& raw_logits, int num_top, SampleResult* result);

}  // namespace mf
