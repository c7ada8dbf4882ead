// Expert segment GEMMs through cuBLASLt with algorithms chosen once per shape class.
//
// A prompt-sized mixture multiplies every expert's segment of slots by that expert's
// weights, one GEMM per expert, and the segment sizes change with every step's routing.
// cublasGemmEx runs its algorithm heuristic for every shape it has not seen, which on
// live traffic (new segment sizes every step, ~3,000 segment GEMMs a prompt step) costs
// more host time than the GEMMs take on the GPU. Here the heuristic runs once per
// (n, k, batch, row class: the rows rounded up to a multiple of 128) and its algorithm
// serves every segment of that class.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

namespace mf {

class SegmentGemm {
 public:
  // `workspace` (device memory, `workspace_bytes`) is shared with other cuBLAS work on the
  // same stream.
  SegmentGemm(cublasLtHandle_t handle, void* workspace, size_t workspace_bytes);
  ~SegmentGemm();
  SegmentGemm(const SegmentGemm&) = delete;
  SegmentGemm& operator=(const SegmentGemm&) = delete;

  // For b < batch: out_b[rows, n] = in_b[rows, k] · W[k, n], row-major; in bf16, W bf16
  // (shared by the batch), out fp32 (fp32 accumulation). in_b = in + b * in_batch_stride,
  // out_b likewise. A status other than success leaves `out` unwritten (the caller falls
  // back to cublasGemmEx).
  cublasStatus_t Run(const __nv_bfloat16* in, int64_t in_batch_stride, int rows, int k, const __nv_bfloat16* weight,
                     int n, float* out, int64_t out_batch_stride, int batch, cudaStream_t stream);

 private:
  using Key = std::tuple<int, int, int, int>;  // n, k, batch, row class
  struct Plan {
    bool supported = false;
    cublasLtMatmulAlgo_t algo{};
  };
  const Plan& FindPlan(const Key& key);

  cublasLtHandle_t handle_;
  void* workspace_;
  size_t workspace_bytes_;
  cublasLtMatmulDesc_t desc_ = nullptr;
  std::map<Key, Plan> plans_;
};

}  // namespace mf
