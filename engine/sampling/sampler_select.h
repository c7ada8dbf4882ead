// The sampler's vocabulary selection: which tokens survive top-k, min-p and top-p, and
// the seeded draw among them. Every full-vocabulary pass is a selection or a vectorised
// loop, never a sort; buffers the size of the vocabulary are kept per thread (fresh ones
// come from mmap and fault their pages in on every step).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "engine/sampling/sampler.h"

namespace mf {

// A token, its logit and its unnormalised probability exp((logit - max) / temperature).
// Order comes from the logit: equal logits may get weights a rounding apart (vector and
// scalar exponentials differ in the last bit), and ties must go to the lower id.
struct WeightedToken {
  float logit;
  float weight;
  int32_t token;
};

// The tokens of `logits` that top-k, min-p and top-p keep, weighed at the temperature, in
// token order. The result lives in this thread's buffer until its next call.
const std::vector<WeightedToken>& FilteredCandidates(const std::vector<float>& logits, const SamplingParams& params);

// A draw from the candidates' weights with 53 random bits of `rng`.
int32_t DrawToken(const std::vector<WeightedToken>& candidates, std::mt19937_64& rng);

// The `count` largest logits, most likely first (ties to the lower id); weights unset.
std::vector<WeightedToken> MostLikelyLogits(const std::vector<float>& logits, size_t count);

}  // namespace mf
