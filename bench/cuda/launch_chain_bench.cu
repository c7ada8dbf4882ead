// What a chain of small dependent kernels costs inside a replayed CUDA graph, the shape of
// a small-batch decode step (~7-23 kernels a layer, each reading a few MB of weights and the
// previous kernel's few KB of output). Each row times one way of launching the same chain:
//   plain            stream order: a kernel starts when the previous one has finished
//   overlapped       programmatic dependent launch: each kernel is launched early, issues
//                    its weight loads (which depend on nothing before it), then waits on the
//                    previous kernel (griddepcontrol.wait) before reading its output
//   + allocations    a stream-ordered allocation and free between kernels, as a step that
//                    allocates its scratch while it is recorded has
// with no weights (launch and dependency latency alone) and with `--weight-mb` MB a kernel.
// Every way computes the same output, checked against the plain chain's.
//
//   bench/launch_chain_bench [--kernels 168] [--weight-mb 4]   (built into build/bench/; weights
//   come in 4.3 MB rounds)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr int kThreads = 256;
constexpr int kBlocks = 264;   // two per multiprocessor of an H100/H200
constexpr int kLoads = 4;      // 16-byte weight loads per thread per round (4.3 MB a round)

void Check(cudaError_t error, const char* what) {
  if (error != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(error));
    std::exit(1);
  }
}

// out[i] = in[i] + (a sum over this block's share of the weights, scaled to nothing but
// kept by the compiler). The weights are read before the wait when `overlapped`.
template <bool kOverlapped>
__global__ void __launch_bounds__(kThreads)
    ChainKernel(const float* __restrict__ in, const uint4* __restrict__ weights, int rounds, float* __restrict__ out) {
  uint32_t bits = 0;
  const uint4* mine = weights + static_cast<size_t>(blockIdx.x) * rounds * kLoads * kThreads + threadIdx.x;
  for (int round = 0; round < rounds; ++round) {
    uint4 loaded[kLoads];
#pragma unroll
    for (int j = 0; j < kLoads; ++j) loaded[j] = __ldg(mine + (round * kLoads + j) * kThreads);
#pragma unroll
    for (int j = 0; j < kLoads; ++j) bits ^= loaded[j].x ^ loaded[j].y ^ loaded[j].z ^ loaded[j].w;
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (kOverlapped) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;");
  }
#endif
  const int i = blockIdx.x * kThreads + threadIdx.x;
  out[i] = in[i] + static_cast<float>(bits & 1u) * 1e-30f + 1.0f;
}

struct Way {
  std::string name;
  bool overlapped, allocations;
};

// The chain recorded into a graph: kernel k reads buffer k % 2 and writes the other.
// Kernel k reads weight set k % sets (sets_quads 16-byte values each).
cudaGraphExec_t Record(const Way& way, int kernels, const uint4* weights, size_t set_quads, int sets, int rounds,
                       float* const buffers[2], cudaStream_t stream) {
  Check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
  for (int k = 0; k < kernels; ++k) {
    void* scratch = nullptr;
    if (way.allocations) Check(cudaMallocAsync(&scratch, 4096, stream), "allocate");
    const float* in = buffers[k % 2];
    const uint4* kernel_weights = weights + static_cast<size_t>(k % sets) * set_quads;
    float* out = buffers[(k + 1) % 2];
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(kBlocks);
    config.blockDim = dim3(kThreads);
    config.stream = stream;
    cudaLaunchAttribute attribute = {};
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    if (way.overlapped) {
      config.attrs = &attribute;
      config.numAttrs = 1;
      Check(cudaLaunchKernelEx(&config, ChainKernel<true>, in, kernel_weights, rounds, out), "launch");
    } else {
      Check(cudaLaunchKernelEx(&config, ChainKernel<false>, in, kernel_weights, rounds, out), "launch");
    }
    if (way.allocations) Check(cudaFreeAsync(scratch, stream), "free");
  }
  cudaGraph_t graph = nullptr;
  Check(cudaStreamEndCapture(stream, &graph), "end capture");
  cudaGraphExec_t exec = nullptr;
  Check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  Check(cudaGraphDestroy(graph), "destroy graph");
  return exec;
}

int IntFlag(int argc, char** argv, const char* name, int fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return std::atoi(argv[i + 1]);
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const int kernels = IntFlag(argc, argv, "--kernels", 168), weight_mb = IntFlag(argc, argv, "--weight-mb", 4);
  const size_t per_round = static_cast<size_t>(kBlocks) * kLoads * kThreads * sizeof(uint4);
  const int heavy_rounds =
      std::max<int>(1, static_cast<int>(((static_cast<size_t>(weight_mb) << 20) + per_round / 2) / per_round));
  cudaStream_t stream;
  Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  // Kernels take turns over 32 weight sets, several times what the L2 holds, so each kernel
  // reads its weights from memory as a decode step's expert products do.
  constexpr int kWeightSets = 32;
  const size_t set_bytes = per_round * heavy_rounds;
  uint4* weights = nullptr;
  Check(cudaMalloc(&weights, set_bytes * kWeightSets), "weights");
  Check(cudaMemset(weights, 0x3c, set_bytes * kWeightSets), "weights");
  float* buffers[2];
  for (float*& buffer : buffers) {
    Check(cudaMalloc(&buffer, kBlocks * kThreads * sizeof(float)), "buffer");
    Check(cudaMemset(buffer, 0, kBlocks * kThreads * sizeof(float)), "buffer");
  }
  std::printf("%d dependent kernels of %d x %d threads; weights %.2f MB a kernel (%.2f us at 4,250 GB/s)\n", kernels,
              kBlocks, kThreads, set_bytes / 1e6, set_bytes / 4.25e12 * 1e6);
  const std::vector<Way> ways = {{"plain", false, false},
                                 {"overlapped", true, false},
                                 {"plain + allocations", false, true},
                                 {"overlapped + allocations", true, true}};
  std::vector<float> reference;
  for (const int rounds : {0, heavy_rounds}) {
    for (const Way& way : ways) {
      for (float* buffer : buffers) Check(cudaMemset(buffer, 0, kBlocks * kThreads * sizeof(float)), "reset");
      cudaGraphExec_t exec =
          Record(way, kernels, weights, set_bytes / sizeof(uint4), kWeightSets, rounds, buffers, stream);
      cudaEvent_t start, stop;
      Check(cudaEventCreate(&start), "event");
      Check(cudaEventCreate(&stop), "event");
      for (int warm = 0; warm < 3; ++warm) Check(cudaGraphLaunch(exec, stream), "warm-up");
      std::vector<float> times;
      for (int run = 0; run < 20; ++run) {
        Check(cudaEventRecord(start, stream), "record");
        Check(cudaGraphLaunch(exec, stream), "launch graph");
        Check(cudaEventRecord(stop, stream), "record");
        Check(cudaEventSynchronize(stop), "sync");
        float ms = 0;
        Check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
        times.push_back(ms);
      }
      std::sort(times.begin(), times.end());
      std::vector<float> result(kBlocks * kThreads);
      Check(cudaMemcpy(result.data(), buffers[kernels % 2], result.size() * sizeof(float), cudaMemcpyDeviceToHost),
            "result");
      if (reference.empty()) reference = result;
      const bool same = result == reference;
      std::printf("%-26s weights %-5s %8.2f us a kernel (median of 20 replays)%s\n", way.name.c_str(),
                  rounds == 0 ? "none" : "yes", times[times.size() / 2] * 1e3 / kernels,
                  same ? "" : "  OUTPUT DIFFERS");
      Check(cudaGraphExecDestroy(exec), "destroy");
      Check(cudaEventDestroy(start), "event");
      Check(cudaEventDestroy(stop), "event");
    }
  }
  return 0;
}
