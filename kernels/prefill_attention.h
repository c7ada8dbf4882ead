// Stick-breaking attention for prompt chunks on tensor cores. Per sequence and head the
// host runs two GEMMs through cuBLAS, logits S = Q·Kᵀ and outputs O = W·V; these kernels
// do the rest: gathering queries (token order) and keys (out of the paged cache) as bf16,
// turning each row of logits into stick-breaking weights, and scattering the outputs
// back to slot order. Weights go out as two bf16 matrices (value and remainder) so the
// second GEMM keeps fp32-level accuracy.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mf::kernels {

// q[t * top_k + r] = bf16(queries[token_slots[t * top_k + r]]) for every token t: [T * top_k, width].
cudaError_t GatherQueries(const float* queries, const int32_t* token_slots, int num_tokens, int top_k, int width,
                          __nv_bfloat16* q, cudaStream_t stream);

// keys[s * length + j] = cache row of position j of sequence s (columns [column, column +
// width)), for j < length and each of `num_sequences` sequences of equal length whose block
// tables sit `table_stride` apart: one launch for a run of same-length prompts.
template <typename CacheT>
cudaError_t GatherKeys(const CacheT* cache, int row_width, int column, const int32_t* block_tables, int table_stride,
                       int num_sequences, int block_size, int length, int width, __nv_bfloat16* keys,
                       cudaStream_t stream);

// One GEMM problem's rows of logits: `rows` queries whose first sits at position
// `first_position` (the next top_k rows share each position), over `keys` keys.
struct WeightPiece {
  int64_t offset;  // first element of the piece in the logits / weights matrices
  int rows;        // queries * top_k, for each of the `heads` consecutive [rows, keys] blocks
  int keys;
  int first_position;
};
constexpr int kMaxWeightPieces = 64;
struct WeightPieces {
  WeightPiece pieces[kMaxWeightPieces];
  int count = 0;
  int heads = 1;
  int top_k = 1;
  float scale = 1.0f;  // applied to the logits (1 / sqrt(head_dim))
};

// For each row with query position p: w_j = σ(l_j) · Π_{j<m<=p} (1 - σ(l_m)) for j <= p, in log
// space from the diagonal backwards; 0 for j > p and once the stick is spent. Written as
// high = bf16(w) and low = bf16(w - high).
cudaError_t StickBreakingWeights(const WeightPieces& pieces, int max_rows, const float* logits,
                                 __nv_bfloat16* high, __nv_bfloat16* low, cudaStream_t stream);

// out[token_slots[t * top_k + r]] = o[t * top_k + r] for tokens t whose sequence has at least
// `min_new_tokens` new tokens (seq_new_tokens[token_seq[t]]).
cudaError_t ScatterSlots(const float* o, const int32_t* token_slots, const int32_t* token_seq,
                         const int32_t* seq_new_tokens, int min_new_tokens, int num_tokens, int top_k, int width,
                         float* out, cudaStream_t stream);

}  // namespace mf::kernels
