// Four consecutive values moved as one access (16 bytes of fp32, 8 of bf16): row kernels
// that are bound by memory traffic use these when a row's width and offsets are multiples
// of four, so every access is aligned. Conversions round exactly as the scalar ones do.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace mf::kernels {

__device__ __forceinline__ float4 Load4(const float* source) { return *reinterpret_cast<const float4*>(source); }

__device__ __forceinline__ float4 Load4(const __nv_bfloat16* source) {
  const uint2 bits = *reinterpret_cast<const uint2*>(source);
  const __nv_bfloat162 low = *reinterpret_cast<const __nv_bfloat162*>(&bits.x);
  const __nv_bfloat162 high = *reinterpret_cast<const __nv_bfloat162*>(&bits.y);
  return make_float4(__low2float(low), __high2float(low), __low2float(high), __high2float(high));
}

__device__ __forceinline__ void Store4(float* destination, float4 values) {
  *reinterpret_cast<float4*>(destination) = values;
}

__device__ __forceinline__ void Store4(__nv_bfloat16* destination, float4 values) {
  const __nv_bfloat162 low = __floats2bfloat162_rn(values.x, values.y);
  const __nv_bfloat162 high = __floats2bfloat162_rn(values.z, values.w);
  uint2 bits;
  bits.x = *reinterpret_cast<const uint32_t*>(&low);
  bits.y = *reinterpret_cast<const uint32_t*>(&high);
  *reinterpret_cast<uint2*>(destination) = bits;
}

template <typename Op>
__device__ __forceinline__ float4 Map4(float4 v, Op op) {
  return make_float4(op(v.x), op(v.y), op(v.z), op(v.w));
}

}  // namespace mf::kernels
