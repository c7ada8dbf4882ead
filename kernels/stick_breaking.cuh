// The log-space arithmetic both stick-breaking attention paths share, so the paged
// kernel and the prompt path weigh keys identically.
#pragma once

#include <cstdint>

namespace mf::kernels {

// Once the stick used up exceeds this, every older weight is below fp32's smallest denormal.
constexpr float kNegligibleLogMass = 104.0f;

// The cache row holding position j of a sequence whose blocks are `block_table`.
__device__ __forceinline__ int64_t CacheRow(const int32_t* block_table, int block_size, int j) {
  return static_cast<int64_t>(block_table[j / block_size]) * block_size + j % block_size;
}

// log(1 + e^x) without overflow: -log(1 - σ(x)); and log σ(x) = -Softplus(-x).
__device__ __forceinline__ float Softplus(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }

}  // namespace mf::kernels
