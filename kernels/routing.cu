#include <cub/device/device_radix_sort.cuh>

#include "kernels/routing.h"

namespace mf::kernels {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxTopK = 32;

// One warp per token: max and sum by warp shuffles, then k rounds of arg-max.
__global__ void SoftmaxTopKKernel(const float* __restrict__ router_logits, int num_tokens, int num_experts, int top_k,
                                  int32_t* __restrict__ experts, float* __restrict__ gates) {
  const int token = blockIdx.x * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (token >= num_tokens) return;
  const float* logits = router_logits + static_cast<int64_t>(token) * num_experts;

  float max_logit = -INFINITY;
  for (int e = lane; e < num_experts; e += kWarp) max_logit = fmaxf(max_logit, logits[e]);
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    max_logit = fmaxf(max_logit, __shfl_xor_sync(0xffffffffu, max_logit, offset));
  }
  float total = 0.0f;
  for (int e = lane; e < num_experts; e += kWarp) total += expf(logits[e] - max_logit);
  for (int offset = kWarp / 2; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);

  int chosen[kMaxTopK];
  for (int rank = 0; rank < top_k; ++rank) {
    // Each lane proposes its best untaken expert; the warp keeps the largest, lower index on ties.
    float best_logit = -INFINITY;
    int best_expert = num_experts;
    for (int e = lane; e < num_experts; e += kWarp) {
      bool taken = false;
      for (int r = 0; r < rank; ++r) taken |= chosen[r] == e;
      if (!taken && (logits[e] > best_logit || best_expert == num_experts)) {
        best_logit = logits[e];
        best_expert = e;
      }
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      const float other_logit = __shfl_xor_sync(0xffffffffu, best_logit, offset);
      const int other_expert = __shfl_xor_sync(0xffffffffu, best_expert, offset);
      if (other_logit > best_logit || (other_logit == best_logit && other_expert < best_expert)) {
        best_logit = other_logit;
        best_expert = other_expert;
      }
    }
    chosen[rank] = best_expert;
    if (lane == 0) {
      experts[static_cast<int64_t>(token) * top_k + rank] = best_expert;
      gates[static_cast<int64_t>(token) * top_k + rank] = expf(best_logit - max_logit) / total;
    }
  }
}

__global__ void FlatIndexKernel(int num_slots, int32_t* __restrict__ flat) {
  const int slot = blockIdx.x * blockDim.x + threadIdx.x;
  if (slot < num_slots) flat[slot] = slot;
}

// After the stable sort: scatter inverse indices and mark where each expert's segment starts.
__global__ void SegmentsKernel(const int32_t* __restrict__ sorted_experts, const int32_t* __restrict__ sorted_slots,
                               int num_slots, int top_k, int num_experts, int32_t* __restrict__ expert_offsets,
                               int32_t* __restrict__ slot_tokens, int32_t* __restrict__ token_slots) {
  const int position = blockIdx.x * blockDim.x + threadIdx.x;
  if (position > num_slots) return;
  // Experts in (previous, current] begin here; position == num_slots closes the tail.
  const int previous = position == 0 ? -1 : sorted_experts[position - 1];
  const int current = position == num_slots ? num_experts : sorted_experts[position];
  for (int e = previous + 1; e <= current; ++e) expert_offsets[e] = position;
  if (position == num_slots) return;
  const int32_t slot = sorted_slots[position];
  slot_tokens[position] = slot / top_k;
  token_slots[slot] = position;
}

// Small batches (decode): one block does the whole stable counting sort in shared memory,
// one thread per slot, instead of a multi-kernel device radix sort. A slot's rank among its
// expert's slots is the count in earlier warps (per-warp histograms, scanned per expert)
// plus the earlier lanes of its own warp with the same expert (a match mask).
constexpr int kSmallSortSlots = 1024;
constexpr int kSmallSortExperts = 256;
constexpr int kSmallSortWarps = kSmallSortSlots / kWarp;

__global__ void __launch_bounds__(kSmallSortSlots)
    SmallGroupKernel(const int32_t* __restrict__ token_experts, int num_slots, int top_k, int num_experts,
                     int32_t* __restrict__ expert_offsets, int32_t* __restrict__ slot_tokens,
                     int32_t* __restrict__ token_slots) {
  __shared__ int32_t warp_counts[kSmallSortWarps][kSmallSortExperts];  // then: slots of the expert in earlier warps
  __shared__ int32_t starts[kSmallSortExperts + 1];
  const int slot = threadIdx.x, warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int expert = slot < num_slots ? token_experts[slot] : -1;
  for (int i = threadIdx.x; i < kSmallSortWarps * num_experts; i += blockDim.x) {
    warp_counts[i / num_experts][i % num_experts] = 0;
  }
  __syncthreads();
  const unsigned same = __match_any_sync(0xffffffffu, expert);
  const int rank_in_warp = __popc(same & ((1u << lane) - 1));
  if (expert >= 0 && rank_in_warp == 0) warp_counts[warp][expert] = __popc(same);
  __syncthreads();
  // One thread per expert turns its column into exclusive counts over warps.
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    int total = 0;
    for (int w = 0; w < kSmallSortWarps; ++w) {
      const int count = warp_counts[w][e];
      warp_counts[w][e] = total;
      total += count;
    }
    starts[e + 1] = total;
  }
  __syncthreads();
  if (threadIdx.x < kWarp) {  // inclusive scan of the expert totals, 32 at a time
    int carried = 0;
    for (int base = 0; base < num_experts; base += kWarp) {
      const int e = base + threadIdx.x;
      int value = e < num_experts ? starts[e + 1] : 0;
      for (int offset = 1; offset < kWarp; offset *= 2) {
        const int other = __shfl_up_sync(0xffffffffu, value, offset);
        if (threadIdx.x >= offset) value += other;
      }
      if (e < num_experts) starts[e + 1] = carried + value;
      carried += __shfl_sync(0xffffffffu, value, kWarp - 1);
    }
    if (threadIdx.x == 0) starts[0] = 0;
  }
  __syncthreads();
  for (int e = threadIdx.x; e <= num_experts; e += blockDim.x) expert_offsets[e] = starts[e];
  if (expert < 0) return;
  const int position = starts[expert] + warp_counts[warp][expert] + rank_in_warp;
  slot_tokens[position] = slot / top_k;
  token_slots[slot] = position;
}

size_t Align(size_t bytes) { return (bytes + 255) / 256 * 256; }

size_t SortBytes(int num_slots) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
                                  static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), num_slots);
  return bytes;
}

int BitsFor(int num_experts) {
  int bits = 1;
  while ((1 << bits) < num_experts) ++bits;
  return bits;
}

}  // namespace

cudaError_t SoftmaxTopK(const float* router_logits, int num_tokens, int num_experts, int top_k, int32_t* experts,
                        float* gates, cudaStream_t stream) {
  if (top_k > kMaxTopK || top_k > num_experts) return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  constexpr int kWarpsPerBlock = 4;
  const int blocks = (num_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
  SoftmaxTopKKernel<<<blocks, kWarpsPerBlock * kWarp, 0, stream>>>(router_logits, num_tokens, num_experts, top_k,
                                                                   experts, gates);
  return cudaGetLastError();
}

size_t GroupByExpertWorkspaceBytes(int num_slots, int num_experts) {
  if (num_slots <= kSmallSortSlots && num_experts <= kSmallSortExperts) return 0;  // shared memory suffices
  const size_t array = Align(static_cast<size_t>(num_slots) * sizeof(int32_t));
  return 3 * array + Align(SortBytes(num_slots));
}

cudaError_t GroupByExpert(const int32_t* token_experts, int num_tokens, int top_k, int num_experts,
                          int32_t* expert_offsets, int32_t* slot_tokens, int32_t* token_slots, void* workspace,
                          size_t workspace_bytes, cudaStream_t stream) {
  const int num_slots = num_tokens * top_k;
  if (num_slots <= kSmallSortSlots && num_experts <= kSmallSortExperts) {
    SmallGroupKernel<<<1, kSmallSortSlots, 0, stream>>>(token_experts, num_slots, top_k, num_experts, expert_offsets,
                                                        slot_tokens, token_slots);
    return cudaGetLastError();
  }
  if (workspace_bytes < GroupByExpertWorkspaceBytes(num_slots, num_experts)) return cudaErrorInvalidValue;
  const size_t array = Align(static_cast<size_t>(num_slots) * sizeof(int32_t));
  auto* base = static_cast<char*>(workspace);
  auto* flat = reinterpret_cast<int32_t*>(base);
  auto* sorted_experts = reinterpret_cast<int32_t*>(base + array);
  auto* sorted_slots = reinterpret_cast<int32_t*>(base + 2 * array);
  void* sort_scratch = base + 3 * array;
  size_t sort_bytes = SortBytes(num_slots);

  constexpr int kThreads = 256;
  if (num_slots > 0) {
    FlatIndexKernel<<<(num_slots + kThreads - 1) / kThreads, kThreads, 0, stream>>>(num_slots, flat);
    // LSD radix sort is stable: slots of one expert keep their token-major order.
    cudaError_t status = cub::DeviceRadixSort::SortPairs(sort_scratch, sort_bytes, token_experts, sorted_experts, flat,
                                                         sorted_slots, num_slots, 0, BitsFor(num_experts), stream);
    if (status != cudaSuccess) return status;
  }
  SegmentsKernel<<<num_slots / kThreads + 1, kThreads, 0, stream>>>(sorted_experts, sorted_slots, num_slots, top_k,
                                                                   num_experts, expert_offsets, slot_tokens,
                                                                   token_slots);
  return cudaGetLastError();
}

}  // namespace mf::kernels
