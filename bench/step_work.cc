#include "bench/step_work.h"

#include <set>

namespace mf::bench {

double PrefillFlopsPerToken(const ModelConfig& config, double mean_keys) {
  const double d = static_cast<double>(config.n_embd), att = static_cast<double>(config.att_hidden);
  const double gate = static_cast<double>(config.gating_size);
  double per_layer = 2.0 * config.k_att * (d * att + att * d) + 2.0 * config.k_mlp * 2.0 * d * config.ffd_hidden;
  if (!config.kv_is_identity()) per_layer += 2.0 * 2.0 * d * att;
  per_layer += 2.0 * (2.0 * d * gate) + 2.0 * gate * static_cast<double>(config.n_att_experts + config.n_mlp_experts);
  per_layer += 2.0 * config.k_att * 2.0 * mean_keys * att;
  return per_layer * static_cast<double>(config.n_layer);
}

DecodeStepBytes DecodeStepFloor(const ModelConfig& config, const std::vector<std::array<MixtureRouting, 2>>& routing,
                                int64_t cached_rows, int batch, const StoredSizes& sizes) {
  const double d = static_cast<double>(config.n_embd), att = static_cast<double>(config.att_hidden);
  const double gate = static_cast<double>(config.gating_size);
  // One expert's two matrices: attention [d, att] + [att, d], MLP [d, ffd] + [ffd, d].
  const std::array<double, 2> expert_elements = {2.0 * d * att, 2.0 * d * static_cast<double>(config.ffd_hidden)};
  const std::array<double, 2> experts_per_layer = {static_cast<double>(config.n_att_experts),
                                                   static_cast<double>(config.n_mlp_experts)};
  DecodeStepBytes bytes;
  for (const auto& layer : routing) {
    for (size_t mixture = 0; mixture < layer.size(); ++mixture) {
      const std::set<int32_t> chosen(layer[mixture].experts.begin(), layer[mixture].experts.end());
      bytes.experts += static_cast<double>(chosen.size()) * expert_elements[mixture] * sizes.matrix_bytes;
      // Router: w1 [gate, d], b1 [gate], w2 [experts, gate].
      bytes.other += (gate * d + gate + experts_per_layer[mixture] * gate) * sizes.router_bytes;
    }
  }
  const double layers = static_cast<double>(config.n_layer);
  bytes.other += layers * 4.0 * d * sizes.router_bytes;  // two LayerNorms (weight, bias) a layer
  if (!config.kv_is_identity()) bytes.other += layers * (2.0 * att * d * sizes.matrix_bytes + 2.0 * att * sizes.router_bytes);
  bytes.other += batch * d * sizes.matrix_bytes;  // embedding rows
  bytes.lm_head = static_cast<double>(config.vocab_size) * d * sizes.matrix_bytes;
  const double row_bytes = static_cast<double>(config.kv_width()) * sizes.kv_bytes * layers;
  bytes.kv_cache = static_cast<double>(cached_rows + batch) * row_bytes + batch * row_bytes;  // read, then the new rows written
  return bytes;
}

}  // namespace mf::bench
