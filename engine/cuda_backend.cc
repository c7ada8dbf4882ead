#include "engine/cuda_backend.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/cuda_tensor.h"
#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/expert_gemv.h"
#include "kernels/expert_mma.h"
#include "kernels/router_gemv.h"
#include "kernels/routing.h"
#include "kernels/sampling.h"

namespace mf {
namespace {

// Up to this many slots per mixture, expert products run in the split-reduction GEMV
// kernel (enough blocks to keep every multiprocessor reading weights); beyond, in the
// grouped tensor-core kernel. Both read the expert segments on the device.
constexpr int64_t kMaxGemvSlots = 64;
// From this many slots (prompt-sized batches) each expert's segment is a cuBLAS GEMM:
// its kernels beat the grouped one on large tiles, and one small download of the segment
// bounds per product costs little next to the product. MF_CUDA_CUBLAS_EXPERT_SLOTS overrides.
constexpr int64_t kDefaultMinCublasSlots = 4096;
// What NVIDIA recommends for Hopper's cuBLAS kernels.
constexpr size_t kCublasWorkspaceBytes = 32 << 20;

int64_t MinCublasSlots() {
  static const int64_t slots = [] {
    const char* value = std::getenv("MF_CUDA_CUBLAS_EXPERT_SLOTS");
    return value != nullptr ? std::atoll(value) : kDefaultMinCublasSlots;
  }();
  return slots;
}

using cuda::Int;
using cuda::Ptr;

// Output columns rounded up to a multiple of 8: 16-byte aligned rows for cuBLAS.
int64_t PaddedColumns(int64_t columns) { return (columns + 7) / 8 * 8; }

}  // namespace

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(int device, CudaPrecision precision) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count <= device) {
    return absl::FailedPreconditionError(absl::StrCat("cuda: no CUDA device ", device, " (", count, " found)"));
  }
  std::unique_ptr<CudaBackend> backend(new CudaBackend());
  backend->device_ = device;
  backend->precision_ = precision;
  if (cudaSetDevice(device) != cudaSuccess || cudaStreamCreateWithFlags(&backend->stream_, cudaStreamNonBlocking) != cudaSuccess) {
    return absl::InternalError("cuda: cannot create a stream");
  }
  backend->timer_ = std::make_unique<CudaOpTimer>(backend->stream_);
  if (cublasCreate(&backend->cublas_) != CUBLAS_STATUS_SUCCESS ||
      cublasSetStream(backend->cublas_, backend->stream_) != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError("cuda: cannot initialise cuBLAS");
  }
  // cuBLAS gets its workspace up front: it must not allocate while a graph is recorded.
  if (cudaMalloc(&backend->cublas_workspace_, kCublasWorkspaceBytes) != cudaSuccess ||
      cublasSetWorkspace(backend->cublas_, backend->cublas_workspace_, kCublasWorkspaceBytes) != CUBLAS_STATUS_SUCCESS) {
    return absl::ResourceExhaustedError("cuda: cannot allocate the cuBLAS workspace");
  }
  const char* graphs = std::getenv("MF_CUDA_GRAPHS");
  backend->graphs_enabled_ = !backend->timer_->enabled() && (graphs == nullptr || std::string(graphs) != "0");
  // Step buffers come from the stream-ordered pool; keep freed memory in the pool.
  cudaMemPool_t pool;
  if (cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess) {
    uint64_t keep_all = UINT64_MAX;
    cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all);
  }
  return backend;
}

CudaBackend::~CudaBackend() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  if (staging_ != nullptr) cudaFreeHost(staging_);
  for (void* buffer : retired_staging_) cudaFreeHost(buffer);
  timer_.reset();
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (cublas_workspace_ != nullptr) cudaFree(cublas_workspace_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::StatusOr<int64_t> CudaBackend::FreeMemoryBytes() const {
  size_t free_bytes = 0, total_bytes = 0;
  cudaStreamSynchronize(stream_);  // memory freed asynchronously counts once the stream has run
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) return absl::InternalError("cuda: cudaMemGetInfo failed");
  return static_cast<int64_t>(free_bytes);
}

void CudaBackend::Check(cudaError_t error, const char* what) {
  if (error != cudaSuccess && status_.ok()) {
    status_ = absl::InternalError(absl::StrCat("cuda: ", what, ": ", cudaGetErrorString(error)));
  }
}

void CudaBackend::Check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS && status_.ok()) {
    status_ = absl::InternalError(absl::StrCat("cublas: ", what, ": status ", static_cast<int>(status)));
  }
}

absl::StatusOr<Tensor> CudaBackend::Allocate(DType dtype, std::vector<int64_t> shape) {
  Tensor tensor{dtype, std::move(shape), nullptr, nullptr};
  void* memory = nullptr;
  const cudaError_t error = cudaMallocAsync(&memory, std::max<size_t>(tensor.num_bytes(), 1), stream_);
  if (error != cudaSuccess) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cuda: cannot allocate ", tensor.num_bytes(), " bytes: ", cudaGetErrorString(error)));
  }
  cudaStream_t stream = stream_;
  tensor.data = memory;
  tensor.storage = std::shared_ptr<void>(memory, [stream](void* pointer) { cudaFreeAsync(pointer, stream); });
  return tensor;
}

Tensor CudaBackend::Scratch(DType dtype, std::vector<int64_t> shape) {
  absl::StatusOr<Tensor> tensor = Allocate(dtype, std::move(shape));
  if (!tensor.ok()) {
    if (status_.ok()) status_ = tensor.status();
    return Tensor{};
  }
  return *std::move(tensor);
}

absl::StatusOr<Tensor> CudaBackend::UploadWeight(const HostTensor& host, WeightUse use) {
  const DType target = use == WeightUse::kMatrix ? DType::kBF16 : DType::kF32;
  if (use == WeightUse::kMatrix && host.shape.size() == 3 &&
      !kernels::ExpertMmaSupports(static_cast<int>(host.shape[1]), static_cast<int>(host.shape[2]))) {
    // Expert kernels move rows in 16-byte pieces.
    return absl::InvalidArgumentError(absl::StrCat(host.name, ": the CUDA backend needs expert matrices whose sizes are "
                                                   "multiples of 8, got [", host.shape[1], ", ", host.shape[2], "]"));
  }
  const size_t count = static_cast<size_t>(host.num_elements());
  std::vector<float> widened(count);
  ConvertToFloat(host.dtype, host.data, count, widened.data());
  std::vector<uint16_t> narrowed;
  const void* source = widened.data();
  if (target == DType::kBF16) {
    narrowed.resize(count);
    if (host.dtype == DType::kBF16) {
      std::memcpy(narrowed.data(), host.data, count * sizeof(uint16_t));
    } else {
      for (size_t i = 0; i < count; ++i) narrowed[i] = FloatToBf16(widened[i]);
    }
    source = narrowed.data();
  }
  // bf16 matrices of [rows, in] keep zero rows after their last up to a multiple of 8, so
  // Linear can run its GEMM on an aligned number of output columns (see there).
  std::vector<int64_t> stored_shape = host.shape;
  if (target == DType::kBF16 && stored_shape.size() == 2) stored_shape[0] = PaddedColumns(stored_shape[0]);
  absl::StatusOr<Tensor> stored = Allocate(target, stored_shape);
  if (!stored.ok()) return absl::ResourceExhaustedError(absl::StrCat(host.name, ": ", stored.status().message()));
  Tensor* tensor = &*stored;
  if (stored_shape != host.shape) Check(cudaMemsetAsync(tensor->data, 0, tensor->num_bytes(), stream_), "upload");
  tensor->shape = host.shape;
  Check(cudaMemcpyAsync(tensor->data, source, tensor->num_bytes(), cudaMemcpyHostToDevice, stream_), "upload");
  Check(cudaStreamSynchronize(stream_), "upload");  // the host buffers die with this call
  if (!status_.ok()) return status_;
  return *std::move(stored);
}

void CudaBackend::CopyFromHost(const void* host, Tensor& dst) {
  CudaOpTimer::Scope scope(*timer_, "upload");
  Check(cudaMemcpyAsync(dst.data, host, dst.num_bytes(), cudaMemcpyHostToDevice, stream_), "copy to device");
  // Callers reuse their host vectors right away; small metadata copies, so waiting is cheap.
  Check(cudaStreamSynchronize(stream_), "copy to device");
}

void CudaBackend::CopyToHost(const Tensor& src, void* host) {
  {
    CudaOpTimer::Scope scope(*timer_, "download");
    Check(cudaMemcpyAsync(host, src.data, src.num_bytes(), cudaMemcpyDeviceToHost, stream_), "copy to host");
  }
  Check(cudaStreamSynchronize(stream_), "copy to host");
  timer_->Collect();
}

void CudaBackend::CopyToHostDeferred(const Tensor& src, void* host) {
  const size_t bytes = src.num_bytes(), offset = (staging_used_ + 255) / 256 * 256;
  if (offset + bytes > staging_bytes_) {
    // Grow without waiting: copies already queued keep their buffer until FinishDeferredCopies.
    const size_t new_bytes = std::max<size_t>(2 * staging_bytes_, std::max<size_t>(bytes, 1 << 20));
    void* grown = nullptr;
    if (cudaMallocHost(&grown, new_bytes) != cudaSuccess) {
      CopyToHost(src, host);  // no pinned memory: fall back to a synchronous copy
      return;
    }
    if (staging_ != nullptr) retired_staging_.push_back(staging_);
    staging_ = grown;
    staging_bytes_ = new_bytes;
    staging_used_ = 0;
    return CopyToHostDeferred(src, host);
  }
  CudaOpTimer::Scope scope(*timer_, "download");
  Check(cudaMemcpyAsync(static_cast<char*>(staging_) + offset, src.data, bytes, cudaMemcpyDeviceToHost, stream_),
        "deferred copy to host");
  deferred_.push_back({staging_, offset, bytes, host});
  staging_used_ = offset + bytes;
}

void CudaBackend::FinishDeferredCopies() {
  if (deferred_.empty()) return;
  Check(cudaStreamSynchronize(stream_), "deferred copies");
  for (const DeferredCopy& copy : deferred_) {
    std::memcpy(copy.host, static_cast<const char*>(copy.staging) + copy.staging_offset, copy.bytes);
  }
  deferred_.clear();
  for (void* buffer : retired_staging_) cudaFreeHost(buffer);
  retired_staging_.clear();
  staging_used_ = 0;
}

void CudaBackend::ToFloat(const Tensor& src, float* host) {
  if (src.dtype == DType::kF32) {
    CopyToHost(src, host);
    return;
  }
  std::vector<uint8_t> raw(src.num_bytes());
  CopyToHost(src, raw.data());
  ConvertToFloat(src.dtype, raw.data(), static_cast<size_t>(src.num_elements()), host);
}

void CudaBackend::Embed(const Tensor& table, const Tensor& token_ids, Tensor& out) {
  CudaOpTimer::Scope scope(*timer_, "embed");
  Check(kernels::Embed(Ptr<__nv_bfloat16>(table), Ptr<int32_t>(token_ids), Int(token_ids.num_elements()),
                       Int(table.cols()), Ptr<float>(out), stream_),
        "embed");
}

void CudaBackend::LayerNorm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, Tensor& out) {
  CudaOpTimer::Scope scope(*timer_, "layer_norm");
  Check(kernels::LayerNorm(Ptr<float>(x), Ptr<float>(weight), Ptr<float>(bias), eps, Int(x.rows()), Int(x.cols()),
                           Ptr<float>(out), stream_),
        "layer norm");
}

void CudaBackend::Linear(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& out) {
  CudaOpTimer::Scope scope(*timer_, weight.dtype == DType::kF32 ? "router_linear" : "linear");
  const int rows = Int(x.rows()), in = Int(x.cols()), out_features = Int(weight.rows());
  if (rows == 0) return;
  const float one = 1.0f, zero = 0.0f;
  // Row-major out[rows, out] = x · Wᵀ is column-major outᵀ = W · xᵀ with W read transposed.
  if (weight.dtype == DType::kF32) {
    // Routers: full fp32 in exact mode, so routing decisions match the reference; TF32
    // tensor cores in bf16 mode, whose activations are rounded further than that anyway.
    const cublasComputeType_t compute =
        precision_ == CudaPrecision::kExact ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
    Check(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, out_features, rows, in, &one, weight.data, CUDA_R_32F, in,
                       x.data, CUDA_R_32F, in, &zero, out.data, CUDA_R_32F, out_features, compute, CUBLAS_GEMM_DEFAULT),
          "linear f32");
  } else {
    // Both halves (exact mode) are consecutive rows, so one GEMM covers them. cuBLAS's
    // fast kernels want 16-byte aligned output rows: an odd width (a 50,295-token vocabulary)
    // would get a slow fallback kernel, so such products land in a padded buffer first.
    // The product runs on the padded width (the weight's zero rows give zero columns).
    const int gemm_rows = rows * num_halves();
    const int pitch = rows > 1 ? static_cast<int>(PaddedColumns(out_features)) : out_features;
    Tensor x_bf16 = ToGemmInput(x, nullptr, rows, in);
    Tensor product = num_halves() == 1 && pitch == out_features ? out : Scratch(DType::kF32, {gemm_rows, pitch});
    if (x_bf16.empty() || product.empty()) return;
    Check(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, pitch, gemm_rows, in, &one, weight.data, CUDA_R_16BF,
                       in, x_bf16.data, CUDA_R_16BF, in, &zero, product.data, CUDA_R_32F, pitch, CUBLAS_COMPUTE_32F,
                       CUBLAS_GEMM_DEFAULT),
          "linear bf16");
    if (num_halves() == 2) {
      Tensor summed = pitch == out_features ? out : Scratch(DType::kF32, {rows, pitch});
      if (summed.empty()) return;
      Check(kernels::SumHalves(Ptr<float>(product), static_cast<int64_t>(rows) * pitch, Ptr<float>(summed), stream_),
            "sum halves");
      product = summed;
    }
    if (pitch != out_features) {
      Check(cudaMemcpy2DAsync(out.data, out_features * sizeof(float), product.data, pitch * sizeof(float),
                              out_features * sizeof(float), rows, cudaMemcpyDeviceToDevice, stream_),
            "unpad linear");
    }
  }
  if (bias != nullptr) Check(kernels::AddBias(Ptr<float>(out), Ptr<float>(*bias), rows, out_features, stream_), "bias");
}

void CudaBackend::GeluExact(Tensor& x) {
  CudaOpTimer::Scope scope(*timer_, "gelu");
  Check(kernels::GeluExact(Ptr<float>(x), x.num_elements(), stream_), "gelu");
}

void CudaBackend::GeluNew(Tensor& x) {
  CudaOpTimer::Scope scope(*timer_, "gelu_new");
  Check(kernels::GeluNew(Ptr<float>(x), x.num_elements(), stream_), "gelu_new");
}

absl::Status CudaBackend::RouterLogits(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                                       Tensor& logits) {
  const int num_tokens = Int(x.rows()), d = Int(x.cols());
  if (!kernels::RouterGemvSupports(num_tokens, d)) return Backend::RouterLogits(x, w1, b1, w2, logits);
  CudaOpTimer::Scope scope(*timer_, "router");
  Tensor hidden = Scratch(DType::kF32, {num_tokens, w1.rows()});
  if (hidden.empty()) return status_;
  Check(kernels::RouterGemv(Ptr<float>(x), num_tokens, d, Ptr<float>(w1), Ptr<float>(b1), Int(w1.rows()), Ptr<float>(w2),
                            Int(w2.rows()), Ptr<float>(hidden), Ptr<float>(logits), stream_),
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

void CudaBackend::ExpertGemm(const Tensor& x, const RoutingPlan& plan, bool gather_by_token, const Tensor& experts,
                             ExpertActivation activation, Tensor& out) {
  CudaOpTimer::Scope scope(*timer_, "expert_gemm");
  const int in = Int(experts.shape[1]), out_features = Int(experts.shape[2]);
  const int64_t slots = static_cast<int64_t>(plan.num_tokens) * plan.top_k;
  const int32_t* gather = gather_by_token ? Ptr<int32_t>(plan.slot_tokens) : nullptr;
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
  Tensor input = ToGemmInput(x, gather, Int(slots), in);
  if (input.empty()) return;
  if (slots < MinCublasSlots()) {
    // The grouped kernel applies the activation on its way out.
    const auto epilogue =
        activation == ExpertActivation::kGeluNew ? kernels::MmaEpilogue::kGeluNew : kernels::MmaEpilogue::kNone;
    Check(kernels::ExpertMma(Ptr<__nv_bfloat16>(input), num_halves(), slots * in, Int(slots), in,
                             Ptr<int32_t>(plan.expert_offsets), plan.num_experts, Ptr<__nv_bfloat16>(experts),
                             out_features, epilogue, Ptr<float>(out), stream_),
          "expert mma");
    return;
  }
  Tensor halves = num_halves() == 1 ? out : Scratch(DType::kF32, {2 * slots, out_features});
  if (halves.empty()) return;
  ExpertGemmCublas(input, plan, experts, Int(slots), in, out_features, halves);
  if (num_halves() == 2) {
    Check(kernels::SumHalves(Ptr<float>(halves), slots * out_features, Ptr<float>(out), stream_), "sum halves");
  }
  if (activation == ExpertActivation::kGeluNew) {
    Check(kernels::GeluNew(Ptr<float>(out), out.num_elements(), stream_), "gelu_new");
  }
}

void CudaBackend::ExpertSegmentGemm(const __nv_bfloat16* input, int64_t half_stride_in, int rows, int k,
                                    const void* weight, int n, float* out, int64_t half_stride_out) {
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

void CudaBackend::WriteKv(const Tensor& key, const Tensor* value, const StepLayout& layout, Tensor& layer_cache) {
  CudaOpTimer::Scope scope(*timer_, "write_kv");
  const float* values = value != nullptr ? Ptr<float>(*value) : nullptr;
  if (layer_cache.dtype == DType::kF32) {
    Check(kernels::WriteKv(Ptr<float>(key), values, Ptr<int32_t>(layout.cache_rows), layout.num_tokens,
                           Int(key.cols()), Int(layer_cache.cols()), Ptr<float>(layer_cache), stream_),
          "write kv");
  } else {
    Check(kernels::WriteKv(Ptr<float>(key), values, Ptr<int32_t>(layout.cache_rows), layout.num_tokens,
                           Int(key.cols()), Int(layer_cache.cols()), Ptr<__nv_bfloat16>(layer_cache), stream_),
          "write kv");
  }
}

void CudaBackend::GatherRows(const Tensor& x, const Tensor& rows, Tensor& out) {
  CudaOpTimer::Scope scope(*timer_, "gather_rows");
  Check(kernels::GatherRows(Ptr<float>(x), Ptr<int32_t>(rows), Int(rows.num_elements()), Int(x.cols()),
                            Ptr<float>(out), stream_),
        "gather rows");
}

void CudaBackend::ArgmaxRows(const Tensor& logits, Tensor& tokens) {
  CudaOpTimer::Scope scope(*timer_, "argmax");
  Check(kernels::ArgmaxRows(Ptr<float>(logits), Int(logits.rows()), Int(logits.cols()), Ptr<int32_t>(tokens), stream_),
        "argmax");
}

}  // namespace mf
