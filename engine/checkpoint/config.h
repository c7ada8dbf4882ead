// The model's hyper-parameters, read from a Hugging Face `config.json`.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace mf {

struct ModelConfig {
  std::string model_type = "moduleformer";
  int64_t vocab_size = 0;
  int64_t n_embd = 0;
  int64_t n_layer = 0;
  int64_t n_head = 1;
  int64_t att_hidden = 0;
  int64_t ffd_hidden = 0;
  int64_t gating_size = 0;
  // Defaults from the config; the checkpoint's tensor shapes decide per layer.
  int64_t n_att_experts = 0;
  int64_t n_mlp_experts = 0;
  int64_t k_att = 0;
  int64_t k_mlp = 0;
  double layer_norm_epsilon = 1e-5;
  int64_t bos_token_id = 0;
  int64_t eos_token_id = 0;
  bool tie_word_embeddings = false;
  std::string gate_type = "mlp";
  std::string activation_function = "gelu_new";
  std::string att_func = "stickbreaking";
  std::string torch_dtype = "bfloat16";

  int64_t head_dim() const { return att_hidden / n_head; }
  // MoLM checkpoints have no K/V projection: key = value = the LayerNorm_1 output.
  bool kv_is_identity() const { return n_head == 1 && att_hidden == n_embd; }
  // Width of one token's cache entry per layer: K=V is stored once.
  int64_t kv_width() const { return kv_is_identity() ? n_embd : 2 * att_hidden; }
};

// Parameters of the model the config describes (every expert, both mixtures, embeddings
// and head), for sizing memory before anything is allocated; an error when the count does
// not fit in 63 bits.
absl::StatusOr<int64_t> ParameterCount(const ModelConfig& config);

// Parses and validates config text; `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

}  // namespace mf
