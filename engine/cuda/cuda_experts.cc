// Mixture-of-experts steps on the CUDA backend: router logits, top-k routing and the
// grouping of token slots by expert, the expert products (GEMV, grouped tensor-core
// kernel or per-expert cuBLAS by batch size) and the gated combine back to token order.
#include <cstdlib>
#include <vector>

#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_tensor.h"
#include "kernels/elementwise.h"
#include "kernels/expert_gemv.h"
#include "kernels/expert_mma.h"
#include "kernels/router_gemv.h"
#include "kernels/routing.h"

namespace mf {
namespace {

using cuda::Int;
using cuda::Ptr;

// Up to this many slots per mixture, expert products run in the split-reduction GEMV
// kernel (enough blocks to keep every multiprocessor reading weights); beyond, in the
// grouped tensor-core kernel. Both read the expert segments on the device.
constexpr int64_t kMaxGemvSlots = 64;
// From this many slots (prompt-sized batches) each expert's segment is a cuBLAS GEMM:
// its kernels beat the grouped one on large tiles, and one small download of the segment
// bounds per product costs little next to the product. Measured on an H200 (MoLM-350M-4B,
// bf16 prefill steps, top-2): grouped vs per-expert cuBLAS 22.1 vs 37.2 ms at 2,048
// tokens (4,096 slots), 36.7 vs 44.2 ms at 4,096 tokens, 66.8 vs 54.6 ms at 8,192 tokens.
// MF_CUDA_CUBLAS_EXPERT_SLOTS overrides.
constexpr int64_t kDefaultMinCublasSlots = 12288;

int64_t MinCublasSlots() {
  static const int64_t slots = [] {
    const char* value = std::getenv("MF_CUDA_CUBLAS_EXPERT_SLOTS");
    return value != nullptr ? std::atoll(value) : kDefaultMinCublasSlots;
  }();
  return slots;
}

}  // namespace

absl::Status CudaBackend::RouterLogits(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                                       Tensor& logits) {
  const int num_tokens = Int(x.rows()), d = Int(x.cols());
  // Small batches: fp32 GEMV kernels (both modes). Decode-sized ones in bf16 mode: TF32
  // tensor cores with the bias and gelu fused (two launches instead of the GEMM library's
  // four); prompt-sized ones and exact mode: GEMMs (fp32 in exact mode, so routing matches
  // the reference).
  const bool gemv = kernels::RouterGemvSupports(num_tokens, d);
  const bool mma = !gemv && precision_ == CudaPrecision::kBf16 && kernels::RouterMmaSupports(num_tokens, d);
  if (!gemv && !mma) return Backend::RouterLogits(x, w1, b1, w2, logits);
  CudaOpTimer::Scope scope(*timer_, "router");
  Tensor hidden = Scratch(DType::kF32, {num_tokens, w1.rows()});
  if (hidden.empty()) return status_;
  Check((gemv ? kernels::RouterGemv : kernels::RouterMma)(Ptr<float>(x), num_tokens, d, Ptr<float>(w1), Ptr<float>(b1),
                                                          Int(w1.rows()), Ptr<float>(w2), Int(w2.rows()),
                                                          Ptr<float>(hidden), Ptr<float>(logits), stream_),
        "router");
  return status_;
}

absl::Status CudaBackend::Route(const Tensor& router_logits, int top_k, RoutingPlan& plan) {
  CudaOpTimer::Scope scope(*timer_, "route");
  const int num_tokens = Int(router_logits.rows()), num_experts = Int(router_logits.cols());
  const int64_t slots = static_cast<int64_t>(num_tokens) * top_k;
  plan.num_tokens = num_tokens;
  plan.top_k = top_k;
  plan.num_experts = num_experts;
  const bool caller_record = !plan.token_experts.empty() && !plan.token_gates.empty();
  if (!caller_record) {
    for (auto [tensor, dtype] : {std::pair{&plan.token_experts, DType::kI32}, std::pair{&plan.token_gates, DType::kF32}}) {
      absl::StatusOr<Tensor> allocated = Allocate(dtype, {num_tokens, top_k});
      if (!allocated.ok()) return allocated.status();
      *tensor = *std::move(allocated);
    }
  }
  for (auto [tensor, dtype, shape] : {std::tuple{&plan.expert_offsets, DType::kI32, std::vector<int64_t>{num_experts + 1}},
                                      std::tuple{&plan.slot_tokens, DType::kI32, std::vector<int64_t>{slots}},
                                      std::tuple{&plan.token_slots, DType::kI32, std::vector<int64_t>{num_tokens, top_k}}}) {
    absl::StatusOr<Tensor> allocated = Allocate(dtype, shape);
    if (!allocated.ok()) return allocated.status();
    *tensor = *std::move(allocated);
  }
  Check(kernels::SoftmaxTopK(Ptr<float>(router_logits), num_tokens, num_experts, top_k, Ptr<int32_t>(plan.token_experts),
                             Ptr<float>(plan.token_gates), stream_),
        "softmax top-k");
  const size_t workspace_bytes = kernels::GroupByExpertWorkspaceBytes(Int(slots), num_experts);
  Tensor workspace = workspace_bytes == 0 ? Tensor{} : Scratch(DType::kU8, {static_cast<int64_t>(workspace_bytes)});
  Check(kernels::GroupByExpert(Ptr<int32_t>(plan.token_experts), num_tokens, top_k, num_experts,
                               Ptr<int32_t>(plan.expert_offsets), Ptr<int32_t>(plan.slot_tokens),
                               Ptr<int32_t>(plan.token_slots), workspace.data, workspace_bytes, stream_),
        "group by expert");
  return status_;
}

Tensor CudaBackend::ToGemmInput(const Tensor& x, const int32_t* gather_rows, int rows, int k) {
  Tensor input = Scratch(DType::kBF16, {num_halves() * static_cast<int64_t>(rows), k});
  if (input.empty()) return input;
  if (num_halves() == 2) {
    Check(kernels::GatherToBf16Split(Ptr<float>(x), gather_rows, rows, k, Ptr<__nv_bfloat16>(input), stream_), "split");
  } else {
    Check(kernels::GatherToBf16(Ptr<float>(x), gather_rows, rows, k, Ptr<__nv_bfloat16>(input), stream_), "to bf16");
  }
  return input;
}

DType CudaBackend::expert_hidden_dtype(int64_t num_slots) const {
  return precision_ == CudaPrecision::kBf16 && num_slots > kMaxGemvSlots ? DType::kBF16 : DType::kF32;
}

void CudaBackend::ExpertGemm(const Tensor& x, const RoutingPlan& plan, bool gather_by_token, const Tensor& experts,
                             ExpertActivation activation, Tensor& out) {
  CudaOpTimer::Scope scope(*timer_, "expert_gemm");
  const int in = Int(experts.shape[1]), out_features = Int(experts.shape[2]);
  const int64_t slots = static_cast<int64_t>(plan.num_tokens) * plan.top_k;
  const int32_t* gather = gather_by_token ? Ptr<int32_t>(plan.slot_tokens) : nullptr;
  const bool bf16_in = x.dtype == DType::kBF16, bf16_out = out.dtype == DType::kBF16;
  if ((bf16_in || bf16_out) && (slots <= kMaxGemvSlots || num_halves() != 1 || (bf16_in && gather_by_token))) {
    Check(cudaErrorInvalidValue, "expert gemm: bf16 hidden activations outside the bf16 tensor-core path");
    return;
  }
  if (slots <= kMaxGemvSlots) {
    // The GEMV kernel converts, gathers and splits the fp32 activations itself, and applies
    // the activation with its reduction.
    Tensor workspace = Scratch(
        DType::kF32, {static_cast<int64_t>(kernels::ExpertGemvWorkspaceFloats(num_halves(), Int(slots), in, out_features))});
    if (workspace.empty()) return;
    Check(kernels::ExpertGemv(Ptr<float>(x), gather, num_halves(), Int(slots), in, Ptr<int32_t>(plan.expert_offsets),
                              plan.num_experts, Ptr<__nv_bfloat16>(experts), out_features,
                              activation == ExpertActivation::kGeluNew, Ptr<float>(workspace), Ptr<float>(out), stream_),
          "expert gemv");
    return;
  }
  // A bf16 hidden input (the MLP's second product) is already the GEMM's input.
  Tensor input = bf16_in ? x : ToGemmInput(x, gather, Int(slots), in);
  if (input.empty()) return;
  bool activation_pending = activation == ExpertActivation::kGeluNew;
  if (slots < MinCublasSlots()) {
    // The grouped kernel accumulates in fp32 and applies the activation (and the rounding
    // to a bf16 output) on its way out.
    const auto epilogue = activation_pending ? kernels::MmaEpilogue::kGeluNew : kernels::MmaEpilogue::kNone;
    auto grouped = [&](auto* out_data) {
      return kernels::ExpertMma(Ptr<__nv_bfloat16>(input), num_halves(), slots * in, Int(slots), in,
                                Ptr<int32_t>(plan.expert_offsets), plan.num_experts, Ptr<__nv_bfloat16>(experts),
                                out_features, epilogue, out_data, stream_);
    };
    Check(bf16_out ? grouped(Ptr<__nv_bfloat16>(out)) : grouped(Ptr<float>(out)), "expert mma");
    return;
  }
  // Products accumulate in fp32; a bf16 output is narrowed from them (with the activation) after.
  Tensor product = bf16_out ? Scratch(DType::kF32, {slots, out_features}) : out;
  Tensor halves = num_halves() == 1 ? product : Scratch(DType::kF32, {2 * slots, out_features});
  if (product.empty() || halves.empty()) return;
  ExpertGemmCublas(input, plan, experts, Int(slots), in, out_features, halves);
  if (num_halves() == 2) {
    Check(kernels::SumHalves(Ptr<float>(halves), slots * out_features, Ptr<float>(product), stream_), "sum halves");
  }
  if (bf16_out) {
    Check(activation_pending ? kernels::GeluNewToBf16(Ptr<float>(product), Int(slots), out_features,
                                                      Ptr<__nv_bfloat16>(out), stream_)
                             : kernels::GatherToBf16(Ptr<float>(product), nullptr, Int(slots), out_features,
                                                     Ptr<__nv_bfloat16>(out), stream_),
          "expert output to bf16");
  } else if (activation_pending) {
    Check(kernels::GeluNew(Ptr<float>(out), out.num_elements(), stream_), "gelu_new");
  }
}

void CudaBackend::ExpertSegmentGemm(const __nv_bfloat16* input, int64_t half_stride_in, int rows, int k,
                                    const void* weight, int n, float* out, int64_t half_stride_out) {
  if (segment_gemm_ != nullptr &&
      segment_gemm_->Run(input, half_stride_in, rows, k, static_cast<const __nv_bfloat16*>(weight), n, out,
                         half_stride_out, num_halves(), stream_) == CUBLAS_STATUS_SUCCESS) {
    return;
  }
  const float one = 1.0f, zero = 0.0f;
  // Row-major out[rows, n] = in[rows, k] · W[k, n] is column-major outᵀ = Wᵀ · inᵀ, both read as stored;
  // the halves are a batch sharing W.
  Check(cublasGemmStridedBatchedEx(cublas_, CUBLAS_OP_N, CUBLAS_OP_N, n, rows, k, &one, weight, CUDA_R_16BF, n, 0,
                                   input, CUDA_R_16BF, k, half_stride_in, &zero, out, CUDA_R_32F, n, half_stride_out,
                                   num_halves(), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "expert gemm");
}

void CudaBackend::ExpertGemmCublas(const Tensor& input, const RoutingPlan& plan, const Tensor& experts, int slots, int in,
                                   int out_features, Tensor& halves) {
  // Segment sizes decide the GEMM shapes, so they come to the host (one small copy per mixture).
  std::vector<int32_t> offsets(static_cast<size_t>(plan.num_experts) + 1);
  CopyToHost(plan.expert_offsets, offsets.data());
  const size_t expert_bytes = static_cast<size_t>(in) * out_features * sizeof(uint16_t);
  for (int expert = 0; expert < plan.num_experts; ++expert) {
    const int begin = offsets[static_cast<size_t>(expert)], count = offsets[static_cast<size_t>(expert) + 1] - begin;
    if (count == 0) continue;
    ExpertSegmentGemm(Ptr<__nv_bfloat16>(input) + static_cast<int64_t>(begin) * in, static_cast<int64_t>(slots) * in,
                      count, in,
                      static_cast<const char*>(experts.data) + expert * expert_bytes, out_features,
                      Ptr<float>(halves) + static_cast<int64_t>(begin) * out_features,
                      static_cast<int64_t>(slots) * out_features);
  }
}

void CudaBackend::CombineExperts(const Tensor& slot_out, const RoutingPlan& plan, Tensor& residual) {
  CudaOpTimer::Scope scope(*timer_, "combine");
  Check(kernels::CombineExperts(Ptr<float>(slot_out), Ptr<float>(plan.token_gates), Ptr<int32_t>(plan.token_slots),
                                plan.num_tokens, plan.top_k, Int(residual.cols()), Ptr<float>(residual), stream_),
        "combine");
}

}  // namespace mf
