#include <algorithm>
#include <cub/block/block_scan.cuh>

#include "kernels/attention.h"

namespace mf::kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 128;                    // keys per pass; their logits live in shared memory
constexpr int kKeysPerThread = kChunk / kThreads;
// Histories split across blocks in multiples of this many keys: short splits give small
// decode batches enough blocks to keep the GPU busy.
constexpr int kSplitGranularity = 16;
// Once the stick used up exceeds this, every older weight is below fp32's smallest denormal.
constexpr float kNegligibleLogMass = 104.0f;

// Whether the kernels leave this sequence to the tensor-core prompt path.
__device__ bool SkipsSequence(const AttentionArgs& args, int seq) {
  return args.seq_new_tokens != nullptr && args.seq_new_tokens[seq] >= args.skip_min_new_tokens;
}

__device__ float Softplus(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }

__device__ float ToFloat(__nv_bfloat16 value) { return __bfloat162float(value); }
__device__ float ToFloat(float value) { return value; }
template <typename CacheT>
__device__ CacheT FromFloat(float value);
template <>
__device__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float value) { return __float2bfloat16(value); }
template <>
__device__ float FromFloat<float>(float value) { return value; }

template <typename CacheT>
__global__ void WriteKvKernel(const float* __restrict__ key, const float* __restrict__ value,
                              const int32_t* __restrict__ cache_rows, int key_width, int row_width,
                              CacheT* __restrict__ cache) {
  const int token = blockIdx.x;
  CacheT* row = cache + static_cast<int64_t>(cache_rows[token]) * row_width;
  for (int c = threadIdx.x; c < key_width; c += blockDim.x) {
    row[c] = FromFloat<CacheT>(key[static_cast<int64_t>(token) * key_width + c]);
    if (value != nullptr) row[key_width + c] = FromFloat<CacheT>(value[static_cast<int64_t>(token) * key_width + c]);
  }
}

// One block per (slot, head). Each chunk: logits by warps (lanes split the head
// dimension), a block scan of softplus terms in newest-first order for the
// log-space stick, then the weighted sum of values with threads over dimensions.
template <typename CacheT>
__global__ void __launch_bounds__(kThreads) StickBreakingKernel(AttentionArgs args) {
  const CacheT* cache = static_cast<const CacheT*>(args.cache);
  using BlockScan = cub::BlockScan<float, kThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;
  __shared__ float logits[kChunk];
  __shared__ float weights[kChunk];
  __shared__ float chunk_mass;
  extern __shared__ float query[];  // head_dim

  const int split = blockIdx.y;
  const int slot = blockIdx.x / args.num_heads;
  const int head = blockIdx.x % args.num_heads;
  const int att_hidden = args.num_heads * args.head_dim;
  const int token = args.slot_tokens[slot];
  const int seq = args.token_seq[token];
  const int position = args.token_pos[token];
  if (SkipsSequence(args, seq)) return;
  const int32_t* block_table = args.block_tables + static_cast<int64_t>(seq) * args.max_blocks;
  const float scale = rsqrtf(static_cast<float>(args.head_dim));
  for (int c = threadIdx.x; c < args.head_dim; c += kThreads) {
    query[c] = args.queries[static_cast<int64_t>(slot) * att_hidden + head * args.head_dim + c] * scale;
  }
  __syncthreads();

  // Each thread owns output dimensions threadIdx.x, +kThreads, ... (up to 8 x 128 = 1024).
  constexpr int kMaxDimsPerThread = 8;
  float accumulator[kMaxDimsPerThread] = {};
  float log_remaining = 0;  // -Σ softplus(l_m) over this split's keys already passed
  // Split s takes keys_per_split keys counted back from the newest, in chunks of kChunk.
  const int keys = position + 1;
  const int per_split_rough = (keys + args.num_splits - 1) / args.num_splits;
  const int keys_per_split = (per_split_rough + kSplitGranularity - 1) / kSplitGranularity * kSplitGranularity;
  const int first_newest = position - split * keys_per_split;
  const int oldest = max(first_newest - keys_per_split + 1, 0);
  for (int newest = first_newest; newest >= oldest && -log_remaining < kNegligibleLogMass; newest -= kChunk) {
    const int count = min(kChunk, newest - oldest + 1);
    // 1. logits of keys newest, newest-1, ..., newest-count+1 (index r = newest - j)
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int r = warp; r < count; r += kWarps) {
      const int j = newest - r;
      const int64_t row = static_cast<int64_t>(block_table[j / args.block_size]) * args.block_size + j % args.block_size;
      const CacheT* key = cache + row * args.row_width + head * args.head_dim;
      float dot = 0;
      for (int c = lane; c < args.head_dim; c += 32) dot += query[c] * ToFloat(key[c]);
      for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
      if (lane == 0) logits[r] = dot;
    }
    __syncthreads();
    // 2. exclusive scan of softplus(l) in newest-first order: the stick used by newer keys
    float terms[kKeysPerThread];
    for (int i = 0; i < kKeysPerThread; ++i) {
      const int r = threadIdx.x * kKeysPerThread + i;
      terms[i] = r < count ? Softplus(logits[r]) : 0.0f;
    }
    float total;
    BlockScan(scan_storage).ExclusiveSum(terms, terms, total);
    for (int i = 0; i < kKeysPerThread; ++i) {
      const int r = threadIdx.x * kKeysPerThread + i;
      if (r < count) weights[r] = expf(log_remaining - terms[i] - Softplus(-logits[r]));
    }
    if (threadIdx.x == 0) chunk_mass = total;
    __syncthreads();
    // 3. o += Σ_r weights[r] · v_{newest - r}
    for (int r = 0; r < count; ++r) {
      const int j = newest - r;
      const int64_t row = static_cast<int64_t>(block_table[j / args.block_size]) * args.block_size + j % args.block_size;
      const CacheT* value = cache + row * args.row_width + args.value_offset + head * args.head_dim;
      const float weight = weights[r];
      for (int i = 0; i < kMaxDimsPerThread; ++i) {
        const int c = threadIdx.x + i * kThreads;
        if (c < args.head_dim) accumulator[i] += weight * ToFloat(value[c]);
      }
    }
    log_remaining -= chunk_mass;
    __syncthreads();  // logits/weights are rewritten by the next chunk
  }
  float* destination = args.num_splits == 1
                           ? args.out + static_cast<int64_t>(slot) * att_hidden + head * args.head_dim
                           : args.partial_out + (static_cast<int64_t>(blockIdx.x) * args.num_splits + split) * args.head_dim;
  for (int i = 0; i < kMaxDimsPerThread; ++i) {
    const int c = threadIdx.x + i * kThreads;
    if (c < args.head_dim) destination[c] = accumulator[i];
  }
  if (args.num_splits > 1 && threadIdx.x == 0) {
    args.partial_mass[static_cast<int64_t>(blockIdx.x) * args.num_splits + split] = -log_remaining;
  }
}

// Right to left: a newer split's stick mass scales every older split by exp(-mass).
__global__ void CombineSplitsKernel(AttentionArgs args) {
  const int slot = blockIdx.x / args.num_heads;
  const int head = blockIdx.x % args.num_heads;
  if (SkipsSequence(args, args.token_seq[args.slot_tokens[slot]])) return;
  const float* partial = args.partial_out + static_cast<int64_t>(blockIdx.x) * args.num_splits * args.head_dim;
  const float* mass = args.partial_mass + static_cast<int64_t>(blockIdx.x) * args.num_splits;
  float* out = args.out + static_cast<int64_t>(slot) * args.num_heads * args.head_dim + head * args.head_dim;
  for (int c = threadIdx.x; c < args.head_dim; c += blockDim.x) {
    float total = 0, carried = 0;
    for (int split = 0; split < args.num_splits && carried < kNegligibleLogMass; ++split) {
      total += expf(-carried) * partial[static_cast<int64_t>(split) * args.head_dim + c];
      carried += mass[split];
    }
    out[c] = total;
  }
}

}  // namespace

template <typename CacheT>
cudaError_t WriteKv(const float* key, const float* value, const int32_t* cache_rows, int num_tokens, int key_width,
                    int row_width, CacheT* cache, cudaStream_t stream) {
  if (num_tokens > 0) {
    WriteKvKernel<CacheT><<<num_tokens, 256, 0, stream>>>(key, value, cache_rows, key_width, row_width, cache);
  }
  return cudaGetLastError();
}

int AttentionSplits(int num_slots, int num_heads, int head_dim, int max_context) {
  constexpr int kTargetBlocks = 2 * 132;              // two waves of an H100's multiprocessors
  constexpr int64_t kMaxPartialFloats = 16 << 20;     // 64 MB of partial outputs at most
  const int64_t blocks = static_cast<int64_t>(num_slots) * num_heads;
  if (blocks == 0) return 1;
  const int64_t chunks = (max_context + kSplitGranularity - 1) / kSplitGranularity;
  const int64_t wanted = (kTargetBlocks + blocks - 1) / blocks;
  const int64_t affordable = kMaxPartialFloats / (blocks * head_dim);
  return static_cast<int>(std::max<int64_t>(1, std::min({chunks, wanted, affordable})));
}

template <typename CacheT>
cudaError_t StickBreakingAttention(const AttentionArgs& args, cudaStream_t stream) {
  if (args.head_dim > 8 * kThreads) return cudaErrorInvalidValue;
  if (args.num_splits > 1 && (args.partial_out == nullptr || args.partial_mass == nullptr)) return cudaErrorInvalidValue;
  const int blocks = args.num_slots * args.num_heads;
  if (blocks == 0) return cudaSuccess;
  StickBreakingKernel<CacheT><<<dim3(blocks, args.num_splits), kThreads, args.head_dim * sizeof(float), stream>>>(args);
  if (args.num_splits > 1) CombineSplitsKernel<<<blocks, kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

template cudaError_t WriteKv<__nv_bfloat16>(const float*, const float*, const int32_t*, int, int, int, __nv_bfloat16*,
                                           cudaStream_t);
template cudaError_t WriteKv<float>(const float*, const float*, const int32_t*, int, int, int, float*, cudaStream_t);
template cudaError_t StickBreakingAttention<__nv_bfloat16>(const AttentionArgs&, cudaStream_t);
template cudaError_t StickBreakingAttention<float>(const AttentionArgs&, cudaStream_t);

}  // namespace mf::kernels
