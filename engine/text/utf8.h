// UTF-8 helpers: code point classes for GPT-2 pre-tokenization, and a streaming
// sanitizer that turns arbitrary bytes into valid UTF-8 exactly as a whole-text
// decode with replacement would (each maximal invalid subpart becomes U+FFFD).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace mf {

enum class CharClass : uint8_t { kLetter, kNumber, kSpace, kOther };

// Unicode general category L / N, the White_Space property, or neither.
CharClass ClassifyCodePoint(uint32_t code_point);

// Decodes the code point starting at text[pos]. Invalid or truncated sequences
// decode as one byte of class kOther (so every byte string can be tokenized).
struct DecodedChar {
  uint32_t code_point;
  int length;
  CharClass char_class;
};
DecodedChar DecodeAt(std::string_view text, size_t pos);

// Appends the UTF-8 encoding of `code_point` (at most U+10FFFF).
void AppendUtf8(uint32_t code_point, std::string* out);

class Utf8Sanitizer {
 public:
  // Appends to `out` every character completed by `bytes`; holds back an incomplete tail.
  void Feed(std::string_view bytes, std::string* out);
  // Ends the stream: a held incomplete sequence becomes U+FFFD.
  void Finish(std::string* out);
  bool has_pending() const { return pending_length_ > 0; }

 private:
  void FeedByte(uint8_t byte, std::string* out);

  uint8_t pending_[4] = {};
  int pending_length_ = 0;
  int needed_ = 0;  // total length of the sequence being assembled
};

// Valid UTF-8 with every maximal invalid subpart replaced by U+FFFD.
std::string SanitizeUtf8(std::string_view bytes);

}  // namespace mf
