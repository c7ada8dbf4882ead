// A mixture's whole gate for decode-sized batches in one kernel: the LayerNorm of the
// residual rows, optionally their write to the KV cache (when K = V = the normed row),
// the router MLP (fp32), softmax + top-k and the grouping of slots by expert. The
// separate kernels for these cost ~7 launches a mixture, each moving a few KB; fused,
// the gate's blocks compute the router's hidden units and the last block to finish does
// the rest (an atomic counter tells it), so no launch waits on another.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mf::kernels {

// Up to this many tokens a step; slots (tokens x top_k) up to kMaxDecodeGateSlots.
constexpr int kMaxDecodeGateTokens = 16;
constexpr int kMaxDecodeGateSlots = 128;

struct DecodeGateArgs {
  const float* x = nullptr;  // [T, d] residual rows
  int num_tokens = 0, d = 0;
  const float* ln_weight = nullptr;  // [d]
  const float* ln_bias = nullptr;    // [d]
  float eps = 1e-5f;
  const float* w1 = nullptr;  // [g, d]
  const float* b1 = nullptr;  // [g]
  const float* w2 = nullptr;  // [E, g]
  int g = 0, num_experts = 0, top_k = 0;
  float* normed = nullptr;          // [T, d]
  float* hidden = nullptr;          // [T, g] scratch
  float* logits = nullptr;          // [T, E]
  int32_t* token_experts = nullptr;  // [T, k], by falling probability
  float* token_gates = nullptr;      // [T, k]
  int32_t* expert_offsets = nullptr;  // [E + 1]
  int32_t* slot_tokens = nullptr;     // [T * k]
  int32_t* token_slots = nullptr;     // [T, k]
  // When set, cache row cache_rows[t] (row_width values, fp32 or bf16) gets normed row t.
  void* kv_cache = nullptr;
  bool kv_cache_bf16 = false;
  const int32_t* cache_rows = nullptr;
  int row_width = 0;
  uint32_t* counter = nullptr;  // one word, zero before the launch; left at zero
};

bool DecodeGateSupports(int num_tokens, int d, int g, int num_experts, int top_k);

// The same decisions as LayerNorm, RouterGemv, SoftmaxTopK and GroupByExpert in turn (the
// router's dot products and the routing are the same code; the LayerNorm reduces in a
// different order, within fp32 rounding of the separate kernel).
cudaError_t DecodeGate(const DecodeGateArgs& args, cudaStream_t stream);

}  // namespace mf::kernels
