// A self-contained greedy generation loop over the model: the reference path the
// command-line tool and the exactness tests use. Several prompts run together as
// one ragged batch per step; prompts may be prefilled in chunks while others decode.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model.h"

namespace mf {

struct GenerateOptions {
  int max_new_tokens = 16;
  int prefill_chunk = 0;          // tokens per prefill step; 0 feeds the whole prompt at once
  bool all_prompt_logits = false; // keep logits of every prompt position (else only the last)
  bool record_routing = false;    // keep every fed token's routing
};

struct GenerationResult {
  std::vector<int32_t> tokens;                     // generated ids
  std::vector<std::vector<float>> prompt_logits;   // per prompt position (or just the last)
  std::vector<std::vector<float>> step_logits;     // after feeding each generated token but the last
  // Per layer and mixture, [fed tokens, k] in feeding order: prompt first, then generated.
  std::vector<std::array<MixtureRouting, 2>> routing;
};

// Index of the largest logit; ties go to the lower index.
int32_t ArgMax(const float* logits, int64_t count);

absl::StatusOr<std::vector<GenerationResult>> GenerateGreedy(Model& model,
                                                             const std::vector<std::vector<int32_t>>& prompts,
                                                             const GenerateOptions& options);

}  // namespace mf
