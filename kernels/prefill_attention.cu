#include "kernels/prefill_attention.h"
#include "kernels/stick_breaking.cuh"
#include "kernels/vector_io.cuh"

#include <type_traits>

namespace mf::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ float ToFloat(__nv_bfloat16 value) { return __bfloat162float(value); }
__device__ float ToFloat(float value) { return value; }

// Copies a row of `width` values, converting to the destination's type: 4-wide when
// `vectorized` (the caller checked widths and offsets), else one value per thread.
template <typename From, typename To>
__device__ __forceinline__ void CopyRow(const From* __restrict__ source, To* __restrict__ destination, int width,
                                        bool vectorized) {
  if (vectorized) {
    for (int c = 4 * threadIdx.x; c < width; c += 4 * blockDim.x) Store4(destination + c, Load4(source + c));
    return;
  }
  for (int c = threadIdx.x; c < width; c += blockDim.x) {
    if constexpr (std::is_same_v<To, float>) {
      destination[c] = ToFloat(source[c]);
    } else {
      destination[c] = __float2bfloat16(ToFloat(source[c]));
    }
  }
}

__global__ void GatherQueriesKernel(const float* __restrict__ queries, const int32_t* __restrict__ token_slots,
                                    int width, __nv_bfloat16* __restrict__ q) {
  const int row = blockIdx.x;
  CopyRow(queries + static_cast<int64_t>(token_slots[row]) * width, q + static_cast<int64_t>(row) * width, width,
          width % 4 == 0);
}

// Block (j, s): position j of sequence first + s, whose keys start `length` rows after the previous one's.
template <typename CacheT>
__global__ void GatherKeysKernel(const CacheT* __restrict__ cache, int row_width, int column,
                                 const int32_t* __restrict__ block_tables, int table_stride, int block_size, int width,
                                 __nv_bfloat16* __restrict__ keys) {
  const int j = blockIdx.x, sequence = blockIdx.y;
  const int32_t* table = block_tables + static_cast<int64_t>(sequence) * table_stride;
  const CacheT* source = cache + CacheRow(table, block_size, j) * row_width + column;
  __nv_bfloat16* destination = keys + (static_cast<int64_t>(sequence) * gridDim.x + j) * width;
  CopyRow(source, destination, width, width % 4 == 0 && row_width % 4 == 0 && column % 4 == 0);
}

// One warp per row of logits, 32 keys at a time from the query's own position backwards:
// a warp scan of softplus terms gives each key the stick its newer keys used up.
__global__ void __launch_bounds__(kThreads) StickBreakingWeightsKernel(WeightPieces pieces, const float* __restrict__ logits,
                                                                       __nv_bfloat16* __restrict__ high,
                                                                       __nv_bfloat16* __restrict__ low) {
  const WeightPiece& piece = pieces.pieces[blockIdx.y];
  const int row = blockIdx.x * kWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= piece.rows * pieces.heads) return;
  const int query = row % piece.rows;
  const int position = piece.first_position + query / pieces.top_k;
  const int64_t base = piece.offset + static_cast<int64_t>(row) * piece.keys;
  const float* l = logits + base;
  __nv_bfloat16* w_high = high + base;
  __nv_bfloat16* w_low = low + base;
  const __nv_bfloat16 zero = __float2bfloat16(0.0f);
  for (int j = position + 1 + lane; j < piece.keys; j += 32) w_high[j] = w_low[j] = zero;  // the future

  float log_remaining = 0;  // -Σ softplus(l_m) over the keys already passed
  int newest = position;
  for (; newest >= 0 && -log_remaining < kNegligibleLogMass; newest -= 32) {
    const int j = newest - lane;
    const float x = j >= 0 ? l[j] * pieces.scale : 0.0f;
    const float term = j >= 0 ? Softplus(x) : 0.0f;
    float inclusive = term;
    for (int offset = 1; offset < 32; offset *= 2) {
      const float other = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += other;
    }
    if (j >= 0) {
      const float weight = expf(log_remaining - (inclusive - term) - Softplus(-x));
      const __nv_bfloat16 weight_high = __float2bfloat16(weight);
      w_high[j] = weight_high;
      w_low[j] = __float2bfloat16(weight - __bfloat162float(weight_high));
    }
    log_remaining -= __shfl_sync(0xffffffffu, inclusive, 31);
  }
  for (int j = lane; j <= newest; j += 32) w_high[j] = w_low[j] = zero;  // past the spent stick
}

__global__ void ScatterSlotsKernel(const float* __restrict__ o, const int32_t* __restrict__ token_slots,
                                   const int32_t* __restrict__ token_seq, const int32_t* __restrict__ seq_new_tokens,
                                   int min_new_tokens, int top_k, int width, float* __restrict__ out) {
  const int row = blockIdx.x;
  if (seq_new_tokens[token_seq[row / top_k]] < min_new_tokens) return;
  CopyRow(o + static_cast<int64_t>(row) * width, out + static_cast<int64_t>(token_slots[row]) * width, width,
          width % 4 == 0);
}

}  // namespace

cudaError_t GatherQueries(const float* queries, const int32_t* token_slots, int num_tokens, int top_k, int width,
                          __nv_bfloat16* q, cudaStream_t stream) {
  if (num_tokens > 0) GatherQueriesKernel<<<num_tokens * top_k, kThreads, 0, stream>>>(queries, token_slots, width, q);
  return cudaGetLastError();
}

template <typename CacheT>
cudaError_t GatherKeys(const CacheT* cache, int row_width, int column, const int32_t* block_tables, int table_stride,
                       int num_sequences, int block_size, int length, int width, __nv_bfloat16* keys,
                       cudaStream_t stream) {
  if (length > 0 && num_sequences > 0) {
    if (num_sequences > 65535) return cudaErrorInvalidValue;
    const dim3 grid(static_cast<unsigned>(length), static_cast<unsigned>(num_sequences));
    GatherKeysKernel<CacheT><<<grid, kThreads, 0, stream>>>(cache, row_width, column, block_tables, table_stride,
                                                            block_size, width, keys);
  }
  return cudaGetLastError();
}

cudaError_t StickBreakingWeights(const WeightPieces& pieces, int max_rows, const float* logits, __nv_bfloat16* high,
                                 __nv_bfloat16* low, cudaStream_t stream) {
  if (pieces.count <= 0 || max_rows <= 0) return cudaSuccess;
  if (pieces.count > kMaxWeightPieces) return cudaErrorInvalidValue;
  const dim3 grid((max_rows * pieces.heads + kWarps - 1) / kWarps, pieces.count);
  StickBreakingWeightsKernel<<<grid, kThreads, 0, stream>>>(pieces, logits, high, low);
  return cudaGetLastError();
}

cudaError_t ScatterSlots(const float* o, const int32_t* token_slots, const int32_t* token_seq,
                         const int32_t* seq_new_tokens, int min_new_tokens, int num_tokens, int top_k, int width,
                         float* out, cudaStream_t stream) {
  if (num_tokens > 0) {
    ScatterSlotsKernel<<<num_tokens * top_k, kThreads, 0, stream>>>(o, token_slots, token_seq, seq_new_tokens,
                                                                    min_new_tokens, top_k, width, out);
  }
  return cudaGetLastError();
}

template cudaError_t GatherKeys<__nv_bfloat16>(const __nv_bfloat16*, int, int, const int32_t*, int, int, int, int,
                                              int, __nv_bfloat16*, cudaStream_t);
template cudaError_t GatherKeys<float>(const float*, int, int, const int32_t*, int, int, int, int, int, __nv_bfloat16*,
                                       cudaStream_t);

}  // namespace mf::kernels
