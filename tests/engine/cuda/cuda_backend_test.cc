// Every CUDA backend operation against the CPU reference on random inputs.
#include "engine/cuda/cuda_backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "engine/cpu/cpu_backend.h"
#include "tests/cuda_test_util.h"

namespace mf {
namespace {

// Values exactly representable in bf16, so both backends see identical weights and caches.
std::vector<float> RandomBf16Values(size_t count, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(count);
  for (float& value : values) value = Bf16ToFloat(FloatToBf16(normal(rng)));
  return values;
}

HostTensor HostF32(std::vector<int64_t> shape, const std::vector<float>& values) {
  auto storage = std::make_shared<std::vector<float>>(values);
  return HostTensor{"test", DType::kF32, std::move(shape), storage->data(), storage};
}

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
    auto backend = CudaBackend::Create(0);
    ASSERT_TRUE(backend.ok()) << backend.status();
    cuda_ = *std::move(backend);
  }

  Tensor OnBoth(Backend& backend, std::vector<int64_t> shape, const std::vector<float>& values) {
    Tensor tensor = *backend.Allocate(DType::kF32, shape);
    backend.CopyFromHost(values.data(), tensor);
    return tensor;
  }
  template <typename T>
  Tensor Ints(Backend& backend, std::vector<int64_t> shape, const std::vector<T>& values) {
    Tensor tensor = *backend.Allocate(DType::kI32, shape);
    backend.CopyFromHost(values.data(), tensor);
    return tensor;
  }
  std::vector<float> Read(Backend& backend, const Tensor& tensor) {
    std::vector<float> values(static_cast<size_t>(tensor.num_elements()));
    backend.ToFloat(tensor, values.data());
    return values;
  }
  // Largest |a - b| / (1 + |b|).
  static double MaxError(const std::vector<float>& a, const std::vector<float>& b) {
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(double(a[i]) - b[i]) / (1 + std::abs(b[i])));
    return worst;
  }

  void CheckMixture(int tokens, int width, int hidden);

  CpuBackend cpu_;
  std::unique_ptr<CudaBackend> cuda_;
  std::mt19937 rng_{17};
};

TEST_F(CudaBackendTest, LinearLayerNormAndActivations) {
  const int rows = 37, in = 96, out = 83;  // an odd width, as vocabularies have
  const std::vector<float> x = RandomBf16Values(rows * in, rng_), w = RandomBf16Values(out * in, rng_, 0.1f),
                           b = RandomBf16Values(out, rng_), gamma = RandomBf16Values(in, rng_);
  for (WeightUse use : {WeightUse::kMatrix, WeightUse::kRouter}) {
    std::vector<std::vector<float>> results;
    for (Backend* backend : {static_cast<Backend*>(&cpu_), static_cast<Backend*>(cuda_.get())}) {
      Tensor input = OnBoth(*backend, {rows, in}, x);
      Tensor normed = *backend->Allocate(DType::kF32, {rows, in});
      Tensor weight = *backend->UploadWeight(HostF32({out, in}, w), use);
      Tensor bias = *backend->UploadWeight(HostF32({out}, b), WeightUse::kVector);
      Tensor scale = *backend->UploadWeight(HostF32({in}, gamma), WeightUse::kVector);
      backend->LayerNorm(input, scale, scale, 1e-5f, normed);
      Tensor result = *backend->Allocate(DType::kF32, {rows, out});
      backend->Linear(normed, weight, &bias, result);
      // And a LayerNorm of an odd width (the kernels' one-value-at-a-time path).
      Tensor renormed = *backend->Allocate(DType::kF32, {rows, out});
      backend->LayerNorm(result, bias, bias, 1e-5f, renormed);
      result = renormed;
      backend->GeluNew(result);
      backend->GeluExact(result);
      results.push_back(Read(*backend, result));
    }
    ASSERT_TRUE(cuda_->status().ok()) << cuda_->status();
    // Exact mode feeds bf16 matrices the activations as two bf16 halves: fp32-level agreement.
    EXPECT_LT(MaxError(results[1], results[0]), 1e-4);
  }
}

// The gate MLP: decode-sized batches (up to 16 tokens) take the router kernels, larger
// ones cuBLAS; both agree with the CPU to fp32 rounding (routing decisions depend on it).
TEST_F(CudaBackendTest, RouterLogitsMatchCpu) {
  const int d = 1024, gate = 256, experts = 32;
  const std::vector<float> w1 = RandomBf16Values(gate * d, rng_, 0.03f), b1 = RandomBf16Values(gate, rng_, 0.1f),
                           w2 = RandomBf16Values(experts * gate, rng_, 0.06f);
  auto bf16_backend = CudaBackend::Create(0, CudaPrecision::kBf16);
  ASSERT_TRUE(bf16_backend.ok());
  for (int tokens : {1, 3, 8, 9, 16, 17, 300}) {
    const std::vector<float> x = RandomBf16Values(static_cast<size_t>(tokens) * d, rng_);
    std::vector<std::vector<float>> results;
    for (Backend* backend : {static_cast<Backend*>(&cpu_), static_cast<Backend*>(cuda_.get()),
                             static_cast<Backend*>(bf16_backend->get())}) {
      Tensor input = OnBoth(*backend, {tokens, d}, x);
      Tensor first = *backend->UploadWeight(HostF32({gate, d}, w1), WeightUse::kRouter);
      Tensor bias = *backend->UploadWeight(HostF32({gate}, b1), WeightUse::kRouter);
      Tensor second = *backend->UploadWeight(HostF32({experts, gate}, w2), WeightUse::kRouter);
      Tensor logits = *backend->Allocate(DType::kF32, {tokens, experts});
      ASSERT_TRUE(backend->RouterLogits(input, first, bias, second, logits).ok());
      results.push_back(Read(*backend, logits));
    }
    ASSERT_TRUE(cuda_->status().ok()) << cuda_->status();
    ASSERT_TRUE((*bf16_backend)->status().ok()) << (*bf16_backend)->status();
    EXPECT_LT(MaxError(results[1], results[0]), 1e-5) << tokens << " tokens";
    // Beyond 16 tokens bf16 mode multiplies on TF32 tensor cores (operands rounded to 2^-11).
    EXPECT_LT(MaxError(results[2], results[0]), tokens > 16 ? 3e-3 : 1e-5) << tokens << " tokens, bf16 mode";
  }
}

TEST_F(CudaBackendTest, ArgmaxRowsPicksTheLowestIdAmongTies) {
  const int rows = 5, vocab = 50295;
  std::vector<float> logits = RandomBf16Values(static_cast<size_t>(rows) * vocab, rng_);
  for (int c : {777, 40000, 123}) logits[static_cast<size_t>(vocab) + c] = 9.0f;  // row 1: a three-way tie
  std::fill(logits.begin() + 2 * vocab, logits.begin() + 3 * vocab, -INFINITY);  // row 2: nothing finite
  logits[static_cast<size_t>(4) * vocab + vocab - 1] = 50.0f;                       // row 4: the last id
  std::vector<std::vector<int32_t>> results;
  for (Backend* backend : {static_cast<Backend*>(&cpu_), static_cast<Backend*>(cuda_.get())}) {
    Tensor tokens = *backend->Allocate(DType::kI32, {rows});
    backend->ArgmaxRows(OnBoth(*backend, {rows, vocab}, logits), tokens);
    std::vector<int32_t> host(rows);
    backend->CopyToHost(tokens, host.data());
    results.push_back(host);
  }
  ASSERT_TRUE(cuda_->status().ok()) << cuda_->status();
  EXPECT_EQ(results[1], results[0]);
  EXPECT_EQ(results[1][1], 123);
  EXPECT_EQ(results[1][2], 0);
  EXPECT_EQ(results[1][4], vocab - 1);
}

// Up to 32 tokens (64 slots) take the split-reduction GEMV kernel; 6144 and more (12,288
// slots) per-expert cuBLASLt GEMMs; in between, the grouped tensor-core kernel, whose tile
// follows the mean segment (40 and 100 tokens: 32-row decode tiles, 200 and 300 tokens: 64
// and 128 rows). The width (72) leaves partial tiles in k and n. The MLP's hidden activations are
// kept as the backend asks (bf16 on the tensor-core paths in bf16 mode).
class CudaExpertTest : public CudaBackendTest, public ::testing::WithParamInterface<int> {};

TEST_P(CudaExpertTest, RoutingGroupedGemmAndCombineWithSkewedAndEmptyExperts) {
  CheckMixture(GetParam(), 72, 96);
}

INSTANTIATE_TEST_SUITE_P(Tokens, CudaExpertTest, ::testing::Values(6200, 2100, 2000, 300, 200, 100, 40, 20, 1));

// Decode-sized tiles (64-deep stages) with a ragged last stage (k 136 and 264) and a ragged
// column tile (264 outputs).
TEST_F(CudaBackendTest, DecodeSizedMixtureWithRaggedTiles) {
  CheckMixture(40, 136, 264);
  CheckMixture(100, 136, 264);
}

// CPU, CUDA exact and CUDA bf16 agree on a whole mixture (routing, both expert products with
// gelu_new between, the gated combine into the residual).
void CudaBackendTest::CheckMixture(int tokens, int width, int hidden) {
  const int experts = 8, top_k = 2;
  std::vector<float> logits = RandomBf16Values(tokens * experts, rng_, 2.0f);
  for (int t = 0; t < tokens; ++t) {
    logits[t * experts + 0] += 6.0f;   // skewed: expert 0 is almost always chosen
    logits[t * experts + 7] -= 40.0f;  // expert 7 never is
  }
  const std::vector<float> x = RandomBf16Values(tokens * width, rng_), w_in = RandomBf16Values(experts * width * hidden, rng_, 0.1f),
                           w_out = RandomBf16Values(experts * hidden * width, rng_, 0.1f), residual = RandomBf16Values(tokens * width, rng_);
  std::vector<std::vector<float>> results;
  std::vector<std::vector<int32_t>> offsets;
  auto bf16_backend = CudaBackend::Create(0, CudaPrecision::kBf16);
  ASSERT_TRUE(bf16_backend.ok());
  for (Backend* backend : {static_cast<Backend*>(&cpu_), static_cast<Backend*>(cuda_.get()),
                           static_cast<Backend*>(bf16_backend->get())}) {
    RoutingPlan plan;
    ASSERT_TRUE(backend->Route(OnBoth(*backend, {tokens, experts}, logits), top_k, plan).ok());
    std::vector<int32_t> plan_offsets(experts + 1);
    backend->CopyToHost(plan.expert_offsets, plan_offsets.data());
    offsets.push_back(plan_offsets);
    Tensor input = OnBoth(*backend, {tokens, width}, x);
    Tensor inner = *backend->Allocate(backend->expert_hidden_dtype(tokens * top_k), {tokens * top_k, hidden});
    backend->ExpertGemm(input, plan, true, *backend->UploadWeight(HostF32({experts, width, hidden}, w_in), WeightUse::kMatrix),
                        ExpertActivation::kGeluNew, inner);
    Tensor projected = *backend->Allocate(DType::kF32, {tokens * top_k, width});
    backend->ExpertGemm(inner, plan, false, *backend->UploadWeight(HostF32({experts, hidden, width}, w_out), WeightUse::kMatrix),
                        ExpertActivation::kNone, projected);
    Tensor hidden_state = OnBoth(*backend, {tokens, width}, residual);
    backend->CombineExperts(projected, plan, hidden_state);
    results.push_back(Read(*backend, hidden_state));
  }
  ASSERT_TRUE(cuda_->status().ok()) << cuda_->status();
  ASSERT_TRUE((*bf16_backend)->status().ok()) << (*bf16_backend)->status();
  EXPECT_EQ(offsets[0], offsets[1]);
  EXPECT_EQ(offsets[0], offsets[2]);
  EXPECT_EQ(offsets[1][8] - offsets[1][7], 0);             // the empty expert
  EXPECT_GT(offsets[1][1] - offsets[1][0], tokens * 9 / 10);  // the skewed one
  EXPECT_LT(MaxError(results[1], results[0]), 1e-4);
  // bf16 mode rounds the activations entering each product to bf16 (relative 2^-9 each).
  EXPECT_LT(MaxError(results[2], results[0]), 2e-2);
}

struct AttentionCase {
  std::vector<int> lengths;
  int heads, head_dim;
  bool identity;
  // Tokens each sequence adds in the step (the rest of its length is already cached);
  // 0: all of them (a prompt). 1 is a decode step (the split-history path).
  int new_tokens = 0;
};

void PrintTo(const AttentionCase& c, std::ostream* out) {
  *out << c.lengths.size() << " sequences up to " << *std::max_element(c.lengths.begin(), c.lengths.end())
       << " tokens, " << c.heads << " x " << c.head_dim << (c.identity ? ", identity" : ", separate K/V")
       << ", new tokens " << c.new_tokens;
}

class CudaAttentionTest : public CudaBackendTest, public ::testing::WithParamInterface<AttentionCase> {};

// `count` ragged history lengths between 1 and about 2,000.
std::vector<int> RaggedLengths(int count) {
  std::vector<int> lengths;
  for (int i = 0; i < count; ++i) lengths.push_back(1 + (i * 977 + 31) % 2011);
  return lengths;
}

// Every sequence's K/V rows are written to a paged cache; then one step attends from its
// new tokens, each with two query slots in a shuffled (expert-grouped) order. In bf16 mode
// sequences adding 16 or more tokens take the tensor-core prompt path, the rest (and all
// of exact mode) the paged kernel.
TEST_P(CudaAttentionTest, MatchesCpuOnRaggedPagedBatches) {
  const AttentionCase param = GetParam();
  const int block_size = 16, top_k = 2, att_hidden = param.heads * param.head_dim;
  const int row_width = param.identity ? att_hidden : 2 * att_hidden;
  const int num_seqs = static_cast<int>(param.lengths.size());
  int max_blocks = 0, total = 0;
  for (int length : param.lengths) {
    max_blocks = std::max(max_blocks, (length + block_size - 1) / block_size);
    total += length;
  }
  std::vector<int32_t> tables(static_cast<size_t>(num_seqs * max_blocks));
  std::iota(tables.begin(), tables.end(), 0);
  std::shuffle(tables.begin(), tables.end(), rng_);
  std::vector<int32_t> all_rows, token_seq, token_pos, seq_new, seq_begin{0}, seq_cached;
  for (int s = 0; s < num_seqs; ++s) {
    const int length = param.lengths[s];
    const int num_new = param.new_tokens == 0 ? length : std::min(param.new_tokens, length);
    for (int p = 0; p < length; ++p) {
      all_rows.push_back(tables[s * max_blocks + p / block_size] * block_size + p % block_size);
      if (p < length - num_new) continue;
      token_seq.push_back(s);
      token_pos.push_back(p);
    }
    seq_new.push_back(num_new);
    seq_cached.push_back(length - num_new);
    seq_begin.push_back(static_cast<int32_t>(token_seq.size()));
  }
  const int num_tokens = static_cast<int>(token_seq.size()), num_slots = num_tokens * top_k;
  std::vector<int32_t> slot_pairs(static_cast<size_t>(num_slots));  // slot -> token * top_k + rank
  std::iota(slot_pairs.begin(), slot_pairs.end(), 0);
  std::shuffle(slot_pairs.begin(), slot_pairs.end(), rng_);
  std::vector<int32_t> slot_tokens(static_cast<size_t>(num_slots)), token_slots(static_cast<size_t>(num_slots));
  for (int slot = 0; slot < num_slots; ++slot) {
    slot_tokens[static_cast<size_t>(slot)] = slot_pairs[static_cast<size_t>(slot)] / top_k;
    token_slots[static_cast<size_t>(slot_pairs[static_cast<size_t>(slot)])] = slot;
  }
  const std::vector<float> rows = RandomBf16Values(static_cast<size_t>(total) * row_width, rng_, 0.5f);
  const std::vector<float> queries = RandomBf16Values(static_cast<size_t>(num_slots) * att_hidden, rng_, 0.5f);
  std::vector<std::vector<float>> results;
  auto bf16_backend = CudaBackend::Create(0, CudaPrecision::kBf16);
  ASSERT_TRUE(bf16_backend.ok());
  ASSERT_EQ((*bf16_backend)->kv_cache_dtype(), DType::kBF16);
  ASSERT_EQ(cuda_->kv_cache_dtype(), DType::kF32);
  for (Backend* backend : {static_cast<Backend*>(&cpu_), static_cast<Backend*>(cuda_.get()),
                           static_cast<Backend*>(bf16_backend->get())}) {
    Tensor cache = *backend->Allocate(backend->kv_cache_dtype(), {static_cast<int64_t>(tables.size()) * block_size, row_width});
    StepLayout writes;  // the whole history, written as earlier steps would have
    writes.num_tokens = total;
    writes.cache_rows = Ints(*backend, {total}, all_rows);
    backend->WriteKv(OnBoth(*backend, {total, row_width}, rows), nullptr, writes, cache);

    StepLayout layout;
    layout.num_tokens = num_tokens;
    layout.num_sequences = num_seqs;
    layout.block_size = block_size;
    layout.max_blocks_per_sequence = max_blocks;
    layout.token_seq = Ints(*backend, {num_tokens}, token_seq);
    layout.token_pos = Ints(*backend, {num_tokens}, token_pos);
    layout.block_tables = Ints(*backend, {num_seqs, max_blocks}, tables);
    layout.seq_new_tokens = Ints(*backend, {num_seqs}, seq_new);
    layout.seq_token_begin = seq_begin;
    layout.seq_cached = seq_cached;
    RoutingPlan plan;
    plan.num_tokens = num_tokens;
    plan.top_k = top_k;
    plan.slot_tokens = Ints(*backend, {num_slots}, slot_tokens);
    plan.token_slots = Ints(*backend, {num_tokens, top_k}, token_slots);
    Tensor out = *backend->Allocate(DType::kF32, {num_slots, att_hidden});
    backend->StickBreakingAttention(OnBoth(*backend, {num_slots, att_hidden}, queries), plan, layout, cache,
                                    AttentionShape{param.heads, param.head_dim, param.identity}, out);
    results.push_back(Read(*backend, out));
  }
  ASSERT_TRUE(cuda_->status().ok()) << cuda_->status();
  ASSERT_TRUE((*bf16_backend)->status().ok()) << (*bf16_backend)->status();
  // The K/V values and queries are bf16-representable, so both cache types and the bf16
  // GEMM operands hold them exactly; the prompt path's weights keep fp32 accuracy as two halves.
  EXPECT_LT(MaxError(results[1], results[0]), 1e-4);
  EXPECT_LT(MaxError(results[2], results[0]), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttentionTest,
                         ::testing::Values(AttentionCase{{1}, 1, 64, true}, AttentionCase{{1, 7, 100, 513}, 4, 16, false},
                                           AttentionCase{{1500, 33}, 1, 1024, true},
                                           // runs of equal prompts share batched GEMMs and key gathers
                                           AttentionCase{{64, 64, 64, 64, 200}, 1, 128, true},
                                           AttentionCase{{90, 90, 90, 17}, 1, 64, false, 40},
                                           // 4096 prompt tokens x 2 slots x 2 heads: logits cut into query chunks
                                           AttentionCase{{4096, 1, 700}, 2, 32, false},
                                           AttentionCase{{700, 300, 17}, 1, 128, true, 200},  // prompt chunks after a history
                                           AttentionCase{{4096, 1000, 3, 130}, 1, 1024, true, 1},
                                           AttentionCase{{2000, 129}, 4, 64, false, 1},
                                           // decode batches wide enough for the warp-split kernel
                                           AttentionCase{RaggedLengths(40), 1, 1024, true, 1},
                                           AttentionCase{RaggedLengths(17), 2, 256, false, 1}),
                         [](const ::testing::TestParamInfo<AttentionCase>& info) {
                           const AttentionCase& c = info.param;
                           return absl::StrCat(c.lengths.size(), "seqs_max", *std::max_element(c.lengths.begin(), c.lengths.end()),
                                               "_", c.heads, "x", c.head_dim, c.identity ? "_identity" : "_kv",
                                               c.new_tokens == 0 ? "_prompt" : absl::StrCat("_new", c.new_tokens));
                         });

}  // namespace
}  // namespace mf
