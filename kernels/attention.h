// Paged KV-cache writes and stick-breaking attention on the GPU. The cache holds
// bf16 or fp32 rows: one vector per token when K = V, else key then value.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mf::kernels {

// cache[cache_rows[t]] = bf16(key[t]) (then value[t] after it when value is not null).
template <typename CacheT>  // __nv_bfloat16 or float
cudaError_t WriteKv(const float* key, const float* value, const int32_t* cache_rows, int num_tokens, int key_width,
                    int row_width, CacheT* cache, cudaStream_t stream);

struct AttentionArgs {
  const float* queries;         // [slots, heads * head_dim]
  const int32_t* slot_tokens;   // [slots]
  const int32_t* token_slots;   // [tokens, top_k]: each token's query slots, which share its keys
  const int32_t* token_seq;     // [tokens]
  const int32_t* token_pos;     // [tokens]
  const int32_t* block_tables;  // [sequences, max_blocks]
  const void* cache;            // [blocks * block_size, row_width], bf16 or fp32
  float* out;                   // [slots, heads * head_dim]
  int num_tokens, top_k;  // num_slots = num_tokens * top_k
  int num_slots, num_heads, head_dim, row_width, value_offset, block_size, max_blocks;
  // Long histories are split across blocks (see AttentionSplits); with more than one
  // split, each writes its partial output and stick mass here and a second kernel
  // combines them newest to oldest.
  int num_splits = 1;
  float* partial_out = nullptr;   // [slots * heads, num_splits, head_dim]
  float* partial_mass = nullptr;  // [slots * heads, num_splits]
  // When set, slots of sequences adding at least skip_min_new_tokens tokens are left
  // alone (the tensor-core prompt path computes them).
  const int32_t* seq_new_tokens = nullptr;  // [sequences]
  int skip_min_new_tokens = 0;
};

// How many blocks to split each (token, head)'s keys over: enough to fill the GPU
// for small decode batches, bounded by the partial buffers' size (top_k slots each).
int AttentionSplits(int num_tokens, int top_k, int num_heads, int head_dim, int max_context);

// For each slot and head: o = Σ_{j<=i} exp(log σ(l_ij) - Σ_{j<m<=i} softplus(l_im)) v_j, computed
// in log space over chunks of keys from the newest backwards, with fp32 accumulation.
template <typename CacheT>
cudaError_t StickBreakingAttention(const AttentionArgs& args, cudaStream_t stream);

}  // namespace mf::kernels
