#include <cub/block/block_reduce.cuh>

#include "kernels/sampling.h"

namespace mf::kernels {
namespace {

constexpr int kThreads = 256;

struct Candidate {
  float value;
  int index;
};

// The larger value; the lower index when equal, so the result does not depend on the
// reduction order.
struct Better {
  __device__ Candidate operator()(const Candidate& a, const Candidate& b) const {
    if (a.value != b.value) return a.value > b.value ? a : b;
    return a.index < b.index ? a : b;
  }
};

__global__ void __launch_bounds__(kThreads) ArgmaxRowsKernel(const float* __restrict__ logits, int width,
                                                             int32_t* __restrict__ tokens) {
  using BlockReduce = cub::BlockReduce<Candidate, kThreads>;
  __shared__ typename BlockReduce::TempStorage storage;
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * width;
  Candidate best{-INFINITY, width};
  for (int i = threadIdx.x; i < width; i += kThreads) best = Better()(best, Candidate{row[i], i});
  const Candidate winner = BlockReduce(storage).Reduce(best, Better());
  // A row of NaNs or -inf keeps index `width`; token 0 stands in, as on the host.
  if (threadIdx.x == 0) tokens[blockIdx.x] = winner.index < width ? winner.index : 0;
}

// Few rows: each row split across blocks of kChunkValues values (16 loads per thread in
// flight), each block's best to `partial`, and the row's last block to finish (an atomic
// counter) picks among them. Better() does not depend on the order, so neither does the result.
constexpr int kValuesPerThread = 16;
constexpr int kChunkValues = kThreads * kValuesPerThread;

__global__ void __launch_bounds__(kThreads)
    SplitArgmaxKernel(const float* __restrict__ logits, int width, Candidate* __restrict__ partial,
                      uint32_t* __restrict__ counters, int32_t* __restrict__ tokens) {
  using BlockReduce = cub::BlockReduce<Candidate, kThreads>;
  __shared__ typename BlockReduce::TempStorage storage;
  __shared__ bool last;
  const float* row = logits + static_cast<int64_t>(blockIdx.y) * width;
  const int first = blockIdx.x * kChunkValues + threadIdx.x;
  float values[kValuesPerThread];
#pragma unroll
  for (int j = 0; j < kValuesPerThread; ++j) {
    const int i = first + j * kThreads;
    values[j] = i < width ? row[i] : -INFINITY;
  }
  Candidate best{-INFINITY, width};
#pragma unroll
  for (int j = 0; j < kValuesPerThread; ++j) {
    const int i = first + j * kThreads;
    if (i < width) best = Better()(best, Candidate{values[j], i});
  }
  const Candidate block_best = BlockReduce(storage).Reduce(best, Better());
  Candidate* row_partial = partial + static_cast<int64_t>(blockIdx.y) * gridDim.x;
  if (threadIdx.x == 0) {
    row_partial[blockIdx.x] = block_best;
    __threadfence();
    last = atomicAdd(counters + blockIdx.y, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  Candidate chunk_best{-INFINITY, width};
  for (int chunk = threadIdx.x; chunk < static_cast<int>(gridDim.x); chunk += kThreads) {
    const Candidate candidate{__ldcg(&row_partial[chunk].value), __ldcg(&row_partial[chunk].index)};
    chunk_best = Better()(chunk_best, candidate);
  }
  __syncthreads();  // `storage` is reused
  const Candidate winner = BlockReduce(storage).Reduce(chunk_best, Better());
  if (threadIdx.x == 0) {
    tokens[blockIdx.y] = winner.index < width ? winner.index : 0;
    counters[blockIdx.y] = 0;
  }
}

}  // namespace

int ArgmaxChunks(int num_rows, int width) {
  return num_rows <= kMaxSplitArgmaxRows ? (width + kChunkValues - 1) / kChunkValues : 0;
}

cudaError_t ArgmaxRows(const float* logits, int num_rows, int width, int32_t* tokens, cudaStream_t stream,
                       void* workspace, uint32_t* counters) {
  if (num_rows <= 0 || width <= 0) return cudaGetLastError();
  const int chunks = ArgmaxChunks(num_rows, width);
  if (chunks > 1 && workspace != nullptr && counters != nullptr) {
    SplitArgmaxKernel<<<dim3(chunks, num_rows), kThreads, 0, stream>>>(logits, width, static_cast<Candidate*>(workspace),
                                                                        counters, tokens);
  } else {
    ArgmaxRowsKernel<<<num_rows, kThreads, 0, stream>>>(logits, width, tokens);
  }
  return cudaGetLastError();
}

}  // namespace mf::kernels
