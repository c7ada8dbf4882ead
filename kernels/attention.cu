#include <algorithm>

#include "kernels/attention.h"
#include "kernels/decode_attention.cuh"
#include "kernels/stick_breaking.cuh"

namespace mf::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Keys per pass: one per lane of the warp that scans them. Short passes keep the rows a
// block reads for its logits in L2 until it reads them again as values.
constexpr int kChunk = 32;

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

constexpr int kKeysPerWarp = 2;     // keys whose logits a warp computes together
constexpr int kValuesInFlight = 4;  // value rows a thread loads before using them

// One block per (token, head, split), for all top_k query slots of the token at once, so
// each cached key/value row is read once for all of them. Each chunk of keys: logits by
// warps (a key per warp, 16-byte loads across the head dimension), a block scan of
// softplus terms per slot in newest-first order for the log-space stick, then the
// weighted sum of values, threads owning 8 dimensions each and splitting the keys.
template <typename CacheT, int kMaxTopK>
__global__ void __launch_bounds__(kThreads) StickBreakingKernel(AttentionArgs args) {
  const CacheT* cache = static_cast<const CacheT*>(args.cache);
  __shared__ float logits[kMaxTopK][kChunk];  // then the weights
  __shared__ float chunk_mass[kMaxTopK];      // Σ softplus over the pass's keys, per slot
  extern __shared__ float shared[];  // queries [top_k][head_dim], then [kThreads][8] for the final sums
  float* query = shared;

  const int split = blockIdx.y;
  const int token = blockIdx.x / args.num_heads;
  const int head = blockIdx.x % args.num_heads;
  const int top_k = args.top_k;
  const int att_hidden = args.num_heads * args.head_dim;
  const int seq = args.token_seq[token];
  const int position = args.token_pos[token];
  if (SkipsSequence(args, seq)) return;
  const int32_t* block_table = args.block_tables + static_cast<int64_t>(seq) * args.max_blocks;
  const float scale = rsqrtf(static_cast<float>(args.head_dim));
  for (int i = threadIdx.x; i < top_k * args.head_dim; i += kThreads) {
    const int rank = i / args.head_dim, c = i % args.head_dim;
    const int slot = args.token_slots[token * top_k + rank];
    query[i] = args.queries[static_cast<int64_t>(slot) * att_hidden + head * args.head_dim + c] * scale;
  }
  __syncthreads();

  // Values: thread t owns dimensions [8 * (t % groups), +8) and every key_lanes-th key.
  const int groups = args.head_dim / kDimsPerLoad, key_lanes = kThreads / groups;
  const int group = threadIdx.x % groups, key_lane = threadIdx.x / groups;
  float accumulator[kMaxTopK][kDimsPerLoad] = {};
  float log_remaining[kMaxTopK] = {};  // per slot: -Σ softplus(l_m) over this split's keys already passed
  // Split s takes keys_per_split keys counted back from the newest, in chunks of kChunk.
  const KeyRange range = SplitKeys(position, split, args.num_splits);
  const int first_newest = range.newest, oldest = range.oldest;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int newest = first_newest; newest >= oldest; newest -= kChunk) {
    bool spent = true;
#pragma unroll
    for (int rank = 0; rank < kMaxTopK && rank < top_k; ++rank) spent = spent && -log_remaining[rank] >= kNegligibleLogMass;
    if (spent) break;
    const int count = min(kChunk, newest - oldest + 1);
    // 1. logits of keys newest, newest-1, ..., newest-count+1 (index r = newest - j), every
    // slot; each warp takes kKeysPerWarp keys at a time, their loads in flight together.
    for (int first = warp; first < count; first += kWarps * kKeysPerWarp) {
      const CacheT* key[kKeysPerWarp];
#pragma unroll
      for (int u = 0; u < kKeysPerWarp; ++u) {
        const int j = newest - min(first + u * kWarps, count - 1);
        key[u] = cache + CacheRow(block_table, args.block_size, j) * args.row_width + head * args.head_dim;
      }
      float dots[kKeysPerWarp][kMaxTopK] = {};
      for (int c = lane * kDimsPerLoad; c < args.head_dim; c += 32 * kDimsPerLoad) {
        float k_values[kKeysPerWarp][kDimsPerLoad];
#pragma unroll
        for (int u = 0; u < kKeysPerWarp; ++u) LoadDims(key[u] + c, k_values[u]);
#pragma unroll
        for (int rank = 0; rank < kMaxTopK && rank < top_k; ++rank) {
#pragma unroll
          for (int e = 0; e < kDimsPerLoad; ++e) {
            const float q = query[rank * args.head_dim + c + e];
#pragma unroll
            for (int u = 0; u < kKeysPerWarp; ++u) dots[u][rank] += q * k_values[u][e];
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kKeysPerWarp; ++u) {
        const int r = first + u * kWarps;
#pragma unroll
        for (int rank = 0; rank < kMaxTopK && rank < top_k; ++rank) {
          for (int offset = 16; offset > 0; offset /= 2) {
            dots[u][rank] += __shfl_xor_sync(0xffffffffu, dots[u][rank], offset);
          }
          if (lane == 0 && r < count) logits[rank][r] = dots[u][rank];
        }
      }
    }
    __syncthreads();
    // 2. per slot, an exclusive scan of softplus(l) in newest-first order (the stick used by
    // newer keys), by warp 0 with shuffles
    if (warp == 0) {
#pragma unroll
      for (int rank = 0; rank < kMaxTopK && rank < top_k; ++rank) {
        const float logit = lane < count ? logits[rank][lane] : 0.0f;
        const float term = lane < count ? Softplus(logit) : 0.0f;
        float inclusive = term;
        for (int offset = 1; offset < 32; offset *= 2) {
          const float before = __shfl_up_sync(0xffffffffu, inclusive, offset);
          if (lane >= offset) inclusive += before;
        }
        float exclusive = __shfl_up_sync(0xffffffffu, inclusive, 1);
        if (lane == 0) exclusive = 0.0f;
        if (lane < count) logits[rank][lane] = expf(log_remaining[rank] - exclusive - Softplus(-logit));
        if (lane == 31) chunk_mass[rank] = inclusive;
      }
    }
    __syncthreads();
#pragma unroll
    for (int rank = 0; rank < kMaxTopK && rank < top_k; ++rank) log_remaining[rank] -= chunk_mass[rank];
    // 3. o[rank] += Σ_r weight[rank][r] · v_{newest - r}
    // Each thread loads kValuesInFlight rows before using the first.
    if (key_lane < key_lanes) {
      for (int first = key_lane; first < count; first += key_lanes * kValuesInFlight) {
        float v_values[kValuesInFlight][kDimsPerLoad];
#pragma unroll
        for (int u = 0; u < kValuesInFlight; ++u) {
          const int j = newest - min(first + u * key_lanes, count - 1);
          const int64_t row = CacheRow(block_table, args.block_size, j);
          LoadDims(cache + row * args.row_width + args.value_offset + head * args.head_dim + group * kDimsPerLoad,
                   v_values[u]);
        }
#pragma unroll
        for (int u = 0; u < kValuesInFlight; ++u) {
          const int r = first + u * key_lanes;
          if (r >= count) break;
#pragma unroll
          for (int rank = 0; rank < kMaxTopK && rank < top_k; ++rank) {
            const float weight = logits[rank][r];
#pragma unroll
            for (int e = 0; e < kDimsPerLoad; ++e) accumulator[rank][e] += weight * v_values[u][e];
          }
        }
      }
    }
    __syncthreads();  // logits/weights are rewritten by the next chunk
  }
  // Sum the key lanes' partial outputs, one slot at a time, through shared memory.
  float* partial = shared + top_k * args.head_dim;
#pragma unroll
  for (int rank = 0; rank < kMaxTopK && rank < top_k; ++rank) {
    for (int e = 0; e < kDimsPerLoad; ++e) partial[threadIdx.x * kDimsPerLoad + e] = accumulator[rank][e];
    __syncthreads();
    const int slot = args.token_slots[token * top_k + rank];
    float* destination = args.num_splits == 1
                             ? args.out + static_cast<int64_t>(slot) * att_hidden + head * args.head_dim
                             : args.partial_out +
                                   ((static_cast<int64_t>(slot) * args.num_heads + head) * args.num_splits + split) *
                                       args.head_dim;
    for (int c = threadIdx.x; c < args.head_dim; c += kThreads) {
      float sum = 0;
      for (int lane_index = 0; lane_index < key_lanes; ++lane_index) {
        sum += partial[(lane_index * groups + c / kDimsPerLoad) * kDimsPerLoad + c % kDimsPerLoad];
      }
      destination[c] = sum;
    }
    if (args.num_splits > 1 && threadIdx.x == 0) {
      args.partial_mass[(static_cast<int64_t>(slot) * args.num_heads + head) * args.num_splits + split] =
          -log_remaining[rank];
    }
    __syncthreads();  // `partial` is rewritten for the next slot
  }
}

// Right to left: a newer split's stick mass scales every older split by exp(-mass). The
// scales come first (one thread, from masses staged in shared memory), so the partial
// outputs' loads do not wait on one another: 16 splits' values are in flight at once.
__global__ void CombineSplitsKernel(AttentionArgs args) {
  extern __shared__ float split_scale[];  // [num_splits rounded up to 8]
  __shared__ int used_splits;
  const int slot = blockIdx.x / args.num_heads;
  const int head = blockIdx.x % args.num_heads;
  if (SkipsSequence(args, args.token_seq[args.slot_tokens[slot]])) return;
  const float* partial = args.partial_out + static_cast<int64_t>(blockIdx.x) * args.num_splits * args.head_dim;
  const float* mass = args.partial_mass + static_cast<int64_t>(blockIdx.x) * args.num_splits;
  for (int split = threadIdx.x; split < (args.num_splits + 7) / 8 * 8; split += blockDim.x) {
    split_scale[split] = split < args.num_splits ? mass[split] : 0.0f;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float carried = 0;
    int split = 0;
    for (; split < args.num_splits && carried < kNegligibleLogMass; ++split) {
      const float split_mass = split_scale[split];
      split_scale[split] = expf(-carried);
      carried += split_mass;
    }
    used_splits = split;
  }
  __syncthreads();
  float* out = args.out + static_cast<int64_t>(slot) * args.num_heads * args.head_dim + head * args.head_dim;
  constexpr int kSplitsInFlight = 16;  // partial outputs loaded together, then added in order
  for (int c = threadIdx.x; c < args.head_dim; c += blockDim.x) {
    float total = 0;
    for (int first = 0; first < used_splits; first += kSplitsInFlight) {
      float values[kSplitsInFlight];
#pragma unroll
      for (int j = 0; j < kSplitsInFlight; ++j) {
        values[j] = first + j < used_splits ? partial[static_cast<int64_t>(first + j) * args.head_dim + c] : 0.0f;
      }
#pragma unroll
      for (int j = 0; j < kSplitsInFlight; ++j) {
        if (first + j < used_splits) total += split_scale[first + j] * values[j];
      }
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

int AttentionSplits(int num_tokens, int top_k, int num_heads, int head_dim, int max_context) {
  constexpr int kTargetBlocks = 4 * 132;           // four blocks per multiprocessor of an H100
  constexpr int64_t kMaxPartialFloats = 16 << 20;  // 64 MB of partial outputs at most
  const int64_t blocks = static_cast<int64_t>(num_tokens) * num_heads;
  if (blocks == 0) return 1;
  const int64_t chunks = (max_context + kSplitGranularity - 1) / kSplitGranularity;
  const int64_t wanted = (kTargetBlocks + blocks - 1) / blocks;
  const int64_t affordable = kMaxPartialFloats / (blocks * top_k * head_dim);
  return static_cast<int>(std::max<int64_t>(1, std::min({chunks, wanted, affordable})));
}

template <typename CacheT>
cudaError_t StickBreakingAttention(const AttentionArgs& args, cudaStream_t stream) {
  // 16-byte rows of the head dimension, at most one group of 8 per thread; up to 8 slots per token.
  if (args.head_dim % kDimsPerLoad != 0 || args.head_dim > kDimsPerLoad * kThreads) return cudaErrorInvalidValue;
  if (args.top_k < 1 || args.top_k > 8 || args.num_slots != args.num_tokens * args.top_k) return cudaErrorInvalidValue;
  if (args.num_splits > 1 && (args.partial_out == nullptr || args.partial_mass == nullptr)) return cudaErrorInvalidValue;
  const int blocks = args.num_tokens * args.num_heads;
  if (blocks == 0) return cudaSuccess;
  const size_t shared = (static_cast<size_t>(args.top_k) * args.head_dim + kThreads * kDimsPerLoad) * sizeof(float);
  const dim3 grid(blocks, args.num_splits);
  if (LaunchWarpSplitAttention<CacheT>(args, stream)) {
    // the common shapes: kernels/decode_attention.cu
  } else if (args.top_k <= 2) {
    StickBreakingKernel<CacheT, 2><<<grid, kThreads, shared, stream>>>(args);
  } else {
    const cudaError_t configured = cudaFuncSetAttribute(
        StickBreakingKernel<CacheT, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
    if (configured != cudaSuccess) return configured;
    StickBreakingKernel<CacheT, 8><<<grid, kThreads, shared, stream>>>(args);
  }
  if (args.num_splits > 1) {
    // Scales padded to a multiple of 8 (whole 16-byte pieces of shared memory).
    const size_t scale_bytes = (args.num_splits + 7) / 8 * 8 * sizeof(float);
    CombineSplitsKernel<<<args.num_slots * args.num_heads, kThreads, scale_bytes, stream>>>(args);
  }
  return cudaGetLastError();
}

template cudaError_t WriteKv<__nv_bfloat16>(const float*, const float*, const int32_t*, int, int, int, __nv_bfloat16*,
                                           cudaStream_t);
template cudaError_t WriteKv<float>(const float*, const float*, const int32_t*, int, int, int, float*, cudaStream_t);
template cudaError_t StickBreakingAttention<__nv_bfloat16>(const AttentionArgs&, cudaStream_t);
template cudaError_t StickBreakingAttention<float>(const AttentionArgs&, cudaStream_t);

}  // namespace mf::kernels
