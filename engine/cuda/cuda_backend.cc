#include "engine/cuda/cuda_backend.h"

#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/cuda/cuda_tensor.h"
#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/expert_mma.h"
#include "kernels/sampling.h"

namespace mf {
namespace {

// What NVIDIA recommends for Hopper's cuBLAS kernels.
constexpr size_t kCublasWorkspaceBytes = 32 << 20;

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
  if (cublasLtCreate(&backend->cublas_lt_) != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError("cuda: cannot initialise cuBLASLt");
  }
  // MF_CUDA_SEGMENT_GEMM=cublas runs expert segments through cublasGemmEx (for comparison).
  const char* segments = std::getenv("MF_CUDA_SEGMENT_GEMM");
  if (segments == nullptr || std::string(segments) != "cublas") {
    backend->segment_gemm_ =
        std::make_unique<SegmentGemm>(backend->cublas_lt_, backend->cublas_workspace_, kCublasWorkspaceBytes);
  }
  if (cudaMalloc(&backend->arrival_counters_, kArrivalCounters * sizeof(uint32_t)) != cudaSuccess ||
      cudaMemset(backend->arrival_counters_, 0, kArrivalCounters * sizeof(uint32_t)) != cudaSuccess) {
    return absl::ResourceExhaustedError("cuda: cannot allocate the kernels' arrival counters");
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
  segment_gemm_.reset();
  if (cublas_lt_ != nullptr) cublasLtDestroy(cublas_lt_);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (cublas_workspace_ != nullptr) cudaFree(cublas_workspace_);
  if (arrival_counters_ != nullptr) cudaFree(arrival_counters_);
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
  const int rows = Int(logits.rows()), width = Int(logits.cols());
  const int chunks = kernels::ArgmaxChunks(rows, width);
  Tensor workspace;
  if (chunks > 1) workspace = Scratch(DType::kI32, {static_cast<int64_t>(rows) * chunks, 2});
  Check(kernels::ArgmaxRows(Ptr<float>(logits), rows, width, Ptr<int32_t>(tokens), stream_, workspace.data,
                            workspace.empty() ? nullptr : arrival_counters_),
        "argmax");
}

// The engine packs rows in engine/backend.h's layout; the kernels read kernels/sampling.h's.
static_assert(sizeof(SampleRowParams) == sizeof(kernels::SampleRowParams));
static_assert(offsetof(SampleRowParams, enabled) == offsetof(kernels::SampleRowParams, enabled));
static_assert(offsetof(SampleRowParams, draw_index) == offsetof(kernels::SampleRowParams, draw_index));
static_assert(offsetof(SampleRowParams, top_k) == offsetof(kernels::SampleRowParams, top_k));
static_assert(sizeof(SampleRowResult) == sizeof(kernels::SampleRowResult));
static_assert(offsetof(SampleRowResult, top_logprobs) == offsetof(kernels::SampleRowResult, top_logprobs));
static_assert(kMaxSampleLogprobs == kernels::kMaxSampleLogprobs && kPromptTokenBit == kernels::kPromptTokenBit);

void CudaBackend::SampleRows(const Tensor& logits, const Tensor& params, Tensor* penalty_counts, Tensor& results) {
  CudaOpTimer::Scope scope(*timer_, "sample");
  const Tensor penalised = Scratch(DType::kF32, {logits.rows(), logits.cols()});
  if (penalised.empty()) return;
  Check(kernels::SampleRows(Ptr<float>(logits), Int(logits.rows()), Int(logits.cols()),
                            Ptr<kernels::SampleRowParams>(params),
                            penalty_counts != nullptr ? Ptr<uint32_t>(*penalty_counts) : nullptr,
                            Ptr<float>(penalised), Ptr<kernels::SampleRowResult>(results), nullptr, stream_),
        "sample");
}

absl::Status CudaBackend::SetPenaltyHistory(Tensor& counts, absl::Span<const int32_t> prompt,
                                            absl::Span<const int32_t> generated) {
  std::vector<int32_t> history(prompt.begin(), prompt.end());
  history.insert(history.end(), generated.begin(), generated.end());
  if (history.empty()) history.push_back(0);  // a one-word upload; nothing reads it
  Tensor tokens = Scratch(DType::kI32, {static_cast<int64_t>(history.size())});
  if (tokens.empty()) return status_;
  CopyFromHost(history.data(), tokens);
  const int32_t* device_tokens = Ptr<int32_t>(tokens);
  Check(kernels::SetPenaltyHistory(Ptr<uint32_t>(counts), Int(counts.num_elements()), device_tokens,
                                   Int(static_cast<int64_t>(prompt.size())), device_tokens + prompt.size(),
                                   Int(static_cast<int64_t>(generated.size())), stream_),
        "penalty history");
  return status_;
}

}  // namespace mf
