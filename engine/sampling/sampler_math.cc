// Compiled with -ffast-math (engine/sampling/CMakeLists.txt): it lets glibc declare its vector
// exponential (libmvec) and lets the compiler reorder the reductions, so the loops run
// several lanes at a time: over a 50k vocabulary that is tens of microseconds per
// sequence and step instead of hundreds. Only this file takes the flag; its inputs are
// finite logits. Each loop is inlined into an AVX2 (8 lanes) and a baseline entry point,
// and the first call picks one (a plain check, not an ifunc: ifunc resolvers run before
// sanitizer runtimes start, so sanitized builds would crash at load).
#include "engine/sampling/sampler_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace mf {
namespace {

#define MF_INLINE inline __attribute__((always_inline))
#define MF_AVX2 __attribute__((target("avx2")))

MF_INLINE bool AllFiniteLoop(const float* values, size_t count) {
  constexpr uint32_t kExponent = 0x7f800000u;  // all ones: infinity or NaN
  uint32_t non_finite = 0;
#pragma omp simd reduction(| : non_finite)
  for (size_t i = 0; i < count; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &values[i], sizeof(bits));
    non_finite |= static_cast<uint32_t>((bits & kExponent) == kExponent);
  }
  return non_finite == 0;
}

MF_INLINE float MaxLoop(const float* values, size_t count) {
  float largest = values[0];
#pragma omp simd reduction(max : largest)
  for (size_t i = 0; i < count; ++i) largest = std::max(largest, values[i]);
  return largest;
}

MF_INLINE void ScaledExpLoop(const float* logits, size_t count, float shift, float scale, float* out) {
#pragma omp simd
  for (size_t i = 0; i < count; ++i) out[i] = std::exp(std::max((logits[i] - shift) * scale, -100.0f));
}

MF_INLINE double SumLoop(const float* values, size_t count) {
  double total = 0;
#pragma omp simd reduction(+ : total)
  for (size_t i = 0; i < count; ++i) total += values[i];
  return total;
}

MF_AVX2 bool AllFiniteAvx2(const float* values, size_t count) { return AllFiniteLoop(values, count); }
MF_AVX2 float MaxAvx2(const float* values, size_t count) { return MaxLoop(values, count); }
MF_AVX2 void ScaledExpAvx2(const float* logits, size_t count, float shift, float scale, float* out) {
  ScaledExpLoop(logits, count, shift, scale, out);
}
MF_AVX2 double SumAvx2(const float* values, size_t count) { return SumLoop(values, count); }

bool HasAvx2() {
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  return has_avx2;
}

}  // namespace

bool AllFinite(const float* values, size_t count) {
  return HasAvx2() ? AllFiniteAvx2(values, count) : AllFiniteLoop(values, count);
}

float MaxValue(const float* values, size_t count) {
  return HasAvx2() ? MaxAvx2(values, count) : MaxLoop(values, count);
}

void ScaledExp(const float* logits, size_t count, float shift, float scale, float* out) {
  if (HasAvx2()) {
    ScaledExpAvx2(logits, count, shift, scale, out);
  } else {
    ScaledExpLoop(logits, count, shift, scale, out);
  }
}

double Sum(const float* values, size_t count) { return HasAvx2() ? SumAvx2(values, count) : SumLoop(values, count); }

}  // namespace mf
