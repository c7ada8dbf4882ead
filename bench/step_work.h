// What an engine step must compute or move at least, for ratios to the device's limits
// (the copy bandwidth and bf16 GEMM rate that bench/roofline.h measures).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "engine/checkpoint/config.h"
#include "engine/model.h"

namespace mf::bench {

// FLOPs a prompt token needs (2 per multiply-add): its attention experts' query and output
// projections, the K/V projections when the model has them, its MLP experts, both routers,
// and stick-breaking attention of each attention slot over `mean_keys` keys (logits and
// outputs). The lm_head runs once per prompt and is left out. MoLM-350M-4B, 512-token
// prompts (mean_keys 256.5): ~0.68 GFLOP.
double PrefillFlopsPerToken(const ModelConfig& config, double mean_keys);

// Bytes a decode step must move at least: each layer's matrices of the experts its tokens
// chose (each read once, whatever the number of slots), routers, LayerNorms and K/V
// projections, the whole lm_head, and the batch's K/V rows: every cached row and the new
// one read once (K = V rows once), the new rows written.
struct DecodeStepBytes {
  double experts = 0;
  double kv_cache = 0;
  double lm_head = 0;
  double other = 0;  // routers, LayerNorms, K/V projections, embeddings
  double total() const { return experts + kv_cache + lm_head + other; }
};

struct StoredSizes {
  int matrix_bytes = 2;  // per element of expert, projection and head matrices
  int router_bytes = 4;  // per element of router weights, biases and LayerNorms
  int kv_bytes = 2;      // per element of the KV cache
};

// `routing`: the step's recorded routing (per layer, indexed by Mixture); `cached_rows`:
// the batch's cached tokens before the step; `batch`: its sequences (one new token each).
DecodeStepBytes DecodeStepFloor(const ModelConfig& config, const std::vector<std::array<MixtureRouting, 2>>& routing,
                                int64_t cached_rows, int batch, const StoredSizes& sizes);

}  // namespace mf::bench
