// The sampler's full-vocabulary loops, vectorised: they run over every logit of every
// sampled sequence in every step.
#pragma once

#include <cstddef>

namespace mf {

// Whether every value is finite (no NaN or infinity), from the exponent bits: exact
// under this file's fast-math, which lets floating-point checks assume the answer.
bool AllFinite(const float* values, size_t count);

// The largest of count > 0 finite values.
float MaxValue(const float* values, size_t count);

// out[i] = exp(max((logits[i] - shift) * scale, -100)): unnormalised probabilities at
// a temperature of 1 / scale when `shift` is the largest logit. Within a few ulp of
// std::exp; arguments below -100 (weights under 4e-44) are clamped.
void ScaledExp(const float* logits, size_t count, float shift, float scale, float* out);

// The sum of count values, accumulated in double (in an order of the compiler's choosing,
// fixed for a build).
double Sum(const float* values, size_t count);

}  // namespace mf
