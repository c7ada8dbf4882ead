// The CUDA backend: fp32 activations and residual stream, bf16 matrices (experts,
// embeddings, head) with fp32 accumulation in cuBLAS, fp32 routers (so routing
// decisions match the CPU reference), and a bf16 paged KV cache. Loaded by the
// server at run time (libmf_cuda_backend.so), so processes that never ask for
// CUDA do not load cuBLAS.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <memory>

#include "engine/backend.h"

namespace mf {

class CudaBackend : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(int device);
  ~CudaBackend() override;

  std::string name() const override { return "cuda"; }
  DType activation_dtype() const override { return DType::kF32; }
  DType kv_cache_dtype() const override { return DType::kBF16; }
  absl::Status status() const override { return status_; }

  absl::StatusOr<Tensor> UploadWeight(const HostTensor& host, WeightUse use) override;
  absl::StatusOr<Tensor> Allocate(DType dtype, std::vector<int64_t> shape) override;
  void CopyFromHost(const void* host, Tensor& dst) override;
  void CopyToHost(const Tensor& src, void* host) override;
  void ToFloat(const Tensor& src, float* host) override;

  void Embed(const Tensor& table, const Tensor& token_ids, Tensor& out) override;
  void LayerNorm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, Tensor& out) override;
  void Linear(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& out) override;
  void GeluExact(Tensor& x) override;
  void GeluNew(Tensor& x) override;
  absl::Status Route(const Tensor& router_logits, int top_k, RoutingPlan& plan) override;
  void ExpertGemm(const Tensor& x, const RoutingPlan& plan, bool gather_by_token, const Tensor& experts,
                  Tensor& out) override;
  void CombineExperts(const Tensor& slot_out, const RoutingPlan& plan, Tensor& residual) override;
  void WriteKv(const Tensor& key, const Tensor* value, const StepLayout& layout, Tensor& layer_cache) override;
  void StickBreakingAttention(const Tensor& queries, const RoutingPlan& plan, const StepLayout& layout,
                              const Tensor& layer_cache, const AttentionShape& shape, Tensor& out) override;
  void GatherRows(const Tensor& x, const Tensor& rows, Tensor& out) override;

 private:
  CudaBackend() = default;
  // Keeps the first failure; later operations still run but the step reports it.
  void Check(cudaError_t error, const char* what);
  void Check(cublasStatus_t status, const char* what);
  Tensor Scratch(DType dtype, std::vector<int64_t> shape);
  // out[rows, n] = in_bf16[rows, k] · W, W row-major [k, n] bf16 (expert layout).
  void GemmRowMajor(const void* input_bf16, int rows, int k, const void* weight, int n, float* out);

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  absl::Status status_;
};

}  // namespace mf
