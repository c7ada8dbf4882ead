#include "kernels/expert_gemv.h"

#include <algorithm>

#include "kernels/activations.cuh"

namespace mf::kernels {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kColumnsPerLane = 8;                                // one 16-byte load of bf16 weights
constexpr int kLanesPerRow = 8;                                   // lanes sharing one weight row of the tile
constexpr int kTileColumns = kLanesPerRow * kColumnsPerLane;      // 64
constexpr int kRowGroups = 32 / kLanesPerRow;                     // rows a warp reads at once
constexpr int kRowStreams = kWarps * kRowGroups;                  // 32
constexpr int kRowsInFlight = 8;      // weight rows each thread loads before using the first
constexpr int kSlotsPerPass = 8;      // slot rows sharing one read of the weights
constexpr int kMaxSlice = 512;        // reduction rows per block, at most (staged inputs)
constexpr int kMinSlice = 64;
constexpr int kMaxSlices = 32;        // partial sums per output, at most (read back together)
constexpr int kTargetBlocks = 2 * 132;  // two blocks per multiprocessor of an H100/H200
constexpr int kMaxExperts = 1024;

int Tiles(int n) { return (n + kTileColumns - 1) / kTileColumns; }

struct Split {
  int slices, slice_rows;
};

// Short slices give small batches enough blocks to keep every multiprocessor reading
// weights; each slice adds a partial sum to reduce.
Split SplitFor(int num_slots, int num_experts, int k, int n) {
  const int blocks = Tiles(n) * std::min(num_experts, num_slots);
  const int wanted = (kTargetBlocks + blocks - 1) / blocks;
  const int most = std::clamp(k / kMinSlice, 1, kMaxSlices), least = (k + kMaxSlice - 1) / kMaxSlice;
  const int slices = std::max(least, std::min(wanted, most));
  const int rows = ((k + slices - 1) / slices + kRowStreams - 1) / kRowStreams * kRowStreams;
  return {(k + rows - 1) / rows, rows};
}

__device__ void Bf16x8ToFloat(const uint4& packed, float (&out)[kColumnsPerLane]) {
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&packed);
#pragma unroll
  for (int i = 0; i < kColumnsPerLane / 2; ++i) {
    const float2 pair = __bfloat1622float2(pairs[i]);
    out[2 * i] = pair.x;
    out[2 * i + 1] = pair.y;
  }
}

// Blocks of the grid's y dimension cover the non-empty experts only (at most one per slot):
// block row j works for the j-th expert with slots. The offsets come in with one parallel
// load, and one warp finds the j-th non-empty expert 32 experts at a time (ballots), so a
// block's start costs no chain of dependent steps per expert.
__device__ int ActiveExpert(const int32_t* __restrict__ offsets, int num_experts, int wanted) {
  __shared__ int32_t staged_offsets[kMaxExperts + 1];
  __shared__ int expert;
  for (int e = threadIdx.x; e <= num_experts; e += blockDim.x) staged_offsets[e] = offsets[e];
  __syncthreads();
  if (threadIdx.x < 32) {
    int found = -1, seen = 0;
    for (int base = 0; base < num_experts && found < 0; base += 32) {
      const int e = base + threadIdx.x;
      const unsigned active = __ballot_sync(0xffffffffu, e < num_experts && staged_offsets[e + 1] > staged_offsets[e]);
      const int count = __popc(active);
      if (wanted < seen + count) found = base + static_cast<int>(__fns(active, 0, wanted - seen + 1));
      seen += count;
    }
    if (threadIdx.x == 0) expert = found;
  }
  __syncthreads();
  return expert;
}

__device__ float Finish(GemvEpilogue epilogue, float value) {
  return epilogue == GemvEpilogue::kGeluNew ? GeluNewValue(value) : value;
}

// The block's sums for slots [first, first + count) of its segment over its slice of rows,
// for the 64 columns of its tile: to `partial` (slices > 1 or a combine), else finished to out.
__device__ void SlotPass(const ExpertGemvArgs& args, int expert, int first, int count, int slice, int slices,
                         int slice_rows, float (*staged)[kMaxSlice],
                         float (*warp_sums)[kSlotsPerPass][kTileColumns]) {
  const int k = args.k, n = args.n;
  const int k_begin = slice * slice_rows, k_rows = min(k, k_begin + slice_rows) - k_begin;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int stream = warp * kRowGroups + lane / kLanesPerRow;
  const int tile_column = (lane % kLanesPerRow) * kColumnsPerLane;
  const int column = blockIdx.x * kTileColumns + tile_column;
  const __nv_bfloat16* matrix = args.weights + (static_cast<int64_t>(expert) * k + k_begin) * n + column;
  // kRowsInFlight weight rows from `base` on, every load issued before the first is used:
  // small batches are bound by how many bytes each multiprocessor keeps in flight.
  auto load_rows = [&](int base, uint4 (&packed)[kRowsInFlight]) {
#pragma unroll
    for (int j = 0; j < kRowsInFlight; ++j) {
      const int row = base + j * kRowStreams;
      packed[j] = row < k_rows && column < n
                      ? __ldg(reinterpret_cast<const uint4*>(matrix + static_cast<int64_t>(row) * n))
                      : make_uint4(0, 0, 0, 0);
    }
  };
  // The first rows' loads go out before the inputs are staged, so their latencies overlap.
  uint4 packed[kRowsInFlight];
  load_rows(stream, packed);
  __syncthreads();  // the previous pass is done with `staged` and `warp_sums`
  for (int index = threadIdx.x; index < count * k_rows; index += kThreads) {
    const int r = index / k_rows, i = index % k_rows;
    const int slot = first + r;
    const int64_t source = args.gather == nullptr ? slot : args.gather[slot];
    const float value = args.x[source * k + k_begin + i];
    staged[r][i] = args.round_to_bf16 ? __bfloat162float(__float2bfloat16(value)) : value;
  }
  __syncthreads();
  float sums[kSlotsPerPass][kColumnsPerLane] = {};
  for (int base = stream; base < k_rows; base += kRowStreams * kRowsInFlight) {
    if (base != stream) load_rows(base, packed);
#pragma unroll
    for (int j = 0; j < kRowsInFlight; ++j) {
      const int row = base + j * kRowStreams;
      if (row >= k_rows) break;
      float weight[kColumnsPerLane];
      Bf16x8ToFloat(packed[j], weight);
#pragma unroll
      for (int r = 0; r < kSlotsPerPass; ++r) {
        const float x = staged[r][row];  // rows past `count` hold stale values; their sums are dropped
#pragma unroll
        for (int c = 0; c < kColumnsPerLane; ++c) sums[r][c] += x * weight[c];
      }
    }
  }
  // The warp's four row groups hold the same columns: add them (a fixed order), then the warps.
#pragma unroll
  for (int r = 0; r < kSlotsPerPass; ++r) {
#pragma unroll
    for (int c = 0; c < kColumnsPerLane; ++c) {
      sums[r][c] += __shfl_xor_sync(0xffffffffu, sums[r][c], kLanesPerRow);
      sums[r][c] += __shfl_xor_sync(0xffffffffu, sums[r][c], 2 * kLanesPerRow);
    }
  }
  if (lane < kLanesPerRow) {
    for (int r = 0; r < count; ++r) {
#pragma unroll
      for (int c = 0; c < kColumnsPerLane; ++c) warp_sums[warp][r][tile_column + c] = sums[r][c];
    }
  }
  __syncthreads();
  const bool direct = slices == 1 && args.epilogue != GemvEpilogue::kCombine;
  for (int index = threadIdx.x; index < count * kTileColumns; index += kThreads) {
    const int r = index / kTileColumns, c = index % kTileColumns;
    const int out_column = blockIdx.x * kTileColumns + c;
    if (out_column >= n) continue;
    float total = 0;
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w][r][c];
    const int64_t slot = first + r;
    if (direct) {
      args.out[slot * n + out_column] = Finish(args.epilogue, total);
    } else {
      args.workspace[(static_cast<int64_t>(slice) * args.num_slots + slot) * n + out_column] = total;
    }
  }
}

// slot's product at `column`: its slices' partial sums, loaded together, added in order.
__device__ float SlotProduct(const ExpertGemvArgs& args, int slices, int64_t slot, int column) {
  float partial[kMaxSlices];
#pragma unroll
  for (int slice = 0; slice < kMaxSlices; ++slice) {
    // Written by other blocks: read past L1, which is not coherent.
    partial[slice] = slice < slices
                         ? __ldcg(args.workspace + (static_cast<int64_t>(slice) * args.num_slots + slot) * args.n + column)
                         : 0.0f;
  }
  float total = 0;
#pragma unroll
  for (int slice = 0; slice < kMaxSlices; ++slice) {
    if (slice < slices) total += partial[slice];
  }
  return total;
}

// The last block of a column tile: the slices' sums, then the epilogue, for every slot.
__device__ void FinishTile(const ExpertGemvArgs& args, int slices) {
  const int n = args.n;
  if (args.epilogue != GemvEpilogue::kCombine) {
    for (int index = threadIdx.x; index < args.num_slots * kTileColumns; index += kThreads) {
      const int64_t slot = index / kTileColumns;
      const int column = blockIdx.x * kTileColumns + index % kTileColumns;
      if (column < n) args.out[slot * n + column] = Finish(args.epilogue, SlotProduct(args, slices, slot, column));
    }
    return;
  }
  // As CombineExperts: the gated products summed in rank order, then added to the residual.
  for (int index = threadIdx.x; index < args.num_tokens * kTileColumns; index += kThreads) {
    const int token = index / kTileColumns;
    const int column = blockIdx.x * kTileColumns + index % kTileColumns;
    if (column >= n) continue;
    float mixture = 0;
    for (int rank = 0; rank < args.top_k; ++rank) {
      const int pair = token * args.top_k + rank;
      mixture += args.gates[pair] * SlotProduct(args, slices, args.token_slots[pair], column);
    }
    args.residual[static_cast<int64_t>(token) * n + column] += mixture;
  }
}

__global__ void __launch_bounds__(kThreads) ExpertGemvKernel(ExpertGemvArgs args, int slices, int slice_rows) {
  __shared__ float staged[kSlotsPerPass][kMaxSlice];
  __shared__ float warp_sums[kWarps][kSlotsPerPass][kTileColumns];
  __shared__ bool last;
  const int expert = ActiveExpert(args.expert_offsets, args.num_experts, blockIdx.y / slices);
  const int slice = blockIdx.y % slices;
  if (expert >= 0) {
    const int begin = args.expert_offsets[expert], end = args.expert_offsets[expert + 1];
    for (int first = begin; first < end; first += kSlotsPerPass) {
      SlotPass(args, expert, first, min(kSlotsPerPass, end - first), slice, slices, slice_rows, staged, warp_sums);
    }
  }
  if (slices == 1 && args.epilogue != GemvEpilogue::kCombine) return;
  // Every block of the tile counts, those without an expert too.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(args.counters + blockIdx.x, 1u) == gridDim.y - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  FinishTile(args, slices);
  if (threadIdx.x == 0) args.counters[blockIdx.x] = 0;
}

}  // namespace

bool ExpertGemvSupports(int k, int n) { return n % kColumnsPerLane == 0 && k >= 1 && k <= kMaxSlices * kMaxSlice; }

size_t ExpertGemvWorkspaceFloats(int num_slots, int num_experts, int k, int n) {
  if (num_slots == 0) return 0;
  return static_cast<size_t>(SplitFor(num_slots, num_experts, k, n).slices) * num_slots * n;
}

int ExpertGemvCounters(int n) { return Tiles(n); }

cudaError_t ExpertGemv(const ExpertGemvArgs& args, cudaStream_t stream) {
  if (args.num_slots == 0) return cudaSuccess;
  if (!ExpertGemvSupports(args.k, args.n) || args.num_experts > kMaxExperts) return cudaErrorInvalidValue;
  const Split split = SplitFor(args.num_slots, args.num_experts, args.k, args.n);
  if ((split.slices > 1 || args.epilogue == GemvEpilogue::kCombine) &&
      (args.workspace == nullptr || args.counters == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(Tiles(args.n), std::min(args.num_experts, args.num_slots) * split.slices);
  ExpertGemvKernel<<<grid, kThreads, 0, stream>>>(args, split.slices, split.slice_rows);
  return cudaGetLastError();
}

}  // namespace mf::kernels
