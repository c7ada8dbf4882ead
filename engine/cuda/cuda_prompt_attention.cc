// Prompt chunks' stick-breaking attention on tensor cores (bf16 mode): queries and each
// prompt's history gathered as bf16 rows, logits S = Q·Kᵀ and outputs O = W·V as cuBLAS
// GEMMs (strided-batched over runs of same-shaped prompts), the stick-breaking weights W in
// between (kernels/prefill_attention.h), outputs scattered back to slot order.
#include <algorithm>
#include <cmath>
#include <tuple>

#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_tensor.h"
#include "kernels/prefill_attention.h"

namespace mf {
namespace {

using cuda::Int;
using cuda::Ptr;

// Logits held at once (fp32, plus two bf16 weight matrices): 24 M elements, 192 MB.
constexpr int64_t kMaxRoundElements = 24LL << 20;

}  // namespace

void CudaBackend::PromptAttention(const Tensor& queries, const RoutingPlan& plan, const StepLayout& layout,
                                  const Tensor& layer_cache, const AttentionShape& shape, Tensor& out) {
  const int num_tokens = layout.num_tokens, top_k = plan.top_k;
  const int heads = shape.num_heads, head_dim = shape.head_dim, width = heads * head_dim;
  const int row_width = Int(layer_cache.cols()), value_column = shape.kv_identity ? 0 : width;
  const auto* cache = Ptr<__nv_bfloat16>(layer_cache);
  // Queries in token order ([token * top_k + rank]), where each sequence's are contiguous.
  Tensor q = Scratch(DType::kBF16, {static_cast<int64_t>(num_tokens) * top_k, width});
  Tensor o = Scratch(DType::kF32, {static_cast<int64_t>(num_tokens) * top_k, width});
  if (q.empty() || o.empty()) return;
  Check(kernels::GatherQueries(Ptr<float>(queries), Ptr<int32_t>(plan.token_slots), num_tokens, top_k, width,
                               Ptr<__nv_bfloat16>(q), stream_),
        "gather queries");

  // Each prompt sequence's whole history (cached and new), keys and values, as bf16 rows.
  std::vector<PromptPiece> pieces;
  std::vector<int64_t> key_offsets(static_cast<size_t>(layout.num_sequences), -1);
  int64_t total_keys = 0;
  for (int s = 0; s < layout.num_sequences; ++s) {
    const int num_new = layout.seq_token_begin[s + 1] - layout.seq_token_begin[s];
    if (num_new < kMinPromptGemmTokens) continue;
    const int64_t keys = layout.seq_cached[s] + num_new;
    key_offsets[static_cast<size_t>(s)] = total_keys;
    total_keys += keys;
    // Long prompts are cut into query chunks so one chunk's logits fit a round.
    const int64_t chunk = std::max<int64_t>(1, kMaxRoundElements / (static_cast<int64_t>(top_k) * heads * keys));
    for (int first = 0; first < num_new; first += static_cast<int>(chunk)) {
      const int end = static_cast<int>(std::min<int64_t>(num_new, first + chunk));
      pieces.push_back({s, first, end, total_keys - keys, (layout.seq_token_begin[s] + first) * int64_t{top_k}});
    }
  }
  Tensor keys = Scratch(DType::kBF16, {total_keys, width});
  Tensor values = shape.kv_identity ? keys : Scratch(DType::kBF16, {total_keys, width});
  if (keys.empty() || values.empty()) return;
  // One gather per run of consecutive prompt sequences of equal length (their keys are
  // consecutive too): a batch of same-length prompts is one launch.
  auto history = [&](int s) { return layout.seq_cached[s] + layout.seq_token_begin[s + 1] - layout.seq_token_begin[s]; };
  for (int s = 0; s < layout.num_sequences;) {
    const int64_t offset = key_offsets[static_cast<size_t>(s)];
    const int length = history(s);
    int run = 1;
    while (offset >= 0 && s + run < layout.num_sequences && key_offsets[static_cast<size_t>(s + run)] >= 0 &&
           history(s + run) == length) {
      ++run;
    }
    if (offset >= 0) {
      const int32_t* tables = Ptr<int32_t>(layout.block_tables) + static_cast<int64_t>(s) * layout.max_blocks_per_sequence;
      Check(kernels::GatherKeys(cache, row_width, 0, tables, layout.max_blocks_per_sequence, run, layout.block_size,
                                length, width, Ptr<__nv_bfloat16>(keys) + offset * width, stream_),
            "gather keys");
      if (!shape.kv_identity) {
        Check(kernels::GatherKeys(cache, row_width, value_column, tables, layout.max_blocks_per_sequence, run,
                                  layout.block_size, length, width, Ptr<__nv_bfloat16>(values) + offset * width,
                                  stream_),
              "gather values");
      }
    }
    s += run;
  }

  // Rounds of pieces whose logits fit the budget together.
  size_t next = 0;
  while (next < pieces.size()) {
    kernels::WeightPieces round;
    round.heads = heads;
    round.top_k = top_k;
    round.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    int64_t elements = 0;
    int max_rows = 0;
    std::vector<PromptPiece> members;
    while (next < pieces.size() && round.count < kernels::kMaxWeightPieces) {
      const PromptPiece& piece = pieces[next];
      const int rows = (piece.end_token - piece.first_token) * top_k;
      const int num_keys = layout.seq_cached[piece.seq] + piece.end_token;
      const int64_t size = static_cast<int64_t>(rows) * heads * num_keys;
      if (round.count > 0 && elements + size > kMaxRoundElements) break;
      round.pieces[round.count++] = {elements, rows, num_keys, layout.seq_cached[piece.seq] + piece.first_token};
      elements += size;
      max_rows = std::max(max_rows, rows);
      members.push_back(piece);
      ++next;
    }
    RunPromptRound(round, members, max_rows, elements, q, keys, values, head_dim, width, o);
  }
  Check(kernels::ScatterSlots(Ptr<float>(o), Ptr<int32_t>(plan.token_slots), Ptr<int32_t>(layout.token_seq),
                              Ptr<int32_t>(layout.seq_new_tokens), kMinPromptGemmTokens, num_tokens, top_k, width,
                              Ptr<float>(out), stream_),
        "scatter attention");
}

void CudaBackend::RunPromptRound(const kernels::WeightPieces& round, const std::vector<PromptPiece>& members,
                                 int max_rows, int64_t elements, const Tensor& q, const Tensor& keys,
                                 const Tensor& values, int head_dim, int width, Tensor& o) {
  Tensor logits = Scratch(DType::kF32, {elements});
  Tensor high = Scratch(DType::kBF16, {elements});
  Tensor low = Scratch(DType::kBF16, {elements});
  if (logits.empty() || high.empty() || low.empty()) return;
  // Consecutive pieces of one shape, equally spaced in every operand, make one batched
  // GEMM (a batch of same-length prompts: three GEMMs a layer instead of three a prompt).
  for (int first = 0; first < round.count;) {
    const int count = UniformPieceRun(round, members, first);
    RunPromptGemms(round, members, first, count, q, keys, values, head_dim, width, logits, nullptr, nullptr, o);
    first += count;
  }
  Check(kernels::StickBreakingWeights(round, max_rows, Ptr<float>(logits), Ptr<__nv_bfloat16>(high),
                                      Ptr<__nv_bfloat16>(low), stream_),
        "stick-breaking weights");
  for (int first = 0; first < round.count;) {
    const int count = UniformPieceRun(round, members, first);
    RunPromptGemms(round, members, first, count, q, keys, values, head_dim, width, logits, &high, &low, o);
    first += count;
  }
}

int CudaBackend::UniformPieceRun(const kernels::WeightPieces& round, const std::vector<PromptPiece>& members,
                                 int first) {
  // Batched over pieces, heads must be the only other dimension: with one head, pieces are.
  if (round.heads != 1) return 1;
  // Piece i + 1's offsets past piece i's in the logits, the keys and the queries.
  auto step_after = [&](int i) {
    const PromptPiece &piece = members[static_cast<size_t>(i)], &next = members[static_cast<size_t>(i) + 1];
    return std::tuple{round.pieces[i + 1].offset - round.pieces[i].offset, next.key_offset - piece.key_offset,
                      next.first_q_row - piece.first_q_row};
  };
  const kernels::WeightPiece& head = round.pieces[first];
  int count = 1;
  while (first + count < round.count) {
    const kernels::WeightPiece& next = round.pieces[first + count];
    if (next.rows != head.rows || next.keys != head.keys) break;
    if (count > 1 && step_after(first + count - 1) != step_after(first)) break;
    ++count;
  }
  return count;
}

void CudaBackend::RunPromptGemms(const kernels::WeightPieces& round, const std::vector<PromptPiece>& members,
                                 int first, int count, const Tensor& q, const Tensor& keys, const Tensor& values,
                                 int head_dim, int width, const Tensor& logits, const Tensor* high, const Tensor* low,
                                 Tensor& o) {
  const kernels::WeightPiece& piece = round.pieces[first];
  const PromptPiece& member = members[static_cast<size_t>(first)];
  // The batch runs over heads of one piece, or over the run's pieces (one head): strides
  // between batch entries in each operand.
  const bool over_pieces = count > 1;
  const int batch = over_pieces ? count : round.heads;
  const int64_t head_logits = static_cast<int64_t>(piece.rows) * piece.keys;
  int64_t key_stride = head_dim, q_stride = head_dim, logit_stride = head_logits;
  if (over_pieces) {
    const PromptPiece& second = members[static_cast<size_t>(first + 1)];
    key_stride = (second.key_offset - member.key_offset) * width;
    q_stride = (second.first_q_row - member.first_q_row) * width;
    logit_stride = round.pieces[first + 1].offset - piece.offset;
  }
  const __nv_bfloat16* key_rows = Ptr<__nv_bfloat16>(keys) + member.key_offset * width;
  const __nv_bfloat16* value_rows = Ptr<__nv_bfloat16>(values) + member.key_offset * width;
  const float one = 1.0f, zero = 0.0f;
  if (high == nullptr) {
    // Row-major S[rows, keys] = Q·Kᵀ is column-major Sᵀ = K·Qᵀ: K read transposed.
    Check(cublasGemmStridedBatchedEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, piece.keys, piece.rows, head_dim, &one,
                                     key_rows, CUDA_R_16BF, width, key_stride,
                                     Ptr<__nv_bfloat16>(q) + member.first_q_row * width, CUDA_R_16BF, width, q_stride,
                                     &zero, Ptr<float>(logits) + piece.offset, CUDA_R_32F, piece.keys, logit_stride,
                                     batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          "prompt attention logits");
    return;
  }
  // Row-major O[rows, head_dim] = W·V is column-major Oᵀ = Vᵀ·Wᵀ, both read as stored; the
  // remainder half of W accumulates onto the first product.
  for (const Tensor* weights : {high, low}) {
    Check(cublasGemmStridedBatchedEx(cublas_, CUBLAS_OP_N, CUBLAS_OP_N, head_dim, piece.rows, piece.keys, &one,
                                     value_rows, CUDA_R_16BF, width, key_stride,
                                     Ptr<__nv_bfloat16>(*weights) + piece.offset, CUDA_R_16BF, piece.keys,
                                     logit_stride, weights == high ? &zero : &one,
                                     Ptr<float>(o) + member.first_q_row * width, CUDA_R_32F, width, q_stride, batch,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          "prompt attention outputs");
  }
}

}  // namespace mf
