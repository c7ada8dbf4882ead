// Stick-breaking attention on the CUDA backend. Decode tokens (and every token in exact
// mode) go through the paged-attention kernel; in bf16 mode, sequences adding a prompt
// chunk go through tensor cores (engine/cuda/cuda_prompt_attention.cc).
#include <algorithm>

#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_tensor.h"
#include "kernels/attention.h"

namespace mf {
namespace {

using cuda::Int;
using cuda::Ptr;

// Partial outputs of the decodes' key splits in a step that also carries prompt chunks:
// 64 M floats (256 MB) at most.
constexpr int64_t kMaxMixedPartialFloats = 64LL << 20;

}  // namespace

int CudaBackend::ShortChunkTokens(const StepLayout& layout) {
  int tokens = 0;
  for (size_t s = 0; s + 1 < layout.seq_token_begin.size(); ++s) {
    const int num_new = layout.seq_token_begin[s + 1] - layout.seq_token_begin[s];
    if (num_new < kMinPromptGemmTokens) tokens += num_new;
  }
  return tokens;
}

bool CudaBackend::UsesPromptGemms(const StepLayout& layout, const Tensor& layer_cache) const {
  return precision_ == CudaPrecision::kBf16 && layer_cache.dtype == DType::kBF16 &&
         ShortChunkTokens(layout) < layout.num_tokens;
}

void CudaBackend::StickBreakingAttention(const Tensor& queries, const RoutingPlan& plan, const StepLayout& layout,
                                         const Tensor& layer_cache, const AttentionShape& shape, Tensor& out) {
  CudaOpTimer::Scope scope(*timer_, "attention");
  const bool prompt_gemms = UsesPromptGemms(layout, layer_cache);
  kernels::AttentionArgs args;
  args.queries = Ptr<float>(queries);
  args.slot_tokens = Ptr<int32_t>(plan.slot_tokens);
  args.token_slots = Ptr<int32_t>(plan.token_slots);
  args.num_tokens = plan.num_tokens;
  args.top_k = plan.top_k;
  args.token_seq = Ptr<int32_t>(layout.token_seq);
  args.token_pos = Ptr<int32_t>(layout.token_pos);
  args.block_tables = Ptr<int32_t>(layout.block_tables);
  args.cache = layer_cache.data;
  args.out = Ptr<float>(out);
  args.num_slots = Int(queries.rows());
  args.num_heads = shape.num_heads;
  args.head_dim = shape.head_dim;
  args.row_width = Int(layer_cache.cols());
  args.value_offset = shape.kv_identity ? 0 : shape.num_heads * shape.head_dim;
  args.block_size = layout.block_size;
  args.max_blocks = layout.max_blocks_per_sequence;
  if (prompt_gemms) {
    args.seq_new_tokens = Ptr<int32_t>(layout.seq_new_tokens);
    args.skip_min_new_tokens = kMinPromptGemmTokens;
  }
  // Key splits for the tokens the paged kernel serves: beside prompt chunks (which it skips)
  // only the decodes count, or 256 decodes beside 8,192 prompt tokens would get one split.
  const int paged_tokens = prompt_gemms ? ShortChunkTokens(layout) : args.num_tokens;
  args.num_splits = kernels::AttentionSplits(paged_tokens, args.top_k, args.num_heads, args.head_dim,
                                             layout.max_blocks_per_sequence * layout.block_size);
  if (prompt_gemms) {
    // Partials are indexed by slot, so they cover the skipped prompt slots too.
    const int64_t floats_per_split = static_cast<int64_t>(args.num_slots) * args.num_heads * args.head_dim;
    args.num_splits = static_cast<int>(
        std::clamp<int64_t>(kMaxMixedPartialFloats / floats_per_split, 1, std::max(args.num_splits, 1)));
  }
  Tensor partial_out, partial_mass;
  if (args.num_splits > 1) {
    const int64_t partials = static_cast<int64_t>(args.num_slots) * args.num_heads * args.num_splits;
    partial_out = Scratch(DType::kF32, {partials, args.head_dim});
    partial_mass = Scratch(DType::kF32, {partials});
    if (partial_out.empty() || partial_mass.empty()) return;
    args.partial_out = Ptr<float>(partial_out);
    args.partial_mass = Ptr<float>(partial_mass);
  }
  Check(layer_cache.dtype == DType::kF32 ? kernels::StickBreakingAttention<float>(args, stream_)
                                         : kernels::StickBreakingAttention<__nv_bfloat16>(args, stream_),
        "attention");
  if (prompt_gemms) PromptAttention(queries, plan, layout, layer_cache, shape, out);
}

}  // namespace mf
