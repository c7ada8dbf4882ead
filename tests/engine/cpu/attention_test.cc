// Stick-breaking attention over the paged cache against a naive O(T^2) product.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "engine/cpu/cpu_backend.h"

namespace mf {
namespace {

double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

struct AttentionCase {
  std::vector<int> lengths;  // tokens per sequence, all new this step
  int num_heads;
  int head_dim;
  bool kv_identity;
  int block_size;
};

void PrintTo(const AttentionCase& param, std::ostream* os) {
  *os << param.lengths.size() << " sequences, " << param.num_heads << "x" << param.head_dim
      << (param.kv_identity ? " K=V" : " projected K/V") << ", block " << param.block_size;
}

class AttentionTest : public ::testing::TestWithParam<AttentionCase> {};

Tensor Filled(Backend& backend, DType dtype, std::vector<int64_t> shape, const void* values) {
  Tensor tensor = *backend.Allocate(dtype, std::move(shape));
  backend.CopyFromHost(values, tensor);
  return tensor;
}

TEST_P(AttentionTest, MatchesNaiveProductFormula) {
  const AttentionCase& param = GetParam();
  CpuBackend backend;
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int att_hidden = param.num_heads * param.head_dim;
  const int row_width = param.kv_identity ? att_hidden : 2 * att_hidden;
  const int num_seqs = static_cast<int>(param.lengths.size());
  const int total = std::accumulate(param.lengths.begin(), param.lengths.end(), 0);

  // Blocks handed out in a shuffled order so block tables are not contiguous.
  int max_blocks = 0;
  for (int length : param.lengths) max_blocks = std::max(max_blocks, (length + param.block_size - 1) / param.block_size);
  std::vector<int32_t> pool(static_cast<size_t>(num_seqs * max_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  std::vector<int32_t> block_tables(pool);

  std::vector<int32_t> token_seq, token_pos, cache_rows, slot_tokens;
  std::vector<float> rows;  // the K/V row of every token, in batch order
  for (int s = 0; s < num_seqs; ++s) {
    for (int p = 0; p < param.lengths[s]; ++p) {
      token_seq.push_back(s);
      token_pos.push_back(p);
      cache_rows.push_back(block_tables[s * max_blocks + p / param.block_size] * param.block_size + p % param.block_size);
      slot_tokens.push_back(static_cast<int32_t>(slot_tokens.size()));
      for (int i = 0; i < row_width; ++i) rows.push_back(normal(rng));
    }
  }
  std::vector<float> queries(static_cast<size_t>(total) * att_hidden);
  for (float& q : queries) q = 2.0f * normal(rng);

  StepLayout layout;
  layout.num_tokens = total;
  layout.num_sequences = num_seqs;
  layout.block_size = param.block_size;
  layout.max_blocks_per_sequence = max_blocks;
  layout.token_seq = Filled(backend, DType::kI32, {total}, token_seq.data());
  layout.token_pos = Filled(backend, DType::kI32, {total}, token_pos.data());
  layout.cache_rows = Filled(backend, DType::kI32, {total}, cache_rows.data());
  layout.block_tables = Filled(backend, DType::kI32, {num_seqs, max_blocks}, block_tables.data());
  RoutingPlan plan;
  plan.num_tokens = total;
  plan.top_k = 1;
  plan.slot_tokens = Filled(backend, DType::kI32, {total}, slot_tokens.data());

  Tensor cache = *backend.Allocate(DType::kF32, {static_cast<int64_t>(pool.size()) * param.block_size, row_width});
  Tensor kv = Filled(backend, DType::kF32, {total, row_width}, rows.data());
  backend.WriteKv(kv, nullptr, layout, cache);  // the whole row at once, key and value together
  Tensor query_tensor = Filled(backend, DType::kF32, {total, att_hidden}, queries.data());
  Tensor out = *backend.Allocate(DType::kF32, {total, att_hidden});
  backend.StickBreakingAttention(query_tensor, plan, layout, cache,
                                 AttentionShape{param.num_heads, param.head_dim, param.kv_identity}, out);

  const int value_offset = param.kv_identity ? 0 : att_hidden;
  int first_token = 0;
  double worst = 0;
  for (int s = 0; s < num_seqs; ++s) {
    for (int i = 0; i < param.lengths[s]; ++i) {
      const int token = first_token + i;
      for (int h = 0; h < param.num_heads; ++h) {
        std::vector<double> logits(static_cast<size_t>(i) + 1);
        for (int j = 0; j <= i; ++j) {
          double dot = 0;
          for (int c = 0; c < param.head_dim; ++c) {
            dot += double(queries[token * att_hidden + h * param.head_dim + c]) *
                   rows[(first_token + j) * row_width + h * param.head_dim + c];
          }
          logits[j] = dot / std::sqrt(double(param.head_dim));
        }
        for (int c = 0; c < param.head_dim; ++c) {
          double expected = 0;
          for (int j = 0; j <= i; ++j) {
            double weight = Sigmoid(logits[j]);
            for (int m = j + 1; m <= i; ++m) weight *= 1.0 - Sigmoid(logits[m]);
            expected += weight * rows[(first_token + j) * row_width + value_offset + h * param.head_dim + c];
          }
          worst = std::max(worst, std::abs(expected - out.as<float>()[token * att_hidden + h * param.head_dim + c]));
        }
      }
    }
    first_token += param.lengths[s];
  }
  EXPECT_LT(worst, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(AttentionCase{{1}, 1, 8, true, 4}, AttentionCase{{37}, 1, 16, true, 4},
                                           AttentionCase{{5, 1, 23, 16}, 1, 8, true, 8},
                                           AttentionCase{{9, 30}, 4, 8, false, 16},
                                           AttentionCase{{64, 3}, 2, 4, false, 1}));

// With every value equal to one, the output is the stick used so far:
// Σ_j a_ij = 1 - Π_{m<=i} (1 - sigmoid(l_im)); log space keeps it exact on long contexts.
TEST(AttentionLongContextTest, WeightsSumToTheBrokenStick) {
  CpuBackend backend;
  const int length = 4096, head_dim = 4, block_size = 16;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> keys(static_cast<size_t>(length) * 2 * head_dim, 1.0f);
  for (int t = 0; t < length; ++t) {
    for (int c = 0; c < head_dim; ++c) keys[t * 2 * head_dim + c] = normal(rng);
  }
  std::vector<float> query = {0.3f, -1.2f, 0.8f, 0.1f};
  std::vector<int32_t> table(length / block_size);
  std::iota(table.begin(), table.end(), 0);
  std::vector<int32_t> last_only = {length - 1}, zero = {0};

  StepLayout layout;
  layout.num_tokens = 1;
  layout.num_sequences = 1;
  layout.block_size = block_size;
  layout.max_blocks_per_sequence = static_cast<int>(table.size());
  layout.token_seq = Filled(backend, DType::kI32, {1}, zero.data());
  layout.token_pos = Filled(backend, DType::kI32, {1}, last_only.data());
  layout.block_tables = Filled(backend, DType::kI32, {1, static_cast<int64_t>(table.size())}, table.data());
  RoutingPlan plan;
  plan.num_tokens = 1;
  plan.top_k = 1;
  plan.slot_tokens = Filled(backend, DType::kI32, {1}, zero.data());
  Tensor cache = Filled(backend, DType::kF32, {length, 2 * head_dim}, keys.data());
  Tensor queries = Filled(backend, DType::kF32, {1, head_dim}, query.data());
  Tensor out = *backend.Allocate(DType::kF32, {1, head_dim});
  backend.StickBreakingAttention(queries, plan, layout, cache, AttentionShape{1, head_dim, false}, out);

  double log_remaining = 0;
  for (int t = 0; t < length; ++t) {
    double dot = 0;
    for (int c = 0; c < head_dim; ++c) dot += double(query[c]) * keys[t * 2 * head_dim + c];
    log_remaining += std::log1p(-Sigmoid(dot / 2.0));
  }
  const double expected = -std::expm1(log_remaining);
  for (int c = 0; c < head_dim; ++c) EXPECT_NEAR(out.as<float>()[c], expected, 1e-6);
}

}  // namespace
}  // namespace mf
