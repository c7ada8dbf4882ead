// The CPU backend: fp32 everywhere (bf16/f16 weights widened once at upload),
// OpenBLAS for the GEMMs. It is the exact reference the CUDA backend is tested against.
#pragma once

#include "engine/backend.h"

namespace mf {

class CpuBackend : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  DType activation_dtype() const override { return DType::kF32; }
  absl::StatusOr<int64_t> FreeMemoryBytes() const override;

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
                  ExpertActivation activation, Tensor& out) override;
  void CombineExperts(const Tensor& slot_out, const RoutingPlan& plan, Tensor& residual) override;
  void WriteKv(const Tensor& key, const Tensor* value, const StepLayout& layout, Tensor& layer_cache) override;
  void StickBreakingAttention(const Tensor& queries, const RoutingPlan& plan, const StepLayout& layout,
                              const Tensor& layer_cache, const AttentionShape& shape, Tensor& out) override;
  void GatherRows(const Tensor& x, const Tensor& rows, Tensor& out) override;
  void ArgmaxRows(const Tensor& logits, Tensor& tokens) override;
};

}  // namespace mf
