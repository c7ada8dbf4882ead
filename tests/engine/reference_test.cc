// The engine against the original implementation's outputs, for every reference
// fixture: alone, all prompts in one ragged batch, and prefilled in chunks of 7.
#include <gtest/gtest.h>

#include "tests/test_util.h"
#include "tools/moduleformer/reference_cases.h"

namespace mf {
namespace {

struct Mode {
  const char* name;
  bool batched;
  int prefill_chunk;
};

void PrintTo(const Mode& mode, std::ostream* os) { *os << mode.name; }

class ReferenceTest : public ::testing::TestWithParam<std::tuple<std::string, Mode>> {};

TEST_P(ReferenceTest, LogitsRoutingAndGreedyMatch) {
  const auto& [fixture, mode] = GetParam();
  auto cases = LoadReferenceCases(testing::ReferenceDir(fixture) + "/cases.json");
  ASSERT_TRUE(cases.ok()) << cases.status();
  ASSERT_FALSE(cases->empty());
  auto model = testing::LoadReferenceModel(fixture);
  ASSERT_NE(model, nullptr);
  const GenerateOptions options = VerificationOptions(*cases, mode.prefill_chunk);

  std::vector<GenerationResult> results;
  if (mode.batched) {
    std::vector<std::vector<int32_t>> prompts;
    for (const ReferenceCase& reference : *cases) prompts.push_back(reference.prompt);
    auto batch = GenerateGreedy(*model, prompts, options);
    ASSERT_TRUE(batch.ok()) << batch.status();
    results = *std::move(batch);
  } else {
    for (const ReferenceCase& reference : *cases) {
      auto single = GenerateGreedy(*model, {reference.prompt}, options);
      ASSERT_TRUE(single.ok()) << single.status();
      results.push_back(std::move(single->front()));
    }
  }
  for (size_t i = 0; i < cases->size(); ++i) {
    const CaseReport report = CompareWithReference((*cases)[i], results[i], Tolerances{});
    EXPECT_TRUE(report.ok()) << fixture << " case " << i << ": " << report.first_mismatch;
    EXPECT_TRUE(report.routing_matches);
    EXPECT_TRUE(report.greedy_matches);
    EXPECT_LE(report.max_logit_error, 1e-4);
  }
  // Every block went back to the pool.
  EXPECT_EQ(model->kv_cache().allocator().num_used_blocks(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, ReferenceTest,
    ::testing::Combine(::testing::ValuesIn(testing::ReferenceModelNames()),
                       ::testing::Values(Mode{"alone", false, 0}, Mode{"batched", true, 0},
                                         Mode{"batched_chunk7", true, 7})),
    [](const auto& info) {
      std::string name = std::get<0>(info.param) + "_" + std::get<1>(info.param).name;
      for (char& c : name) {
        if (!isalnum(static_cast<unsigned char>(c))) c = '_';
      }
      return name;
    });

}  // namespace
}  // namespace mf
