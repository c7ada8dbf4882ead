// The whole model on the CUDA backend against the reference fixtures and the CPU
// backend: the same routing and greedy tokens, logits within 5e-2.
#include <gtest/gtest.h>

#include "engine/cuda_backend.h"
#include "engine/fixture.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/test_util.h"

namespace mf {
namespace {

class CudaModelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaModelTest, MatchesReferenceAndCpuBackend) {
  if (!testing::HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
  const std::string fixture = GetParam();
  auto cases = LoadReferenceCases(testing::ReferenceDir(fixture) + "/cases.json");
  ASSERT_TRUE(cases.ok()) << cases.status();
  auto weights = LoadWeights(testing::ReferenceDir(fixture));
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto backend = CudaBackend::Create(0);
  ASSERT_TRUE(backend.ok()) << backend.status();
  KvCacheOptions cache;
  cache.num_blocks = 256;
  auto cuda_model = Model::Create(*weights, *std::move(backend), cache);
  ASSERT_TRUE(cuda_model.ok()) << cuda_model.status();
  auto cpu_model = testing::LoadReferenceModel(fixture);

  std::vector<std::vector<int32_t>> prompts;
  for (const ReferenceCase& reference : *cases) prompts.push_back(reference.prompt);
  for (int chunk : {0, 7}) {
    const GenerateOptions options = VerificationOptions(*cases, chunk);
    auto on_cuda = GenerateGreedy(**cuda_model, prompts, options);
    ASSERT_TRUE(on_cuda.ok()) << on_cuda.status();
    auto on_cpu = GenerateGreedy(*cpu_model, prompts, options);
    ASSERT_TRUE(on_cpu.ok());
    for (size_t i = 0; i < cases->size(); ++i) {
      const CaseReport report = CompareWithReference((*cases)[i], (*on_cuda)[i], Tolerances{5e-2, 1e-2});
      EXPECT_TRUE(report.ok()) << fixture << " case " << i << ": " << report.first_mismatch;
      EXPECT_EQ((*on_cuda)[i].tokens, (*on_cpu)[i].tokens);
      for (size_t layer = 0; layer < (*on_cpu)[i].routing.size(); ++layer) {
        for (int mixture = 0; mixture < 2; ++mixture) {
          EXPECT_EQ((*on_cuda)[i].routing[layer][mixture].experts, (*on_cpu)[i].routing[layer][mixture].experts)
              << fixture << " case " << i << " layer " << layer << " mixture " << mixture;
        }
      }
      std::printf("%s case %zu (chunk %d): max |logit - reference| %.3g\n", fixture.c_str(), i, chunk,
                  report.max_logit_error);
    }
  }
  EXPECT_EQ((*cuda_model)->kv_cache().allocator().num_used_blocks(), 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaModelTest, ::testing::ValuesIn(testing::ReferenceModelNames()),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) c = isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return name;
                         });

}  // namespace
}  // namespace mf
