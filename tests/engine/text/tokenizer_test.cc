#include "absl/strings/str_cat.h"
#include "engine/text/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "engine/text/pretokenizer.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace mf {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using nlohmann::json;

std::string Gpt2Dir() { return testing::FixturesDir() + "/tokenizer/gpt2"; }

const Tokenizer& Gpt2() { return testing::Gpt2Tokenizer(); }

// A tokenizer.json with GPT-2's vocab and merges plus CodeGen-style added tokens.
std::string BuildTokenizerJson() {
  json vocab = json::parse(testing::ReadFile(Gpt2Dir() + "/vocab.json"));
  json merges = json::array();
  std::istringstream lines(testing::ReadFile(Gpt2Dir() + "/merges.txt"));
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line.rfind("#version", 0) != 0) merges.push_back(line);
  }
  json added = json::array({
      {{"id", 50256}, {"content", "<|endoftext|>"}, {"special", true}},
      {{"id", 50257}, {"content", "  "}, {"special", false}},
      {{"id", 50258}, {"content", "   "}, {"special", false}},
      {{"id", 50259}, {"content", "\t\t"}, {"special", false}},
  });
  return json{{"version", "1.0"},
              {"added_tokens", added},
              {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
              {"decoder", {{"type", "ByteLevel"}}},
              {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}}
      .dump();
}

std::vector<std::pair<std::string, std::vector<int32_t>>> FixtureCases() {
  json cases = json::parse(testing::ReadFile(Gpt2Dir() + "/cases.json"));
  std::vector<std::pair<std::string, std::vector<int32_t>>> result;
  for (const json& entry : cases.at("cases")) {
    result.emplace_back(entry.at("text").get<std::string>(), entry.at("ids").get<std::vector<int32_t>>());
  }
  return result;
}

TEST(TokenizerTest, EncodesEveryFixtureCaseExactlyAndDecodesBack) {
  const auto cases = FixtureCases();
  ASSERT_GE(cases.size(), 30u);
  for (const auto& [text, ids] : cases) {
    EXPECT_EQ(Gpt2().Encode(text), ids) << text;
    auto decoded = Gpt2().Decode(ids);
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(*decoded, text);
  }
}

TEST(TokenizerTest, TokenizerJsonGivesTheSameIdsAndAddedTokensWin) {
  auto tokenizer = Tokenizer::FromTokenizerJson(BuildTokenizerJson(), "tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  for (const auto& [text, ids] : FixtureCases()) {
    if (text.find("  ") != std::string::npos || text.find("\t\t") != std::string::npos) continue;
    EXPECT_EQ((*tokenizer)->Encode(text), ids) << text;
  }
  // "  " and "   " are added tokens: the longest match wins over BPE's split.
  EXPECT_THAT((*tokenizer)->Encode("Hello  world"), ElementsAre(15496, 50257, 6894));
  EXPECT_THAT((*tokenizer)->Encode("a     b"), ElementsAre(64, 50258, 50257, 65));
  EXPECT_THAT((*tokenizer)->Encode("\t\t\tx"), ElementsAre(50259, 197, 87));
}

TEST(TokenizerTest, SpecialTokensInUserTextArePlainUnlessAllowed) {
  auto tokenizer = Tokenizer::FromTokenizerJson(BuildTokenizerJson(), "tokenizer.json");
  ASSERT_TRUE(tokenizer.ok());
  const std::string text = "Hi<|endoftext|>there";
  const std::vector<int32_t> plain = (*tokenizer)->Encode(text);
  EXPECT_THAT(plain, ::testing::Not(::testing::Contains(50256)));
  EXPECT_EQ(*(*tokenizer)->Decode(plain), text);
  const std::vector<int32_t> allowed = (*tokenizer)->Encode(text, {.allow_special = true});
  EXPECT_THAT(allowed, ::testing::Contains(50256));
  EXPECT_EQ(*(*tokenizer)->Decode(allowed, /*skip_special=*/true), "Hithere");
  EXPECT_TRUE((*tokenizer)->IsSpecial(50256));
  EXPECT_FALSE((*tokenizer)->IsSpecial(50257));
}

TEST(TokenizerTest, LoadsVocabMergesWithAddedTokenFiles) {
  testing::ScratchDir dir;
  std::filesystem::copy_file(Gpt2Dir() + "/vocab.json", dir.File("vocab.json"));
  std::filesystem::copy_file(Gpt2Dir() + "/merges.txt", dir.File("merges.txt"));
  testing::WriteFile(dir.File("added_tokens.json"), R"({"  ": 50257, "<|pad|>": 50258})");
  testing::WriteFile(dir.File("special_tokens_map.json"), R"({"pad_token": {"content": "<|pad|>"}})");
  auto tokenizer = Tokenizer::Load(dir.path());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->vocab_size(), 50259);
  EXPECT_TRUE((*tokenizer)->IsSpecial(50258));
  EXPECT_THAT((*tokenizer)->Encode("a  b"), ElementsAre(64, 50257, 65));
}

TEST(TokenizerTest, RejectsOutOfRangeIds) {
  auto decoded = Gpt2().Decode({15496, 50257});
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(decoded.status().message(), HasSubstr("token id 50257 is not in the vocabulary"));
  EXPECT_FALSE(Gpt2().Decode({-1}).ok());
}

TEST(TokenizerTest, MalformedFilesAreClearErrors) {
  EXPECT_THAT(Tokenizer::FromTokenizerJson("{", "t.json").status().message(), HasSubstr("t.json: malformed JSON"));
  EXPECT_THAT(Tokenizer::FromTokenizerJson("{}", "t.json").status().message(), HasSubstr("missing 'model'"));
  EXPECT_THAT(Tokenizer::FromTokenizerJson(R"({"model": {"type": "WordPiece"}})", "t.json").status().message(),
              HasSubstr("model type 'WordPiece' is not supported"));
  json doc = json::parse(BuildTokenizerJson());
  doc["model"]["merges"].push_back("Ġhello Ġnot_a_token");
  EXPECT_THAT(Tokenizer::FromTokenizerJson(doc.dump(), "t.json").status().message(),
              HasSubstr("names a token missing from the vocab"));
  doc = json::parse(BuildTokenizerJson());
  doc["model"]["vocab"].erase("a");
  EXPECT_THAT(Tokenizer::FromTokenizerJson(doc.dump(), "t.json").status().message(),
              HasSubstr("vocab has no token for byte 97"));
  doc = json::parse(BuildTokenizerJson());
  doc["pre_tokenizer"] = {{"type", "Whitespace"}};
  EXPECT_THAT(Tokenizer::FromTokenizerJson(doc.dump(), "t.json").status().message(),
              HasSubstr("pre_tokenizer type 'Whitespace' is not supported"));
  doc = json::parse(BuildTokenizerJson());
  doc["added_tokens"].push_back({{"id", 50257}, {"content", "clash"}});
  EXPECT_THAT(Tokenizer::FromTokenizerJson(doc.dump(), "t.json").status().message(),
              HasSubstr("token id 50257 is assigned twice"));
  EXPECT_THAT(Tokenizer::Load("/nonexistent").status().message(), HasSubstr("no tokenizer.json"));
}

// Ids are read at full width: 2^31 once came back as a negative id, 2^32 + 5 as id 5.
TEST(TokenizerTest, IdsOutsideTheSupportedRangeAreReportedWithTheirTrueValue) {
  for (const char* id : {"2147483648", "1099511627776", "4294967301", "-3", "16777216"}) {
    json doc = json::parse(BuildTokenizerJson());
    doc["model"]["vocab"]["zzz"] = json::parse(id);
    EXPECT_THAT(Tokenizer::FromTokenizerJson(doc.dump(), "t.json").status().message(),
                HasSubstr(absl::StrCat("vocab entry 'zzz' has id ", id, ", outside [0, 16777215]")));
    doc = json::parse(BuildTokenizerJson());
    doc["added_tokens"].push_back({{"id", json::parse(id)}, {"content", "<x>"}});
    EXPECT_THAT(Tokenizer::FromTokenizerJson(doc.dump(), "t.json").status().message(),
                HasSubstr(absl::StrCat("added token '<x>' has id ", id, ", outside [0, 16777215]")));
  }
  json doc = json::parse(BuildTokenizerJson());
  doc["added_tokens"].push_back({{"id", Tokenizer::kMaxTokenId}, {"content", "<last>"}});
  auto largest = Tokenizer::FromTokenizerJson(doc.dump(), "t.json");
  ASSERT_TRUE(largest.ok()) << largest.status();
  EXPECT_EQ((*largest)->vocab_size(), Tokenizer::kMaxTokenId + 1);
}

std::vector<std::string> Pieces(std::string_view text) {
  std::vector<std::string> pieces;
  SplitGpt2(text, [&](std::string_view piece) { pieces.emplace_back(piece); });
  return pieces;
}

TEST(PretokenizerTest, FollowsGpt2Pattern) {
  EXPECT_THAT(Pieces("Hello  world"), ElementsAre("Hello", " ", " world"));
  EXPECT_THAT(Pieces("it's they'll"), ElementsAre("it", "'s", " they", "'ll"));
  EXPECT_THAT(Pieces("x   "), ElementsAre("x", "   "));
  EXPECT_THAT(Pieces(" 123abc"), ElementsAre(" 123", "abc"));
  EXPECT_THAT(Pieces("  !!"), ElementsAre(" ", " !!"));
  EXPECT_THAT(Pieces("a\n\nb"), ElementsAre("a", "\n", "\n", "b"));
  EXPECT_THAT(Pieces("caf\xC3\xA9 \xE2\x82\xAC" "5"), ElementsAre("caf\xC3\xA9", " \xE2\x82\xAC", "5"));
  EXPECT_THAT(Pieces("a\xFF\xFE b"), ElementsAre("a", "\xFF\xFE", " b"));
}

}  // namespace
}  // namespace mf
