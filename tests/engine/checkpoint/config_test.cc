#include "engine/checkpoint/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace mf
