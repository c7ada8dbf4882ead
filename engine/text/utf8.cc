#include "engine/text/utf8.h"

#include <algorithm>
#include <array>

namespace mf {
namespace {

struct CodePointRange {
  uint32_t first;
  uint32_t last;
};

#include "engine/text/unicode_categories.inc"

constexpr char kReplacement[] = "\xEF\xBF\xBD";

template <size_t N>
bool InRanges(const CodePointRange (&ranges)[N], uint32_t code_point) {
  const auto* it = std::upper_bound(std::begin(ranges), std::end(ranges), code_point,
                                    [](uint32_t value, const CodePointRange& range) { return value < range.first; });
  return it != std::begin(ranges) && code_point <= (it - 1)->last;
}

bool IsWhiteSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

std::array<CharClass, 128> BuildAsciiClasses() {
  std::array<CharClass, 128> classes{};
  for (uint32_t c = 0; c < 128; ++c) {
    classes[c] = IsWhiteSpace(c)                                   ? CharClass::kSpace
                 : ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')       ? CharClass::kLetter
                 : (c >= '0' && c <= '9')                         ? CharClass::kNumber
                                                                  : CharClass::kOther;
  }
  return classes;
}

const std::array<CharClass, 128> kAsciiClasses = BuildAsciiClasses();

// Valid range of the second byte for a lead byte (Unicode Table 3-7).
bool ValidSecondByte(uint8_t lead, uint8_t byte) {
  switch (lead) {
    case 0xE0: return byte >= 0xA0 && byte <= 0xBF;
    case 0xED: return byte >= 0x80 && byte <= 0x9F;
    case 0xF0: return byte >= 0x90 && byte <= 0xBF;
    case 0xF4: return byte >= 0x80 && byte <= 0x8F;
    default: return byte >= 0x80 && byte <= 0xBF;
  }
}

int SequenceLength(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;  // never valid as a lead byte
}

}  // namespace

CharClass ClassifyCodePoint(uint32_t code_point) {
  if (code_point < 128) return kAsciiClasses[code_point];
  if (IsWhiteSpace(code_point)) return CharClass::kSpace;
  if (InRanges(kLetterRanges, code_point)) return CharClass::kLetter;
  if (InRanges(kNumberRanges, code_point)) return CharClass::kNumber;
  return CharClass::kOther;
}

DecodedChar DecodeAt(std::string_view text, size_t pos) {
  const auto lead = static_cast<uint8_t>(text[pos]);
  if (lead < 0x80) return {lead, 1, kAsciiClasses[lead]};
  const int length = SequenceLength(lead);
  if (length == 0 || pos + static_cast<size_t>(length) > text.size()) return {lead, 1, CharClass::kOther};
  if (!ValidSecondByte(lead, static_cast<uint8_t>(text[pos + 1]))) return {lead, 1, CharClass::kOther};
  uint32_t code_point = lead & (0xFF >> (length + 1));
  for (int i = 1; i < length; ++i) {
    const auto byte = static_cast<uint8_t>(text[pos + static_cast<size_t>(i)]);
    if ((byte & 0xC0) != 0x80) return {lead, 1, CharClass::kOther};
    code_point = (code_point << 6) | (byte & 0x3F);
  }
  return {code_point, length, ClassifyCodePoint(code_point)};
}

void Utf8Sanitizer::FeedByte(uint8_t byte, std::string* out) {
  if (pending_length_ > 0) {
    const bool valid = pending_length_ == 1 ? ValidSecondByte(pending_[0], byte) : (byte & 0xC0) == 0x80;
    if (valid) {
      pending_[pending_length_++] = byte;
      if (pending_length_ == needed_) {
        out->append(reinterpret_cast<const char*>(pending_), static_cast<size_t>(needed_));
        pending_length_ = 0;
      }
      return;
    }
    out->append(kReplacement);  // the maximal invalid subpart so far; `byte` starts afresh
    pending_length_ = 0;
  }
  const int length = SequenceLength(byte);
  if (length == 1) {
    out->push_back(static_cast<char>(byte));
  } else if (length == 0) {
    out->append(kReplacement);
  } else {
    pending_[0] = byte;
    pending_length_ = 1;
    needed_ = length;
  }
}

void Utf8Sanitizer::Feed(std::string_view bytes, std::string* out) {
  for (char c : bytes) FeedByte(static_cast<uint8_t>(c), out);
}

void Utf8Sanitizer::Finish(std::string* out) {
  if (pending_length_ > 0) out->append(kReplacement);
  pending_length_ = 0;
}

std::string SanitizeUtf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  Utf8Sanitizer sanitizer;
  sanitizer.Feed(bytes, &out);
  sanitizer.Finish(&out);
  return out;
}

void AppendUtf8(uint32_t code_point, std::string* out) {
  if (code_point < 0x80) {
    *out += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    *out += static_cast<char>(0xC0 | (code_point >> 6));
    *out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else if (code_point < 0x10000) {
    *out += static_cast<char>(0xE0 | (code_point >> 12));
    *out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else {
    *out += static_cast<char>(0xF0 | (code_point >> 18));
    *out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3F));
    *out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (code_point & 0x3F));
  }
}

}  // namespace mf
