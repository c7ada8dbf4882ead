#include "engine/cpu/cpu_backend.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/base/host_memory.h"
#include "engine/base/status_macros.h"
#include "engine/routing.h"

namespace mf {
namespace {

constexpr float kSqrtHalf = 0.70710678118654752440f;
constexpr float kSqrtTwoOverPi = 0.79788456080286535588f;

absl::StatusOr<Tensor> AllocateHost(DType dtype, std::vector<int64_t> shape) {
  Tensor tensor{dtype, std::move(shape), nullptr, nullptr};
  // 64-byte alignment suits AVX-512 loads in OpenBLAS; at least one byte keeps data non-null.
  const size_t bytes = (std::max<size_t>(tensor.num_bytes(), 1) + 63) / 64 * 64;
  void* memory = std::aligned_alloc(64, bytes);
  if (memory == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("cpu backend: cannot allocate ", bytes, " bytes"));
  }
  tensor.data = memory;
  tensor.storage = std::shared_ptr<void>(memory, std::free);
  return tensor;
}

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend() { return std::make_unique<CpuBackend>(); }

absl::StatusOr<int64_t> CpuBackend::FreeMemoryBytes() const {
  const int64_t available = HostAvailableBytes();
  if (available <= 0) return absl::InternalError("cpu backend: cannot read available memory");
  return available;
}

absl::StatusOr<Tensor> CpuBackend::UploadWeight(const HostTensor& host, WeightUse) {
  auto tensor = AllocateHost(DType::kF32, host.shape);
  if (!tensor.ok()) return tensor.status();
  ConvertToFloat(host.dtype, host.data, static_cast<size_t>(host.num_elements()), tensor->as<float>());
  return tensor;
}

absl::StatusOr<Tensor> CpuBackend::Allocate(DType dtype, std::vector<int64_t> shape) {
  return AllocateHost(dtype, std::move(shape));
}

void CpuBackend::CopyFromHost(const void* host, Tensor& dst) { std::memcpy(dst.data, host, dst.num_bytes()); }
void CpuBackend::CopyToHost(const Tensor& src, void* host) { std::memcpy(host, src.data, src.num_bytes()); }
void CpuBackend::ToFloat(const Tensor& src, float* host) {
  ConvertToFloat(src.dtype, src.data, static_cast<size_t>(src.num_elements()), host);
}

void CpuBackend::Embed(const Tensor& table, const Tensor& token_ids, Tensor& out) {
  const int64_t width = table.cols();
  for (int64_t t = 0; t < token_ids.num_elements(); ++t) {
    std::memcpy(out.as<float>() + t * width, table.as<float>() + token_ids.as<int32_t>()[t] * width,
                static_cast<size_t>(width) * sizeof(float));
  }
}

void CpuBackend::LayerNorm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, Tensor& out) {
  const int64_t width = x.cols();
  for (int64_t row = 0; row < x.rows(); ++row) {
    const float* in = x.as<float>() + row * width;
    float* result = out.as<float>() + row * width;
    // Two passes in double: the mean/variance of wide rows is where fp32 drifts first.
    double mean = 0;
    for (int64_t i = 0; i < width; ++i) mean += in[i];
    mean /= static_cast<double>(width);
    double variance = 0;
    for (int64_t i = 0; i < width; ++i) variance += (in[i] - mean) * (in[i] - mean);
    variance /= static_cast<double>(width);
    const double inv_std = 1.0 / std::sqrt(variance + eps);
    for (int64_t i = 0; i < width; ++i) {
      result[i] = static_cast<float>((in[i] - mean) * inv_std) * weight.as<float>()[i] + bias.as<float>()[i];
    }
  }
}

void CpuBackend::Linear(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& out) {
  const int rows = static_cast<int>(x.rows());
  const int in_features = static_cast<int>(x.cols());
  const int out_features = static_cast<int>(weight.rows());
  if (rows == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out_features, in_features, 1.0f, x.as<float>(),
              in_features, weight.as<float>(), in_features, 0.0f, out.as<float>(), out_features);
  if (bias == nullptr) return;
  for (int row = 0; row < rows; ++row) {
    float* result = out.as<float>() + static_cast<int64_t>(row) * out_features;
    for (int i = 0; i < out_features; ++i) result[i] += bias->as<float>()[i];
  }
}

void CpuBackend::GeluExact(Tensor& x) {
  float* values = x.as<float>();
  for (int64_t i = 0; i < x.num_elements(); ++i) values[i] = 0.5f * values[i] * (1.0f + std::erf(values[i] * kSqrtHalf));
}

void CpuBackend::GeluNew(Tensor& x) {
  float* values = x.as<float>();
  for (int64_t i = 0; i < x.num_elements(); ++i) {
    const float v = values[i];
    values[i] = 0.5f * v * (1.0f + std::tanh(kSqrtTwoOverPi * (v + 0.044715f * v * v * v)));
  }
}

absl::Status CpuBackend::Route(const Tensor& router_logits, int top_k, RoutingPlan& plan) {
  const int num_tokens = static_cast<int>(router_logits.rows());
  const int num_experts = static_cast<int>(router_logits.cols());
  std::vector<int32_t> token_experts(static_cast<size_t>(num_tokens) * top_k);
  std::vector<float> token_gates(token_experts.size());
  for (int t = 0; t < num_tokens; ++t) {
    SoftmaxTopK(router_logits.as<float>() + static_cast<int64_t>(t) * num_experts, num_experts, top_k,
                &token_experts[static_cast<size_t>(t) * top_k], &token_gates[static_cast<size_t>(t) * top_k]);
  }
  const ExpertGrouping grouping = GroupByExpert(token_experts, token_gates, num_tokens, top_k, num_experts);
  plan.num_tokens = num_tokens;
  plan.top_k = top_k;
  plan.num_experts = num_experts;
  auto fill = [this](DType dtype, std::vector<int64_t> shape, const void* values, Tensor& dst) -> absl::Status {
    auto tensor = Allocate(dtype, std::move(shape));
    if (!tensor.ok()) return tensor.status();
    dst = *std::move(tensor);
    CopyFromHost(values, dst);
    return absl::OkStatus();
  };
  const int64_t slots = static_cast<int64_t>(num_tokens) * top_k;
  if (!plan.token_experts.empty() && !plan.token_gates.empty()) {  // the caller's record
    CopyFromHost(token_experts.data(), plan.token_experts);
    CopyFromHost(token_gates.data(), plan.token_gates);
  } else {
    MF_RETURN_IF_ERROR(fill(DType::kI32, {num_tokens, top_k}, token_experts.data(), plan.token_experts));
    MF_RETURN_IF_ERROR(fill(DType::kF32, {num_tokens, top_k}, token_gates.data(), plan.token_gates));
  }
  for (absl::Status status : {fill(DType::kI32, {num_experts + 1}, grouping.expert_offsets.data(), plan.expert_offsets),
                              fill(DType::kI32, {slots}, grouping.slot_tokens.data(), plan.slot_tokens),
                              fill(DType::kI32, {num_tokens, top_k}, grouping.token_slots.data(), plan.token_slots)}) {
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

void CpuBackend::ExpertGemm(const Tensor& x, const RoutingPlan& plan, bool gather_by_token, const Tensor& experts,
                            ExpertActivation activation, Tensor& out) {
  const int in_features = static_cast<int>(experts.shape[1]);
  const int out_features = static_cast<int>(experts.shape[2]);
  const int32_t* offsets = plan.expert_offsets.as<int32_t>();
  std::vector<float> gathered;
  for (int expert = 0; expert < plan.num_experts; ++expert) {
    const int begin = offsets[expert];
    const int count = offsets[expert + 1] - begin;
    if (count == 0) continue;
    const float* input = x.as<float>() + static_cast<int64_t>(begin) * in_features;
    if (gather_by_token) {
      gathered.resize(static_cast<size_t>(count) * in_features);
      for (int i = 0; i < count; ++i) {
        const int64_t token = plan.slot_tokens.as<int32_t>()[begin + i];
        std::memcpy(&gathered[static_cast<size_t>(i) * in_features], x.as<float>() + token * in_features,
                    static_cast<size_t>(in_features) * sizeof(float));
      }
      input = gathered.data();
    }
    const float* weight = experts.as<float>() + static_cast<int64_t>(expert) * in_features * out_features;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, count, out_features, in_features, 1.0f, input,
                in_features, weight, out_features, 0.0f, out.as<float>() + static_cast<int64_t>(begin) * out_features,
                out_features);
  }
  if (activation == ExpertActivation::kGeluNew) GeluNew(out);
}

void CpuBackend::CombineExperts(const Tensor& slot_out, const RoutingPlan& plan, Tensor& residual) {
  const int64_t width = residual.cols();
  std::vector<float> mixture(static_cast<size_t>(width));
  for (int t = 0; t < plan.num_tokens; ++t) {
    std::fill(mixture.begin(), mixture.end(), 0.0f);
    for (int rank = 0; rank < plan.top_k; ++rank) {
      const int64_t index = static_cast<int64_t>(t) * plan.top_k + rank;
      const float gate = plan.token_gates.as<float>()[index];
      const float* expert_out = slot_out.as<float>() + plan.token_slots.as<int32_t>()[index] * width;
      for (int64_t i = 0; i < width; ++i) mixture[i] += gate * expert_out[i];
    }
    float* row = residual.as<float>() + static_cast<int64_t>(t) * width;
    for (int64_t i = 0; i < width; ++i) row[i] += mixture[i];
  }
}

void CpuBackend::GatherRows(const Tensor& x, const Tensor& rows, Tensor& out) {
  const int64_t width = x.cols();
  for (int64_t i = 0; i < rows.num_elements(); ++i) {
    std::memcpy(out.as<float>() + i * width, x.as<float>() + rows.as<int32_t>()[i] * width,
                static_cast<size_t>(width) * sizeof(float));
  }
}

void CpuBackend::ArgmaxRows(const Tensor& logits, Tensor& tokens) {
  const int64_t width = logits.cols();
  for (int64_t row = 0; row < logits.rows(); ++row) {
    const float* values = logits.as<float>() + row * width;
    tokens.as<int32_t>()[row] = static_cast<int32_t>(std::max_element(values, values + width) - values);
  }
}

}  // namespace mf
