#include "engine/checkpoint/config.h"

#include <climits>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace mf {
namespace {

using nlohmann::json;

absl::Status FieldError(const std::string& source, const std::string& field,
                        const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": field '", field, "' ", problem));
}

absl::Status ReadInt(const json& doc, const std::string& source, const char* field,
                     bool required, int64_t* out) {
  auto it = doc.find(field);
  if (it == doc.end() || it->is_null()) {
    return required ? FieldError(source, field, "is missing") : absl::OkStatus();
  }
  if (!it->is_number_integer()) return FieldError(source, field, "must be an integer");
  *out = it->get<int64_t>();
  return absl::OkStatus();
}

absl::Status ReadString(const json& doc, const std::string& source, const char* field,
                        std::string* out) {
  auto it = doc.find(field);
  if (it == doc.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_string()) return FieldError(source, field, "must be a string");
  *out = it->get<std::string>();
  return absl::OkStatus();
}

absl::Status Validate(const ModelConfig& config, const std::string& source) {
  if (config.model_type != "moduleformer") {
    return FieldError(source, "model_type",
                      absl::StrCat("is '", config.model_type, "', expected 'moduleformer'"));
  }
  if (config.gate_type != "mlp") {
    return FieldError(source, "gate_type",
                      absl::StrCat("'", config.gate_type,
                                   "' is not supported (only 'mlp', used by every MoLM model)"));
  }
  if (config.activation_function != "gelu_new") {
    return FieldError(source, "activation_function",
                      absl::StrCat("'", config.activation_function,
                                   "' is not supported (only 'gelu_new')"));
  }
  if (config.att_func != "stickbreaking") {
    return FieldError(source, "att_func",
                      absl::StrCat("'", config.att_func, "' is not supported (only 'stickbreaking')"));
  }
  const std::pair<const char*, int64_t> positive[] = {
      {"vocab_size", config.vocab_size},   {"n_embd", config.n_embd},
      {"n_layer", config.n_layer},         {"n_head", config.n_head},
      {"att_hidden", config.att_hidden},   {"ffd_hidden", config.ffd_hidden},
      {"gating_size", config.gating_size}, {"n_att_experts", config.n_att_experts},
      {"n_mlp_experts", config.n_mlp_experts}, {"k_att", config.k_att},
      {"k_mlp", config.k_mlp}};
  for (const auto& [field, value] : positive) {
    if (value <= 0) return FieldError(source, field, "must be positive");
    // Sizes index int32 token ids and kernel dimensions.
    if (value > INT32_MAX) return FieldError(source, field, absl::StrCat(value, " exceeds 2^31 - 1"));
  }
  if (config.att_hidden % config.n_head != 0) {
    return FieldError(source, "att_hidden", "must be divisible by n_head");
  }
  if (config.k_att > config.n_att_experts) {
    return FieldError(source, "k_att", "must not exceed n_att_experts");
  }
  if (config.k_mlp > config.n_mlp_experts) {
    return FieldError(source, "k_mlp", "must not exceed n_mlp_experts");
  }
  if (!(config.layer_norm_epsilon > 0)) {
    return FieldError(source, "layer_norm_epsilon", "must be positive");
  }
  if (absl::StatusOr<int64_t> parameters = ParameterCount(config); !parameters.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", parameters.status().message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<int64_t> ParameterCount(const ModelConfig& config) {
  // Every dimension is below 2^31 (Validate), so no product of three overflows 128 bits.
  using Wide = __int128;
  const Wide d = config.n_embd, layers = config.n_layer, gating = config.gating_size;
  Wide total = Wide{config.vocab_size} * d * (config.tie_word_embeddings ? 1 : 2) + 2 * d;  // wte, lm_head, ln_f
  for (const auto& [experts, hidden] : {std::pair{config.n_att_experts, config.att_hidden},
                                        std::pair{config.n_mlp_experts, config.ffd_hidden}}) {
    const Wide router = gating * (d + 1) + Wide{experts} * gating;
    total += layers * (router + Wide{experts} * 2 * d * hidden);
  }
  total += layers * 4 * d;  // LayerNorms
  if (!config.kv_is_identity()) total += layers * 2 * Wide{config.att_hidden} * (d + 1);
  if (total > INT64_MAX) return absl::InvalidArgumentError("the model's parameter count exceeds 2^63");
  return static_cast<int64_t>(total);
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source) {
  json doc = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(source, ": malformed JSON"));
  if (!doc.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": expected a JSON object"));

  ModelConfig config;
  MF_RETURN_IF_ERROR(ReadString(doc, source, "model_type", &config.model_type));
  MF_RETURN_IF_ERROR(ReadInt(doc, source, "vocab_size", true, &config.vocab_size));
  MF_RETURN_IF_ERROR(ReadInt(doc, source, "n_embd", true, &config.n_embd));
  MF_RETURN_IF_ERROR(ReadInt(doc, source, "n_layer", true, &config.n_layer));
  MF_RETURN_IF_ERROR(ReadInt(doc, source, "n_head", true, &config.n_head));
  MF_RETURN_IF_ERROR(ReadInt(doc, source, "att_hidden", true, &config.att_hidden));
  MF_RETURN_IF_ERROR(ReadInt(doc, source, "ffd_hidden", true, &config.ffd_hidden));
  MF_RETURN_IF_ERROR(ReadInt(doc, source, "gating_size", true, &config.gating_size));
  MF_RETURN_IF_ERROR(ReadInt(doc, source, "n_att_experts", true, &config.n_att_experts));
  MF_RETURN_IF_ERROR(ReadInt(doc, source, "n_mlp_experts", true, &config.n_mlp_experts));
  MF_RETURN_IF_ERROR(ReadInt(doc, source, "k_att", true, &config.k_att));
  MF_RETURN_IF_ERROR(ReadInt(doc, source, "k_mlp", true, &config.k_mlp));
  MF_RETURN_IF_ERROR(ReadInt(doc, source, "bos_token_id", false, &config.bos_token_id));
  MF_RETURN_IF_ERROR(ReadInt(doc, source, "eos_token_id", false, &config.eos_token_id));
  if (auto it = doc.find("layer_norm_epsilon"); it != doc.end()) {
    if (!it->is_number()) return FieldError(source, "layer_norm_epsilon", "must be a number");
    config.layer_norm_epsilon = it->get<double>();
  }
  if (auto it = doc.find("tie_word_embeddings"); it != doc.end() && !it->is_null()) {
    if (!it->is_boolean()) return FieldError(source, "tie_word_embeddings", "must be a boolean");
    config.tie_word_embeddings = it->get<bool>();
  }
  MF_RETURN_IF_ERROR(ReadString(doc, source, "gate_type", &config.gate_type));
  MF_RETURN_IF_ERROR(ReadString(doc, source, "activation_function", &config.activation_function));
  MF_RETURN_IF_ERROR(ReadString(doc, source, "att_func", &config.att_func));
  MF_RETURN_IF_ERROR(ReadString(doc, source, "torch_dtype", &config.torch_dtype));
  MF_RETURN_IF_ERROR(Validate(config, source));
  return config;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::ifstream file(path);
  if (!file) return absl::NotFoundError(absl::StrCat(path, ": cannot open config file"));
  std::stringstream text;
  text << file.rdbuf();
  return ParseModelConfig(text.str(), path);
}

}  // namespace mf
