// Compiled with -ffast-math (engine/CMakeLists.txt): it lets glibc declare its vector
// exponential (libmvec) and lets the compiler reorder the max reduction, so both loops
// run several lanes at a time: over a 50k vocabulary that is tens of microseconds per
// sequence and step instead of hundreds. Only this file takes the flag; its inputs are
// finite logits. Each loop is also built for AVX2 (8 lanes), picked at load time.
#include "engine/sampler_math.h"

#include <algorithm>
#include <cmath>

namespace mf {

__attribute__((target_clones("avx2", "default"))) float MaxValue(const float* values, size_t count) {
  float largest = values[0];
#pragma omp simd reduction(max : largest)
  for (size_t i = 0; i < count; ++i) largest = std::max(largest, values[i]);
  return largest;
}

__attribute__((target_clones("avx2", "default"))) void ScaledExp(const float* logits, size_t count, float shift, float scale, float* out) {
#pragma omp simd
  for (size_t i = 0; i < count; ++i) out[i] = std::exp(std::max((logits[i] - shift) * scale, -100.0f));
}

__attribute__((target_clones("avx2", "default"))) double Sum(const float* values, size_t count) {
  double total = 0;
#pragma omp simd reduction(+ : total)
  for (size_t i = 0; i < count; ++i) total += values[i];
  return total;
}

}  // namespace mf
