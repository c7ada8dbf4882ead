// Helpers the paged attention kernels share (device code, private to kernels/).
#pragma once

#include <cuda_bf16.h>

#include "kernels/attention.h"
#include "kernels/stick_breaking.cuh"

namespace mf::kernels {

// Histories split across blocks in multiples of this many keys: short splits give small
// decode batches enough blocks to keep the GPU busy.
constexpr int kSplitGranularity = 16;
constexpr int kDimsPerLoad = 8;  // one 16-byte load of bf16 (two of fp32)

// Whether the kernels leave this sequence to the tensor-core prompt path.
__device__ __forceinline__ bool SkipsSequence(const AttentionArgs& args, int seq) {
  return args.seq_new_tokens != nullptr && args.seq_new_tokens[seq] >= args.skip_min_new_tokens;
}

// The keys of split `split` of a query at `position`: [oldest, newest], counted back from the
// query (split 0 holds the newest keys).
struct KeyRange {
  int newest, oldest;
};
__device__ __forceinline__ KeyRange SplitKeys(int position, int split, int num_splits) {
  const int per_split_rough = (position + 1 + num_splits - 1) / num_splits;
  const int keys_per_split = (per_split_rough + kSplitGranularity - 1) / kSplitGranularity * kSplitGranularity;
  const int newest = position - split * keys_per_split;
  return {newest, max(newest - keys_per_split + 1, 0)};
}

template <typename CacheT>
__device__ void LoadDims(const CacheT* source, float (&values)[kDimsPerLoad]);
template <>
__device__ __forceinline__ void LoadDims<__nv_bfloat16>(const __nv_bfloat16* source, float (&values)[kDimsPerLoad]) {
  const uint4 packed = *reinterpret_cast<const uint4*>(source);
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&packed);
  for (int i = 0; i < kDimsPerLoad / 2; ++i) {
    const float2 pair = __bfloat1622float2(pairs[i]);
    values[2 * i] = pair.x;
    values[2 * i + 1] = pair.y;
  }
}
template <>
__device__ __forceinline__ void LoadDims<float>(const float* source, float (&values)[kDimsPerLoad]) {
  const float4 first = *reinterpret_cast<const float4*>(source), second = *reinterpret_cast<const float4*>(source + 4);
  values[0] = first.x, values[1] = first.y, values[2] = first.z, values[3] = first.w;
  values[4] = second.x, values[5] = second.y, values[6] = second.z, values[7] = second.w;
}


// The warp-split decode kernel for the common shapes (kernels/decode_attention.cu): false
// when it does not handle `args`.
template <typename CacheT>
bool LaunchWarpSplitAttention(const AttentionArgs& args, cudaStream_t stream);

}  // namespace mf::kernels
