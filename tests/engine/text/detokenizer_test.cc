#include "engine/text/detokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "tests/test_util.h"

namespace mf {
namespace {

const Tokenizer& Gpt2() { return testing::Gpt2Tokenizer(); }

TEST(Utf8Test, ReplacesEachMaximalInvalidSubpart) {
  EXPECT_EQ(SanitizeUtf8("ok \xC3\xA9"), "ok \xC3\xA9");
  EXPECT_EQ(SanitizeUtf8("\xF0\x9F\x98" "A"), "\xEF\xBF\xBD" "A");                    // truncated emoji: one U+FFFD
  EXPECT_EQ(SanitizeUtf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");    // surrogate: three
  EXPECT_EQ(SanitizeUtf8("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");                    // overlong
  EXPECT_EQ(SanitizeUtf8("\xE2\x82"), "\xEF\xBF\xBD");                                // truncated at the end
  EXPECT_EQ(SanitizeUtf8("\xFF" "a\x80"), "\xEF\xBF\xBD" "a\xEF\xBF\xBD");
}

TEST(Utf8Test, ClassifiesLettersNumbersAndSpaces) {
  EXPECT_EQ(ClassifyCodePoint('a'), CharClass::kLetter);
  EXPECT_EQ(ClassifyCodePoint(0x4E2D), CharClass::kLetter);  // 中
  EXPECT_EQ(ClassifyCodePoint(0x0661), CharClass::kNumber);  // Arabic-Indic one
  EXPECT_EQ(ClassifyCodePoint(0x00BD), CharClass::kNumber);  // ½ (No)
  EXPECT_EQ(ClassifyCodePoint(0x3000), CharClass::kSpace);
  EXPECT_EQ(ClassifyCodePoint(0x200B), CharClass::kOther);   // zero width space is not White_Space
  EXPECT_EQ(ClassifyCodePoint(0x1F600), CharClass::kOther);  // emoji
  EXPECT_EQ(ClassifyCodePoint(0x0301), CharClass::kOther);   // combining accent (Mn)
}

std::string RandomText(std::mt19937& rng) {
  static const std::vector<std::string> kPieces = {
      "a", "Z", "the", " quick", "brown", "'s", "'ll", "'", "0", "42", " 7", ".", ",!?", " ", "  ", "   ", "\n", "\n\n",
      "\t", "\r\n", "\xC3\xA9", "\xE4\xB8\xAD\xE6\x96\x87", "\xF0\x9F\x98\x80", "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD",
      "\xE2\x80\x8D", "\xCC\x81", "\xE3\x80\x80", "\x80", "\xFF", "\xC3", "\xF0\x9F\x98", "\xED\xA0\x80", "\xC0\xAF",
      "<|endoftext|>", "\xEF\xBF\xBD"};
  std::uniform_int_distribution<size_t> pick(0, kPieces.size() - 1);
  std::uniform_int_distribution<int> length(0, 40);
  std::string text;
  for (int i = length(rng); i > 0; --i) text += kPieces[pick(rng)];
  return text;
}

TEST(DetokenizerTest, RandomTextsRoundTripAndStreamLikeAFullDecode) {
  std::mt19937 rng(2024);
  for (int iteration = 0; iteration < 3000; ++iteration) {
    const std::string text = RandomText(rng);
    const std::vector<int32_t> ids = Gpt2().Encode(text);
    ASSERT_EQ(*Gpt2().DecodeBytes(ids), text) << "bytes do not round-trip";
    const std::string full = *Gpt2().Decode(ids);
    ASSERT_EQ(full, SanitizeUtf8(text));
    IncrementalDecoder decoder(Gpt2(), /*skip_special=*/false);
    std::string streamed;
    for (int32_t id : ids) {
      const std::string piece = *decoder.Push(id);
      ASSERT_EQ(SanitizeUtf8(piece), piece) << "a streamed piece is not valid UTF-8";
      streamed += piece;
    }
    streamed += decoder.Finish();
    ASSERT_EQ(streamed, full);
  }
}

TEST(DetokenizerTest, HoldsBackACharacterSplitAcrossTokens) {
  const std::vector<int32_t> ids = Gpt2().Encode("\xF0\x9F\x98\x80");  // one emoji, several byte tokens
  ASSERT_GT(ids.size(), 1u);
  IncrementalDecoder decoder(Gpt2(), false);
  for (size_t i = 0; i + 1 < ids.size(); ++i) EXPECT_EQ(*decoder.Push(ids[i]), "");
  EXPECT_EQ(*decoder.Push(ids.back()), "\xF0\x9F\x98\x80");
  EXPECT_EQ(decoder.Finish(), "");
  EXPECT_FALSE(decoder.Push(99999).ok());
}

TEST(StopMatcherTest, MatchesAcrossPushesAndReleasesTextBeforeTheStop) {
  StopMatcher matcher({"\n\n", "END"});
  StopMatcher::Result first = matcher.Push("Hello\n");
  EXPECT_EQ(first.text, "Hello");
  EXPECT_FALSE(first.stopped);
  StopMatcher::Result second = matcher.Push("\nWorld");
  EXPECT_TRUE(second.stopped);
  EXPECT_EQ(second.stop_index, 0);
  EXPECT_EQ(second.text, "");
  EXPECT_TRUE(matcher.Push("more").text.empty());
}

TEST(StopMatcherTest, ReleasesHeldTextThatTurnsOutNotToStop) {
  StopMatcher matcher({"END"});
  EXPECT_EQ(matcher.Push("abcEN").text, "abc");
  EXPECT_EQ(matcher.Push("Q").text, "ENQ");
  EXPECT_EQ(matcher.Push("xE").text, "x");
  EXPECT_EQ(matcher.Finish(), "E");
}

TEST(StopMatcherTest, EarliestStopWins) {
  StopMatcher matcher({"world", "lo w"});
  StopMatcher::Result result = matcher.Push("hello world");
  EXPECT_TRUE(result.stopped);
  EXPECT_EQ(result.stop_index, 1);
  EXPECT_EQ(result.text, "hel");
  StopMatcher none({});
  EXPECT_EQ(none.Push("anything").text, "anything");
}

}  // namespace
}  // namespace mf
