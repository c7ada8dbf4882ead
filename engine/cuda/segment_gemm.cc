#include "engine/cuda/segment_gemm.h"

#include <algorithm>
#include <array>

namespace mf {
namespace {

// Row classes are multiples of this: an algorithm chosen for the class's largest segment
// serves its smaller ones nearly as well (power-of-two classes measured ~15% slower on the
// H200: a 1,025-row segment ran the 2,048-row choice).
constexpr int kRowClassStep = 128;

int RowClass(int rows) { return (std::max(rows, 1) + kRowClassStep - 1) / kRowClassStep * kRowClassStep; }

// The alignment (bytes, at most 256) every pointer of a batch and segment is guaranteed:
// buffers start 256-byte aligned and move in whole rows of `row_bytes`.
uint32_t Alignment(int64_t row_bytes) {
  return static_cast<uint32_t>(std::min<int64_t>(256, row_bytes & -row_bytes));
}

// Column-major views of the row-major operands: Wᵀ [n, k], inᵀ [k, rows], outᵀ [n, rows].
struct Layouts {
  std::array<cublasLtMatrixLayout_t, 3> views{};  // W, in, out
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;

  Layouts(int rows, int k, int n, int batch, int64_t in_stride, int64_t out_stride) {
    const std::array<std::tuple<cudaDataType_t, int, int, int64_t>, 3> shapes = {
        std::tuple{CUDA_R_16BF, n, k, int64_t{0}}, std::tuple{CUDA_R_16BF, k, rows, in_stride},
        std::tuple{CUDA_R_32F, n, rows, out_stride}};
    for (size_t i = 0; i < shapes.size() && status == CUBLAS_STATUS_SUCCESS; ++i) {
      const auto [type, row_count, column_count, stride] = shapes[i];
      status = cublasLtMatrixLayoutCreate(&views[i], type, static_cast<uint64_t>(row_count),
                                          static_cast<uint64_t>(column_count), row_count);
      if (status == CUBLAS_STATUS_SUCCESS && batch > 1) {
        status = cublasLtMatrixLayoutSetAttribute(views[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch);
        if (status == CUBLAS_STATUS_SUCCESS) {
          status = cublasLtMatrixLayoutSetAttribute(views[i], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                    sizeof stride);
        }
      }
    }
  }
  ~Layouts() {
    for (cublasLtMatrixLayout_t view : views) {
      if (view != nullptr) cublasLtMatrixLayoutDestroy(view);
    }
  }
};

}  // namespace

SegmentGemm::SegmentGemm(cublasLtHandle_t handle, void* workspace, size_t workspace_bytes)
    : handle_(handle), workspace_(workspace), workspace_bytes_(workspace_bytes) {
  if (cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS) desc_ = nullptr;
}

SegmentGemm::~SegmentGemm() {
  if (desc_ != nullptr) cublasLtMatmulDescDestroy(desc_);
}

const SegmentGemm::Plan& SegmentGemm::FindPlan(const Key& key) {
  auto found = plans_.find(key);
  if (found != plans_.end()) return found->second;
  Plan& plan = plans_[key];
  const auto [n, k, batch, row_class] = key;
  // The algorithm is chosen for the class's largest segment and must accept any smaller one.
  Layouts layouts(row_class, k, n, batch, static_cast<int64_t>(row_class) * k, static_cast<int64_t>(row_class) * n);
  cublasLtMatmulPreference_t preference = nullptr;
  if (desc_ == nullptr || layouts.status != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatmulPreferenceCreate(&preference) != CUBLAS_STATUS_SUCCESS) {
    return plan;
  }
  const uint64_t workspace = workspace_bytes_;
  const uint32_t align_weight = Alignment(static_cast<int64_t>(k) * n * 2), align_in = Alignment(int64_t{k} * 2),
                 align_out = Alignment(int64_t{n} * 4);
  cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                       sizeof workspace);
  cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_weight,
                                       sizeof align_weight);
  cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_in,
                                       sizeof align_in);
  cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_out,
                                       sizeof align_out);
  cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_out,
                                       sizeof align_out);
  cublasLtMatmulHeuristicResult_t result{};
  int returned = 0;
  const auto [weight_view, in_view, out_view] = layouts.views;
  if (cublasLtMatmulAlgoGetHeuristic(handle_, desc_, weight_view, in_view, out_view, out_view, preference, 1, &result,
                                     &returned) == CUBLAS_STATUS_SUCCESS &&
      returned > 0) {
    plan.supported = true;
    plan.algo = result.algo;
  }
  cublasLtMatmulPreferenceDestroy(preference);
  return plan;
}

cublasStatus_t SegmentGemm::Run(const __nv_bfloat16* in, int64_t in_batch_stride, int rows, int k,
                                const __nv_bfloat16* weight, int n, float* out, int64_t out_batch_stride, int batch,
                                cudaStream_t stream) {
  const Plan& plan = FindPlan({n, k, batch, RowClass(rows)});
  if (!plan.supported) return CUBLAS_STATUS_NOT_SUPPORTED;
  Layouts layouts(rows, k, n, batch, in_batch_stride, out_batch_stride);
  if (layouts.status != CUBLAS_STATUS_SUCCESS) return layouts.status;
  const float one = 1.0f, zero = 0.0f;
  const auto [weight_view, in_view, out_view] = layouts.views;
  return cublasLtMatmul(handle_, desc_, &one, weight, weight_view, in, in_view, &zero, out, out_view, out, out_view,
                        &plan.algo, workspace_, workspace_bytes_, stream);
}

}  // namespace mf
