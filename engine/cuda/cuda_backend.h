// The CUDA backend: fp32 activations and residual stream, bf16 matrices (experts,
// embeddings, head) with fp32 accumulation, and fp32 router weights. Loaded by
// the server at run time (libmf_cuda_backend.so), so processes that never ask for
// CUDA do not load cuBLAS.
//
// Precision modes. kExact: activations enter bf16 GEMMs as two bf16 halves
// (value and remainder, summed after), and the KV cache is fp32, so results track
// the fp32 CPU reference to ~1e-5 and routing decisions agree. kBf16: activations
// rounded to bf16, a bf16 KV cache (half the cache memory and traffic), TF32 routers
// and tensor-core attention for prompt chunks; logits move by ~1e-2 and close routing
// decisions may flip.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/cuda/cuda_op_timer.h"
#include "engine/cuda/segment_gemm.h"
#include "kernels/prefill_attention.h"

namespace mf {

enum class CudaPrecision { kExact, kBf16 };

class CudaBackend : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(int device, CudaPrecision precision = CudaPrecision::kExact);
  ~CudaBackend() override;

  std::string name() const override { return "cuda"; }
  DType activation_dtype() const override { return DType::kF32; }
  DType kv_cache_dtype() const override {
    return precision_ == CudaPrecision::kExact ? DType::kF32 : DType::kBF16;
  }
  // bf16 mode keeps a mixture's hidden activations in bf16 where the second product runs
  // on tensor cores (it reads bf16 anyway); the split-reduction GEMV reads fp32.
  DType expert_hidden_dtype(int64_t num_slots) const override;
  absl::Status status() const override { return status_; }
  absl::StatusOr<int64_t> FreeMemoryBytes() const override;

  absl::StatusOr<Tensor> UploadWeight(const HostTensor& host, WeightUse use) override;
  // Matrices in bf16, routers and vectors in fp32 (UploadWeight).
  int64_t StoredBytesPerWeight(WeightUse use) const override { return use == WeightUse::kMatrix ? 2 : 4; }
  absl::StatusOr<Tensor> Allocate(DType dtype, std::vector<int64_t> shape) override;
  void CopyFromHost(const void* host, Tensor& dst) override;
  void CopyToHost(const Tensor& src, void* host) override;
  void CopyToHostDeferred(const Tensor& src, void* host) override;
  void FinishDeferredCopies() override;
  void ToFloat(const Tensor& src, float* host) override;

  void Embed(const Tensor& table, const Tensor& token_ids, Tensor& out) override;
  void LayerNorm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, Tensor& out) override;
  void Linear(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& out) override;
  void GeluExact(Tensor& x) override;
  void GeluNew(Tensor& x) override;
  absl::Status RouterLogits(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                            Tensor& logits) override;
  absl::Status Route(const Tensor& router_logits, int top_k, RoutingPlan& plan) override;
  void ExpertGemm(const Tensor& x, const RoutingPlan& plan, bool gather_by_token, const Tensor& experts,
                  ExpertActivation activation, Tensor& out) override;
  void CombineExperts(const Tensor& slot_out, const RoutingPlan& plan, Tensor& residual) override;
  void WriteKv(const Tensor& key, const Tensor* value, const StepLayout& layout, Tensor& layer_cache) override;
  void StickBreakingAttention(const Tensor& queries, const RoutingPlan& plan, const StepLayout& layout,
                              const Tensor& layer_cache, const AttentionShape& shape, Tensor& out) override;
  void GatherRows(const Tensor& x, const Tensor& rows, Tensor& out) override;
  void ArgmaxRows(const Tensor& logits, Tensor& tokens) override;
  bool SupportsSampling() const override { return true; }
  void SampleRows(const Tensor& logits, const Tensor& params, Tensor* penalty_counts, Tensor& results) override;
  absl::Status SetPenaltyHistory(Tensor& counts, absl::Span<const int32_t> prompt,
                                 absl::Span<const int32_t> generated) override;
  // Records `body` as a CUDA graph and replays it (engine/cuda/cuda_graph.cc). Off when
  // MF_CUDA_GRAPHS=0 or MF_CUDA_OP_TIMING is set (per-operation timing needs eager launches).
  absl::Status RunRecorded(std::unique_ptr<RecordedWork>* record, absl::FunctionRef<absl::Status()> body) override;
  int64_t graphs_replayed() const { return graphs_replayed_; }
  int64_t last_recorded_kernels() const override { return last_recorded_kernels_; }

 private:
  CudaBackend() = default;
  // Keeps the first failure; later operations still run but the step reports it.
  void Check(cudaError_t error, const char* what);
  void Check(cublasStatus_t status, const char* what);
  Tensor Scratch(DType dtype, std::vector<int64_t> shape);
  // Activations as bf16 GEMM input: [rows, k], or [2, rows, k] (value, remainder) when exact.
  Tensor ToGemmInput(const Tensor& x, const int32_t* gather_rows, int rows, int k);
  int num_halves() const { return precision_ == CudaPrecision::kExact ? 2 : 1; }
  // out[h][rows, n] = in[h][rows, k] · W for each half h, one cuBLAS GEMM per expert segment
  // (the segment bounds come to the host first). W row-major [k, n] bf16 (expert layout).
  void ExpertGemmCublas(const Tensor& input, const RoutingPlan& plan, const Tensor& experts, int slots, int in,
                        int out_features, Tensor& halves);
  void ExpertSegmentGemm(const __nv_bfloat16* input, int64_t half_stride_in, int rows, int k, const void* weight,
                         int n, float* out, int64_t half_stride_out);

  // Prompt chunks' attention on tensor cores (engine/cuda/cuda_prompt_attention.cc).
  struct PromptPiece {
    int seq;
    int first_token, end_token;  // a range of the sequence's new tokens
    int64_t key_offset;          // the sequence's first row in the gathered keys
    int64_t first_q_row;         // the range's first query row ([token * top_k + rank])
  };
  // Sequences adding at least this many tokens take the GEMM path: below it, the paged
  // kernel reads each key once per query anyway and the GEMMs would be mostly padding.
  static constexpr int kMinPromptGemmTokens = 16;
  // Tokens of the sequences adding fewer than that (decodes, short chunks): the paged kernel's.
  static int ShortChunkTokens(const StepLayout& layout);
  bool UsesPromptGemms(const StepLayout& layout, const Tensor& layer_cache) const;
  void PromptAttention(const Tensor& queries, const RoutingPlan& plan, const StepLayout& layout,
                       const Tensor& layer_cache, const AttentionShape& shape, Tensor& out);
  void RunPromptRound(const kernels::WeightPieces& round, const std::vector<PromptPiece>& members, int max_rows,
                      int64_t elements, const Tensor& q, const Tensor& keys, const Tensor& values, int head_dim,
                      int width, Tensor& o);
  // How many pieces from `first` can share one batched GEMM (same shape, even spacing).
  static int UniformPieceRun(const kernels::WeightPieces& round, const std::vector<PromptPiece>& members, int first);
  // Logits (high == nullptr) or outputs (W = high + low) of pieces [first, first + count).
  void RunPromptGemms(const kernels::WeightPieces& round, const std::vector<PromptPiece>& members, int first,
                      int count, const Tensor& q, const Tensor& keys, const Tensor& values, int head_dim, int width,
                      const Tensor& logits, const Tensor* high, const Tensor* low, Tensor& o);

  int device_ = 0;
  CudaPrecision precision_ = CudaPrecision::kExact;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cublasLtHandle_t cublas_lt_ = nullptr;
  void* cublas_workspace_ = nullptr;
  std::unique_ptr<SegmentGemm> segment_gemm_;  // null: segments through cublasGemmEx
  // Zeroed words that kernels finishing in their last block (the split argmax) count
  // arrivals on, each leaving them at zero; kernels run one after another on stream_, so
  // they share them.
  uint32_t* arrival_counters_ = nullptr;
  static constexpr int kArrivalCounters = 8192;
  bool graphs_enabled_ = true;
  int64_t graphs_replayed_ = 0;
  int64_t last_recorded_kernels_ = 0;
  absl::Status status_;
  std::unique_ptr<CudaOpTimer> timer_;  // created with the stream; destroyed before it

  // Deferred downloads land in pinned memory (asynchronous copies need it), then move to
  // their destinations at FinishDeferredCopies.
  struct DeferredCopy {
    const void* staging;  // the staging buffer at the time of the copy
    size_t staging_offset;
    size_t bytes;
    void* host;
  };
  void* staging_ = nullptr;  // pinned, staging_bytes_ long
  std::vector<void*> retired_staging_;  // outgrown, freed once their copies are done
  size_t staging_bytes_ = 0;
  size_t staging_used_ = 0;
  std::vector<DeferredCopy> deferred_;
};

}  // namespace mf
