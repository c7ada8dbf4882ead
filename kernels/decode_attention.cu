// Warp-split stick-breaking attention for decode-shaped work: each warp of a block walks
// its own run of keys newest to oldest, and with one read of a cached row computes the
// logit (a warp-wide dot product), the row's stick-breaking weight, and (when keys and
// values are one vector) its weighted value. Warps' runs then combine right to left as
// splits do: no block-wide scan per pass, and each row leaves memory once.
#include <algorithm>

#include "kernels/decode_attention.cuh"
#include "kernels/stick_breaking.cuh"

namespace mf::kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kTopK = 2;          // query slots per token handled here
constexpr int kKeysInFlight = 2;  // rows a warp loads before using the first
constexpr int kMinBlocks = 32;    // (token, head) pairs from which this kernel is used

// A lane's dimensions of one cached row: [(g * 32 + lane) * 8, +8) for g < kGroups.
template <typename CacheT, int kGroups>
__device__ __forceinline__ void LoadLaneDims(const CacheT* row, int lane, float (&out)[kGroups * kDimsPerLoad]) {
#pragma unroll
  for (int g = 0; g < kGroups; ++g) {
    float values[kDimsPerLoad];
    LoadDims(row + (g * 32 + lane) * kDimsPerLoad, values);
#pragma unroll
    for (int e = 0; e < kDimsPerLoad; ++e) out[g * kDimsPerLoad + e] = values[e];
  }
}

// head_dim = kGroups * 256: lane l owns dimensions [(g * 32 + l) * 8, +8) for g < kGroups,
// so each group of a row is one coalesced 512-byte read (bf16) across the warp.
template <typename CacheT, int kGroups>
__global__ void __launch_bounds__(kThreads) WarpSplitKernel(AttentionArgs args) {
  constexpr int kLaneDims = kGroups * kDimsPerLoad;
  constexpr int kHeadDim = kGroups * 32 * kDimsPerLoad;
  __shared__ float query[kTopK][kHeadDim];
  __shared__ float combined[kTopK][kHeadDim];
  __shared__ float warp_mass[kWarps][kTopK];
  const CacheT* cache = static_cast<const CacheT*>(args.cache);
  const int token = blockIdx.x / args.num_heads, head = blockIdx.x % args.num_heads;
  const int seq = args.token_seq[token], position = args.token_pos[token];
  if (SkipsSequence(args, seq)) return;
  const int top_k = args.top_k, att_hidden = args.num_heads * kHeadDim;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float scale = rsqrtf(static_cast<float>(kHeadDim));
  for (int i = threadIdx.x; i < top_k * kHeadDim; i += kThreads) {
    const int rank = i / kHeadDim, c = i % kHeadDim;
    const int slot = args.token_slots[token * top_k + rank];
    query[rank][c] = args.queries[static_cast<int64_t>(slot) * att_hidden + head * kHeadDim + c] * scale;
    combined[rank][c] = 0.0f;
  }
  __syncthreads();

  // Warp w takes the w-th run of the split's keys, newest first.
  const KeyRange range = SplitKeys(position, blockIdx.y, args.num_splits);
  const int per_warp = (max(range.newest - range.oldest + 1, 0) + kWarps - 1) / kWarps;
  const int warp_newest = range.newest - warp * per_warp;
  const int warp_oldest = max(warp_newest - per_warp + 1, range.oldest);
  const int32_t* block_table = args.block_tables + static_cast<int64_t>(seq) * args.max_blocks;
  auto row_of = [&](int j) { return cache + CacheRow(block_table, args.block_size, j) * args.row_width + head * kHeadDim; };

  float accumulator[kTopK][kLaneDims] = {};
  float log_remaining[kTopK] = {};  // -Σ softplus over this warp's keys so far
  for (int first = warp_newest; first >= warp_oldest; first -= kKeysInFlight) {
    if (-log_remaining[0] >= kNegligibleLogMass && (top_k == 1 || -log_remaining[1] >= kNegligibleLogMass)) break;
    float rows[kKeysInFlight][kLaneDims];
#pragma unroll
    for (int u = 0; u < kKeysInFlight; ++u) {
      LoadLaneDims<CacheT, kGroups>(row_of(max(first - u, warp_oldest)), lane, rows[u]);
    }
#pragma unroll
    for (int u = 0; u < kKeysInFlight; ++u) {
      const int j = first - u;
      if (j < warp_oldest) break;
      float weights[kTopK];
#pragma unroll
      for (int rank = 0; rank < kTopK; ++rank) {
        if (rank >= top_k) break;
        float dot = 0.0f;
#pragma unroll
        for (int g = 0; g < kGroups; ++g) {
#pragma unroll
          for (int e = 0; e < kDimsPerLoad; ++e) {
            dot += query[rank][(g * 32 + lane) * kDimsPerLoad + e] * rows[u][g * kDimsPerLoad + e];
          }
        }
        for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
        weights[rank] = expf(log_remaining[rank] - Softplus(-dot));
        log_remaining[rank] -= Softplus(dot);
      }
      if (args.value_offset != 0) {  // separate value vectors: read this row's value now
        LoadLaneDims<CacheT, kGroups>(row_of(j) + args.value_offset, lane, rows[u]);
      }
#pragma unroll
      for (int rank = 0; rank < kTopK; ++rank) {
        if (rank >= top_k) break;
#pragma unroll
        for (int d = 0; d < kLaneDims; ++d) accumulator[rank][d] += weights[rank] * rows[u][d];
      }
    }
  }

  // Right to left: warp w's output is scaled by the stick its newer warps used up.
  if (lane == 0) {
    for (int rank = 0; rank < kTopK; ++rank) warp_mass[warp][rank] = rank < top_k ? -log_remaining[rank] : 0.0f;
  }
  __syncthreads();
  for (int w = 0; w < kWarps; ++w) {
    if (warp == w) {
#pragma unroll
      for (int rank = 0; rank < kTopK; ++rank) {
        if (rank >= top_k) break;
        float carried = 0.0f;
        for (int newer = 0; newer < w; ++newer) carried += warp_mass[newer][rank];
        const float warp_scale = expf(-carried);
#pragma unroll
        for (int g = 0; g < kGroups; ++g) {
#pragma unroll
          for (int e = 0; e < kDimsPerLoad; ++e) {
            combined[rank][(g * 32 + lane) * kDimsPerLoad + e] += warp_scale * accumulator[rank][g * kDimsPerLoad + e];
          }
        }
      }
    }
    __syncthreads();
  }
  for (int rank = 0; rank < top_k; ++rank) {
    const int slot = args.token_slots[token * top_k + rank];
    const int64_t partial_index = (static_cast<int64_t>(slot) * args.num_heads + head) * args.num_splits + blockIdx.y;
    float* destination = args.num_splits == 1 ? args.out + static_cast<int64_t>(slot) * att_hidden + head * kHeadDim
                                              : args.partial_out + partial_index * kHeadDim;
    for (int c = threadIdx.x; c < kHeadDim; c += kThreads) destination[c] = combined[rank][c];
    if (args.num_splits > 1 && threadIdx.x == 0) {
      float mass = 0.0f;
      for (int w = 0; w < kWarps; ++w) mass += warp_mass[w][rank];
      args.partial_mass[partial_index] = mass;
    }
  }
}

template <typename CacheT, int kGroups>
void Launch(const AttentionArgs& args, cudaStream_t stream) {
  const dim3 grid(args.num_tokens * args.num_heads, args.num_splits);
  WarpSplitKernel<CacheT, kGroups><<<grid, kThreads, 0, stream>>>(args);
}

}  // namespace

template <typename CacheT>
bool LaunchWarpSplitAttention(const AttentionArgs& args, cudaStream_t stream) {
  // Tiny batches run split into many short blocks already; the block kernel's shorter
  // per-block critical path measured faster there.
  if (args.top_k > kTopK || args.num_tokens * args.num_heads < kMinBlocks) return false;
  switch (args.head_dim) {
    case 256:
      Launch<CacheT, 1>(args, stream);
      return true;
    case 512:
      Launch<CacheT, 2>(args, stream);
      return true;
    case 1024:
      Launch<CacheT, 4>(args, stream);
      return true;
    default:
      return false;
  }
}

template bool LaunchWarpSplitAttention<__nv_bfloat16>(const AttentionArgs&, cudaStream_t);
template bool LaunchWarpSplitAttention<float>(const AttentionArgs&, cudaStream_t);

}  // namespace mf::kernels
