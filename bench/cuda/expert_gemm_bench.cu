// Grouped expert products, one way per row of the table: the slots
// of a mixture sorted by expert ([slots, k] bf16), every expert's segment multiplied by its
// weight matrix ([E, k, n] bf16, the checkpoint's [in, out] layout). Each way is timed on
// the same data beside one dense GEMM of the same FLOPs (the ceiling a grouped product can
// approach) and against the bytes of the weights in use at the copy rate of the same run
// (the floor of decode-sized mixtures: `--tokens 256`), and checked against the per-expert
// cuBLAS result. The grouped kernel's candidate tile shapes are timed too.
//
//   bench/expert_gemm_bench [--tokens 16384] [--skew 0]   (built into build/bench/)
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "engine/cuda/segment_gemm.h"
#include "kernels/expert_mma.h"

namespace {

void Check(cudaError_t error, const char* what) {
  if (error != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(error));
    std::exit(1);
  }
}
void Check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "%s: cuBLAS status %d\n", what, static_cast<int>(status));
    std::exit(1);
  }
}

struct Mixture {
  const char* name;
  int num_experts, top_k, k, n;
};

// Segment sizes of `tokens` tokens each choosing top_k distinct experts; skew > 0 makes
// low-numbered experts more popular (weights exp(-skew * e / E)), as trained routers are.
std::vector<int> RouteCounts(int tokens, const Mixture& mixture, double skew, std::mt19937& rng) {
  std::vector<double> weights(static_cast<size_t>(mixture.num_experts));
  for (int e = 0; e < mixture.num_experts; ++e) weights[static_cast<size_t>(e)] = std::exp(-skew * e / mixture.num_experts);
  std::vector<int> counts(static_cast<size_t>(mixture.num_experts), 0);
  for (int t = 0; t < tokens; ++t) {
    std::vector<double> remaining = weights;
    for (int j = 0; j < mixture.top_k; ++j) {
      std::discrete_distribution<int> pick(remaining.begin(), remaining.end());
      const int e = pick(rng);
      ++counts[static_cast<size_t>(e)];
      remaining[static_cast<size_t>(e)] = 0.0;
    }
  }
  return counts;
}

float ElapsedMs(const std::function<void()>& body, cudaStream_t stream, int repeats) {
  body();  // warm-up (heuristics, first-use allocations)
  Check(cudaStreamSynchronize(stream), "warm-up");
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start, stream);
  for (int r = 0; r < repeats; ++r) body();
  cudaEventRecord(stop, stream);
  Check(cudaEventSynchronize(stop), "timing");
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms / repeats;
}

// The memory-bandwidth ceiling in this run: a 1 GB device-to-device copy (reads and writes).
double CopyGbps(cudaStream_t stream) {
  constexpr size_t kBytes = 1ull << 30;
  void *from, *to;
  Check(cudaMalloc(&from, kBytes), "copy buffer");
  Check(cudaMalloc(&to, kBytes), "copy buffer");
  const float ms = ElapsedMs([&] { Check(cudaMemcpyAsync(to, from, kBytes, cudaMemcpyDeviceToDevice, stream), "copy"); },
                             stream, 10);
  cudaFree(from), cudaFree(to);
  return 2.0 * kBytes / ms / 1e6;
}

__global__ void FillBf16(__nv_bfloat16* values, size_t count, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    values[i] = __float2bfloat16(scale * ((h & 0xffff) / 32768.0f - 1.0f));
  }
}

double MaxRelativeDifference(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0, scale = 1e-6;
  for (float v : b) scale = std::max(scale, static_cast<double>(std::fabs(v)));
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]));
  return worst / scale;
}

void RunMixture(const Mixture& mixture, int tokens, double skew, double copy_gbps, cublasHandle_t cublas,
                mf::SegmentGemm& segments, cudaStream_t stream) {
  std::mt19937 rng(1234);
  const std::vector<int> counts = RouteCounts(tokens, mixture, skew, rng);
  const int slots = tokens * mixture.top_k, k = mixture.k, n = mixture.n, experts = mixture.num_experts;
  std::vector<int> offsets(static_cast<size_t>(experts) + 1, 0);
  for (int e = 0; e < experts; ++e) offsets[static_cast<size_t>(e) + 1] = offsets[static_cast<size_t>(e)] + counts[static_cast<size_t>(e)];
  const double flops = 2.0 * slots * k * n;
  // Live traffic: every step routes differently, so segment sizes change from call to call.
  constexpr int kVariants = 24;
  std::vector<std::vector<int>> variant_counts;
  for (int v = 0; v < kVariants; ++v) variant_counts.push_back(RouteCounts(tokens, mixture, skew, rng));
  int next_variant = 0;

  __nv_bfloat16 *input, *weights, *out_bf16;
  float* out_f32;
  int32_t* device_offsets;
  Check(cudaMalloc(&input, sizeof(__nv_bfloat16) * slots * k), "input");
  Check(cudaMalloc(&weights, sizeof(__nv_bfloat16) * experts * k * n), "weights");
  Check(cudaMalloc(&out_bf16, sizeof(__nv_bfloat16) * slots * n), "out");
  Check(cudaMalloc(&out_f32, sizeof(float) * slots * n), "out");
  Check(cudaMalloc(&device_offsets, sizeof(int32_t) * (experts + 1)), "offsets");
  FillBf16<<<1024, 256, 0, stream>>>(input, static_cast<size_t>(slots) * k, 1u, 1.0f);
  FillBf16<<<1024, 256, 0, stream>>>(weights, static_cast<size_t>(experts) * k * n, 2u, 0.05f);
  Check(cudaMemcpyAsync(device_offsets, offsets.data(), sizeof(int32_t) * (experts + 1), cudaMemcpyHostToDevice, stream),
        "offsets");
  const float one = 1.0f, zero = 0.0f;
  const size_t expert_elements = static_cast<size_t>(k) * n;

  // Row-major out[rows, n] = in[rows, k] · W[k, n] is column-major outᵀ = Wᵀ · inᵀ.
  auto per_expert = [&](cudaDataType_t out_type, void* out, size_t out_element) {
    return [&, out_type, out, out_element] {
      for (int e = 0; e < experts; ++e) {
        const int begin = offsets[static_cast<size_t>(e)], rows = counts[static_cast<size_t>(e)];
        if (rows == 0) continue;
        Check(cublasGemmEx(cublas, CUBLAS_OP_N, CUBLAS_OP_N, n, rows, k, &one, weights + e * expert_elements, CUDA_R_16BF,
                           n, input + static_cast<size_t>(begin) * k, CUDA_R_16BF, k, &zero,
                           static_cast<char*>(out) + static_cast<size_t>(begin) * n * out_element, out_type, n,
                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "per-expert gemm");
      }
    };
  };
  auto per_expert_live = [&](bool lt) {
    return [&, lt] {
      const std::vector<int>& sizes = variant_counts[static_cast<size_t>(next_variant++ % kVariants)];
      for (int e = 0, begin = 0; e < experts; begin += sizes[static_cast<size_t>(e)], ++e) {
        const int rows = sizes[static_cast<size_t>(e)];
        if (rows == 0) continue;
        const __nv_bfloat16* in = input + static_cast<size_t>(begin) * k;
        float* out = out_f32 + static_cast<size_t>(begin) * n;
        if (lt) {
          Check(segments.Run(in, 0, rows, k, weights + e * expert_elements, n, out, 0, 1, stream), "segment gemm");
        } else {
          Check(cublasGemmEx(cublas, CUBLAS_OP_N, CUBLAS_OP_N, n, rows, k, &one, weights + e * expert_elements,
                             CUDA_R_16BF, n, in, CUDA_R_16BF, k, &zero, out, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                             CUBLAS_GEMM_DEFAULT),
                "per-expert gemm");
        }
      }
    };
  };
  // The engine's way today: the segment bounds come back to the host first.
  std::vector<int32_t> downloaded(static_cast<size_t>(experts) + 1);
  auto synced = [&] {
    Check(cudaMemcpyAsync(downloaded.data(), device_offsets, sizeof(int32_t) * (experts + 1), cudaMemcpyDeviceToHost, stream),
          "download");
    Check(cudaStreamSynchronize(stream), "download");
    per_expert(CUDA_R_32F, out_f32, sizeof(float))();
  };

  // Grouped: one call, one group per non-empty expert (group size 1), pointer arrays on the device.
  std::vector<int> group_m, group_n, group_k, group_lda, group_ldb, group_ldc, group_size;
  std::vector<cublasOperation_t> group_op;
  std::vector<const void*> a_ptrs, b_ptrs;
  std::vector<void*> c_ptrs_f32, c_ptrs_bf16;
  std::vector<float> alphas, betas;
  for (int e = 0; e < experts; ++e) {
    const int begin = offsets[static_cast<size_t>(e)], rows = counts[static_cast<size_t>(e)];
    if (rows == 0) continue;
    group_m.push_back(n), group_n.push_back(rows), group_k.push_back(k);
    group_lda.push_back(n), group_ldb.push_back(k), group_ldc.push_back(n), group_size.push_back(1);
    group_op.push_back(CUBLAS_OP_N);
    a_ptrs.push_back(weights + e * expert_elements);
    b_ptrs.push_back(input + static_cast<size_t>(begin) * k);
    c_ptrs_f32.push_back(out_f32 + static_cast<size_t>(begin) * n);
    c_ptrs_bf16.push_back(out_bf16 + static_cast<size_t>(begin) * n);
    alphas.push_back(1.0f), betas.push_back(0.0f);
  }
  const int groups = static_cast<int>(group_m.size());
  void** device_ptrs;
  Check(cudaMalloc(&device_ptrs, sizeof(void*) * 4 * groups), "pointers");
  Check(cudaMemcpy(device_ptrs, a_ptrs.data(), sizeof(void*) * groups, cudaMemcpyHostToDevice), "pointers");
  Check(cudaMemcpy(device_ptrs + groups, b_ptrs.data(), sizeof(void*) * groups, cudaMemcpyHostToDevice), "pointers");
  Check(cudaMemcpy(device_ptrs + 2 * groups, c_ptrs_f32.data(), sizeof(void*) * groups, cudaMemcpyHostToDevice), "pointers");
  Check(cudaMemcpy(device_ptrs + 3 * groups, c_ptrs_bf16.data(), sizeof(void*) * groups, cudaMemcpyHostToDevice), "pointers");
  cublasStatus_t grouped_status = CUBLAS_STATUS_SUCCESS;
  auto grouped = [&](cudaDataType_t out_type, void** c_ptrs) {
    return [&, out_type, c_ptrs] {
      grouped_status = cublasGemmGroupedBatchedEx(cublas, group_op.data(), group_op.data(), group_m.data(), group_n.data(),
                                       group_k.data(), alphas.data(), device_ptrs, CUDA_R_16BF, group_lda.data(),
                                       device_ptrs + groups, CUDA_R_16BF, group_ldb.data(), betas.data(), c_ptrs,
                                       out_type, group_ldc.data(), groups, group_size.data(), CUBLAS_COMPUTE_32F);
    };
  };
  auto dense = [&](cudaDataType_t out_type, void* out) {
    return [&, out_type, out] {
      Check(cublasGemmEx(cublas, CUBLAS_OP_N, CUBLAS_OP_N, n, slots, k, &one, weights, CUDA_R_16BF, n, input,
                         CUDA_R_16BF, k, &zero, out, out_type, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "dense gemm");
    };
  };
  std::printf("\n%s: %d tokens x top-%d = %d slots over %d experts (rows %d..%d), k %d, n %d, %.1f GFLOP\n",
              mixture.name, tokens, mixture.top_k, slots, experts, *std::min_element(counts.begin(), counts.end()),
              *std::max_element(counts.begin(), counts.end()), k, n, flops / 1e9);
  std::vector<float> reference(static_cast<size_t>(slots) * n), result(reference.size());
  per_expert(CUDA_R_32F, out_f32, sizeof(float))();
  Check(cudaMemcpy(reference.data(), out_f32, sizeof(float) * reference.size(), cudaMemcpyDeviceToHost), "reference");

  struct Way {
    std::string name;
    std::function<void()> body;
    bool f32_out;  // checked against the reference
  };
  const std::vector<Way> ways = {
      {"dense GEMM, same FLOPs, bf16 out (ceiling)", dense(CUDA_R_16BF, out_bf16), false},
      {"dense GEMM, same FLOPs, fp32 out", dense(CUDA_R_32F, out_f32), false},
      {"per-expert cuBLAS, fp32 out, bounds known", per_expert(CUDA_R_32F, out_f32, sizeof(float)), true},
      {"per-expert cuBLAS, fp32 out, bounds downloaded", synced, true},
      {"per-expert cuBLASLt (SegmentGemm), fp32 out",
       [&] {
         for (int e = 0; e < experts; ++e) {
           const int begin = offsets[static_cast<size_t>(e)], rows = counts[static_cast<size_t>(e)];
           if (rows == 0) continue;
           Check(segments.Run(input + static_cast<size_t>(begin) * k, 0, rows, k, weights + e * expert_elements, n,
                              out_f32 + static_cast<size_t>(begin) * n, 0, 1, stream),
                 "segment gemm");
         }
       },
       true},
      {"per-expert cublasGemmEx, new segment sizes every call", per_expert_live(false), false},
      {"per-expert SegmentGemm, new segment sizes every call", per_expert_live(true), false},
      {"per-expert cuBLAS, bf16 out, bounds known", per_expert(CUDA_R_16BF, out_bf16, sizeof(__nv_bfloat16)), false},
      {"cublasGemmGroupedBatchedEx, fp32 out", grouped(CUDA_R_32F, device_ptrs + 2 * groups), true},
      {"cublasGemmGroupedBatchedEx, bf16 out", grouped(CUDA_R_16BF, device_ptrs + 3 * groups), false},
      {"ExpertMma (grouped, bounds on the device), fp32 out",
       [&] {
         Check(mf::kernels::ExpertMma(input, 1, 0, slots, k, device_offsets, experts, weights, n,
                                      mf::kernels::MmaEpilogue::kNone, out_f32, stream),
               "expert mma");
       },
       true},
  };
  std::vector<Way> all_ways = ways;
  for (int v = 0; v < mf::kernels::ExpertMmaNumVariants(); ++v) {
    all_ways.push_back({std::string("ExpertMma tile ") + mf::kernels::ExpertMmaVariantName(v),
                        [&, v] {
                          Check(mf::kernels::ExpertMmaVariant(v, input, slots, k, device_offsets, experts, weights, n,
                                                              out_f32, stream),
                                "expert mma variant");
                        },
                        true});
  }
  // Decode-sized mixtures are bound by the weights of the experts in use.
  int active = 0;
  for (int count : counts) active += count > 0;
  const double weight_bytes = static_cast<double>(active) * k * n * sizeof(__nv_bfloat16);
  std::printf("  (%d experts in use: %.1f MB of weights; at the %.0f GB/s copy rate %.3f ms)\n", active,
              weight_bytes / 1e6, copy_gbps, weight_bytes / copy_gbps / 1e6);
  float dense_ms = 0;
  for (const Way& way : all_ways) {
    Check(cudaMemsetAsync(out_f32, 0, sizeof(float) * result.size(), stream), "clear");
    grouped_status = CUBLAS_STATUS_SUCCESS;
    way.body();
    if (grouped_status != CUBLAS_STATUS_SUCCESS) {
      std::printf("  %-54s not supported here (cuBLAS status %d)\n", way.name.c_str(), static_cast<int>(grouped_status));
      continue;
    }
    const float ms = ElapsedMs(way.body, stream, 20);
    if (dense_ms == 0) dense_ms = ms;
    std::string check = "";
    if (way.f32_out) {
      Check(cudaMemcpy(result.data(), out_f32, sizeof(float) * result.size(), cudaMemcpyDeviceToHost), "result");
      char text[64];
      std::snprintf(text, sizeof text, "max rel diff %.1e", MaxRelativeDifference(result, reference));
      check = text;
    }
    const double gbps = weight_bytes / ms / 1e6;
    std::printf("  %-54s %8.3f ms %7.1f TFLOP/s %5.0f%% of dense %6.0f GB/s weights (%3.0f%% of copy)  %s\n",
                way.name.c_str(), ms, flops / ms / 1e9, 100.0 * dense_ms / ms, gbps, 100.0 * gbps / copy_gbps,
                check.c_str());
  }
  cudaFree(input), cudaFree(weights), cudaFree(out_bf16), cudaFree(out_f32), cudaFree(device_offsets), cudaFree(device_ptrs);
}

}  // namespace

int main(int argc, char** argv) {
  int tokens = 16384;
  double skew = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--tokens") == 0) tokens = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--skew") == 0) skew = std::atof(argv[i + 1]);
  }
  cudaStream_t stream;
  cublasHandle_t cublas;
  Check(cudaStreamCreate(&stream), "stream");
  Check(cublasCreate(&cublas), "cublas");
  Check(cublasSetStream(cublas, stream), "cublas stream");
  cublasLtHandle_t cublas_lt;
  Check(cublasLtCreate(&cublas_lt), "cublasLt");
  constexpr size_t kWorkspaceBytes = 32 << 20;
  void* workspace;
  Check(cudaMalloc(&workspace, kWorkspaceBytes), "workspace");
  mf::SegmentGemm segments(cublas_lt, workspace, kWorkspaceBytes);
  const Mixture mixtures[] = {{"MLP in (32 experts, 1024 -> 2048)", 32, 2, 1024, 2048},
                              {"MLP out (32 experts, 2048 -> 1024)", 32, 2, 2048, 1024},
                              {"attention q / out (16 experts, 1024 -> 1024)", 16, 2, 1024, 1024}};
  const double copy_gbps = CopyGbps(stream);
  std::printf("device-to-device copy, 1 GB: %.0f GB/s\n", copy_gbps);
  for (const Mixture& mixture : mixtures) RunMixture(mixture, tokens, skew, copy_gbps, cublas, segments, stream);
  return 0;
}
