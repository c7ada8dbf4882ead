// Reference cases (`cases.json`, produced by the original implementation) and
// their verification against the engine: logits, routing and greedy continuation.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/generator.h"

namespace mf {

struct ReferenceRouting {
  int layer = 0;
  Mixture mixture = Mixture::kAttention;
  std::vector<std::vector<int32_t>> experts;  // [prompt token][k]
  std::vector<std::vector<float>> gates;
};

struct ReferenceCase {
  std::vector<int32_t> prompt;
  std::vector<int> logits_positions;
  std::vector<std::vector<float>> logits;              // one row per logits position
  std::vector<int32_t> greedy;
  std::vector<std::vector<float>> greedy_step_logits;  // after feeding greedy[i], i < n-1
  std::vector<ReferenceRouting> routing;
};

absl::StatusOr<std::vector<ReferenceCase>> LoadReferenceCases(const std::string& path);

struct Tolerances {
  double logits = 1e-4;
  double gates = 1e-4;
};

struct CaseReport {
  double max_logit_error = 0;       // over prompt positions and greedy steps
  bool greedy_matches = false;
  bool routing_matches = false;
  std::string first_mismatch;       // empty when everything matches
  bool ok() const { return first_mismatch.empty(); }
};

// Compares one generation (run with all_prompt_logits and record_routing) with its case.
CaseReport CompareWithReference(const ReferenceCase& reference, const GenerationResult& result,
                                const Tolerances& tolerances);

// Options that make GenerateGreedy produce everything a reference case checks.
GenerateOptions VerificationOptions(const std::vector<ReferenceCase>& cases, int prefill_chunk);

}  // namespace mf
