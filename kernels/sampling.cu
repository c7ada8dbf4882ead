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

}  // namespace

cudaError_t ArgmaxRows(const float* logits, int num_rows, int width, int32_t* tokens, cudaStream_t stream) {
  if (num_rows > 0 && width > 0) ArgmaxRowsKernel<<<num_rows, kThreads, 0, stream>>>(logits, width, tokens);
  return cudaGetLastError();
}

}  // namespace mf::kernels
