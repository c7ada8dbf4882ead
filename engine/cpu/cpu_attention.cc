// Paged KV-cache writes and stick-breaking attention on the CPU.
#include <cmath>
#include <cstring>

#include "engine/cpu/cpu_backend.h"

namespace mf {
namespace {

// softplus(x) = log(1 + e^x), stable for large |x|.
double Softplus(double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x))); }

}  // namespace

void CpuBackend::WriteKv(const Tensor& key, const Tensor* value, const StepLayout& layout, Tensor& layer_cache) {
  const int64_t row_width = layer_cache.cols();
  const int64_t key_width = key.cols();
  for (int t = 0; t < layout.num_tokens; ++t) {
    float* row = layer_cache.as<float>() + static_cast<int64_t>(layout.cache_rows.as<int32_t>()[t]) * row_width;
    std::memcpy(row, key.as<float>() + t * key_width, static_cast<size_t>(key_width) * sizeof(float));
    if (value != nullptr) {
      std::memcpy(row + key_width, value->as<float>() + t * key_width, static_cast<size_t>(key_width) * sizeof(float));
    }
  }
}

// For query position i, a_ij = sigmoid(l_ij) · Π_{j<m<=i} (1 - sigmoid(l_im)), walked
// from j = i backwards in log space so long histories never underflow to garbage.
void CpuBackend::StickBreakingAttention(const Tensor& queries, const RoutingPlan& plan, const StepLayout& layout,
                                        const Tensor& layer_cache, const AttentionShape& shape, Tensor& out) {
  const int64_t att_hidden = static_cast<int64_t>(shape.num_heads) * shape.head_dim;
  const int64_t row_width = layer_cache.cols();
  const int64_t value_offset = shape.kv_identity ? 0 : att_hidden;
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.head_dim));
  const int64_t num_slots = queries.rows();
  std::vector<double> accumulator(static_cast<size_t>(shape.head_dim));

  for (int64_t slot = 0; slot < num_slots; ++slot) {
    const int32_t token = plan.slot_tokens.as<int32_t>()[slot];
    const int32_t seq = layout.token_seq.as<int32_t>()[token];
    const int32_t position = layout.token_pos.as<int32_t>()[token];
    const int32_t* block_table = layout.block_tables.as<int32_t>() + static_cast<int64_t>(seq) * layout.max_blocks_per_sequence;
    for (int head = 0; head < shape.num_heads; ++head) {
      const float* query = queries.as<float>() + slot * att_hidden + head * shape.head_dim;
      std::fill(accumulator.begin(), accumulator.end(), 0.0);
      double log_remaining = 0;  // Σ log(1 - sigmoid(l_im)) over the keys already passed
      for (int32_t j = position; j >= 0; --j) {
        const int64_t cache_row = static_cast<int64_t>(block_table[j / layout.block_size]) * layout.block_size +
                                  j % layout.block_size;
        const float* row = layer_cache.as<float>() + cache_row * row_width;
        const float* key = row + head * shape.head_dim;
        const float* value = row + value_offset + head * shape.head_dim;
        double logit = 0;
        for (int i = 0; i < shape.head_dim; ++i) logit += static_cast<double>(query[i]) * key[i];
        logit *= scale;
        // log sigmoid(l) = l - softplus(l) and log(1 - sigmoid(l)) = -softplus(l): one
        // softplus serves both (the transcendental calls are most of this loop's time).
        const double softplus = Softplus(logit);
        const double weight = std::exp(log_remaining + logit - softplus);
        for (int i = 0; i < shape.head_dim; ++i) accumulator[i] += weight * value[i];
        log_remaining -= softplus;
      }
      float* result = out.as<float>() + slot * att_hidden + head * shape.head_dim;
      for (int i = 0; i < shape.head_dim; ++i) result[i] = static_cast<float>(accumulator[i]);
    }
  }
}

}  // namespace mf
