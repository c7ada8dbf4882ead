#include "engine/checkpoint/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "engine/checkpoint/weights.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace mf {
namespace {

using ::testing::HasSubstr;

TEST(ConfigTest, ReadsEveryReferenceConfig) {
  for (const std::string& name : testing::ReferenceModelNames()) {
    auto config = LoadModelConfig(testing::ReferenceDir(name) + "/config.json");
    ASSERT_TRUE(config.ok()) << name << ": " << config.status();
    EXPECT_GT(config->n_layer, 0);
  }
  auto tiny = LoadModelConfig(testing::ReferenceDir("molm-tiny") + "/config.json");
  ASSERT_TRUE(tiny.ok());
  EXPECT_EQ(tiny->n_embd, 64);
  EXPECT_EQ(tiny->k_mlp, 2);
  EXPECT_TRUE(tiny->kv_is_identity());
  EXPECT_EQ(tiny->kv_width(), 64);
  auto projected = LoadModelConfig(testing::ReferenceDir("projected-kv") + "/config.json");
  ASSERT_TRUE(projected.ok());
  EXPECT_FALSE(projected->kv_is_identity());
  EXPECT_EQ(projected->kv_width(), 128);
  EXPECT_EQ(projected->head_dim(), 16);
}

TEST(ConfigTest, ShippedMolmConfigsHaveThePublishedShapes) {
  struct Expected { const char* file; int64_t layers, k; };
  for (const Expected& expected : {Expected{"molm-350m-4b.json", 24, 2}, Expected{"molm-700m-4b.json", 24, 4},
                                   Expected{"molm-700m-8b.json", 48, 2}}) {
    auto config = LoadModelConfig(std::string(MF_SOURCE_DIR) + "/configs/" + expected.file);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->n_layer, expected.layers);
    EXPECT_EQ(config->k_att, expected.k);
    EXPECT_EQ(config->k_mlp, expected.k);
    EXPECT_EQ(config->n_att_experts, 16);
    EXPECT_EQ(config->n_mlp_experts, 32);
    EXPECT_EQ(config->vocab_size, 50295);
    EXPECT_TRUE(config->kv_is_identity());
  }
}

TEST(ConfigTest, MalformedJsonNamesTheFile) {
  auto config = ParseModelConfig("{\"n_embd\": 64,", "dir/config.json");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("dir/config.json: malformed JSON"));
}

std::string TinyConfigWith(const std::string& field, const std::string& value) {
  std::string text = testing::ReadFile(testing::ReferenceDir("molm-tiny") + "/config.json");
  const size_t key = text.find("\"" + field + "\"");
  EXPECT_NE(key, std::string::npos) << field;
  const size_t colon = text.find(':', key);
  const size_t end = text.find_first_of(",\n}", colon);
  return text.substr(0, colon + 1) + " " + value + text.substr(end);
}

TEST(ConfigTest, RejectsUnsupportedGateType) {
  auto config = ParseModelConfig(TinyConfigWith("gate_type", "\"gmm\""), "config.json");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr("'gate_type' 'gmm' is not supported"));
}

TEST(ConfigTest, RejectsBadFieldsByName) {
  EXPECT_THAT(ParseModelConfig(TinyConfigWith("model_type", "\"gpt2\""), "c").status().message(),
              HasSubstr("'model_type'"));
  EXPECT_THAT(ParseModelConfig(TinyConfigWith("n_embd", "\"64\""), "c").status().message(),
              HasSubstr("'n_embd' must be an integer"));
  EXPECT_THAT(ParseModelConfig(TinyConfigWith("k_att", "9"), "c").status().message(),
              HasSubstr("'k_att' must not exceed n_att_experts"));
  EXPECT_THAT(ParseModelConfig(TinyConfigWith("n_head", "3"), "c").status().message(),
              HasSubstr("'att_hidden' must be divisible by n_head"));
  EXPECT_THAT(ParseModelConfig(TinyConfigWith("activation_function", "\"relu\""), "c").status().message(),
              HasSubstr("'activation_function'"));
  EXPECT_THAT(ParseModelConfig("{}", "c").status().message(), HasSubstr("'vocab_size' is missing"));
}

TEST(ConfigTest, SizesBeyondTheSupportedRangeAreNamed) {
  const std::string base = testing::ReadFile(testing::ReferenceDir("molm-tiny") + "/config.json");
  for (const char* field : {"vocab_size", "n_embd", "n_layer", "ffd_hidden"}) {
    nlohmann::json doc = nlohmann::json::parse(base);
    doc[field] = 2147483648LL;
    EXPECT_THAT(ParseModelConfig(doc.dump(), "c.json").status().message(),
                HasSubstr(absl::StrCat("c.json: field '", field, "' 2147483648 exceeds 2^31 - 1")));
  }
  // Every dimension in range, the product not: 2^31 experts of 2^31 x 2^31 in 2^31 layers.
  nlohmann::json doc = nlohmann::json::parse(base);
  for (const char* field : {"n_embd", "n_layer", "ffd_hidden", "n_mlp_experts"}) doc[field] = 2147483647LL;
  EXPECT_THAT(ParseModelConfig(doc.dump(), "c.json").status().message(),
              HasSubstr("c.json: the model's parameter count exceeds 2^63"));
}

// The count sizes memory before loading, so it must be exactly what the checkpoint holds.
TEST(ConfigTest, ParameterCountEqualsTheCheckpointsWeights) {
  for (const char* name : {"molm-tiny", "projected-kv"}) {  // "pruned" differs from its config by design
    auto config = LoadModelConfig(testing::ReferenceDir(name) + "/config.json");
    auto weights = LoadWeights(testing::ReferenceDir(name));
    ASSERT_TRUE(config.ok() && weights.ok()) << name;
    auto parameters = ParameterCount(*config);
    ASSERT_TRUE(parameters.ok()) << parameters.status();
    EXPECT_EQ(*parameters * 2, static_cast<int64_t>(TotalWeightBytes(*weights))) << name;  // bf16 fixtures
  }
  auto molm = LoadModelConfig(std::string(MF_SOURCE_DIR) + "/configs/molm-350m-4b.json");
  ASSERT_TRUE(molm.ok());
  EXPECT_NEAR(static_cast<double>(*ParameterCount(*molm)), 4.0e9, 0.5e9);  // the "4B" of its name
}

}  // namespace
}  // namespace mf
