#include "engine/backend.h"

#include "engine/base/status_macros.h"

namespace mf {

absl::Status Backend::RouterLogits(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                                   Tensor& logits) {
  MF_ASSIGN_OR_RETURN(Tensor hidden, Allocate(activation_dtype(), {x.rows(), w1.rows()}));
  Linear(x, w1, &b1, hidden);
  GeluExact(hidden);
  Linear(hidden, w2, nullptr, logits);
  return absl::OkStatus();
}

absl::Status Backend::NormAndRoute(const Tensor& x, const GateWeights& gate, const KvWrite* kv, Tensor& normed,
                                   Tensor& router_logits, RoutingPlan& plan) {
  LayerNorm(x, *gate.ln_weight, *gate.ln_bias, gate.eps, normed);
  if (kv != nullptr) WriteKv(normed, nullptr, *kv->layout, *kv->cache);
  MF_RETURN_IF_ERROR(RouterLogits(normed, *gate.w1, *gate.b1, *gate.w2, router_logits));
  return Route(router_logits, gate.top_k, plan);
}

absl::Status Backend::ExpertGemmCombine(const Tensor& x, const RoutingPlan& plan, const Tensor& experts,
                                        Tensor& residual) {
  MF_ASSIGN_OR_RETURN(Tensor slot_out, Allocate(activation_dtype(), {x.rows(), experts.shape[2]}));
  ExpertGemm(x, plan, /*gather_by_token=*/false, experts, ExpertActivation::kNone, slot_out);
  CombineExperts(slot_out, plan, residual);
  return absl::OkStatus();
}

}  // namespace mf
