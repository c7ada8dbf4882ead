// Activation functions shared by the standalone kernels and fused epilogues, so a fused
// pass computes bit-for-bit what the separate one does.
#pragma once

namespace mf::kernels {

// GPT-2's tanh approximation of GELU (the experts' activation).
__device__ __forceinline__ float GeluNewValue(float v) {
  return 0.5f * v * (1.0f + tanhf(0.79788456080286535588f * (v + 0.044715f * v * v * v)));
}

// The exact, erf-based GELU (the routers' activation).
__device__ __forceinline__ float GeluExactValue(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752440f)); }

}  // namespace mf::kernels
