#include "engine/text/pretokenizer.h"

#include "engine/text/utf8.h"

namespace mf {
namespace {

// 's 't 'm 'd, then 're 've 'll: lowercase only, as in GPT-2's pattern.
size_t ContractionLength(std::string_view text, size_t pos) {
  if (pos + 1 >= text.size()) return 0;
  const char first = text[pos + 1];
  if (first == 's' || first == 't' || first == 'm' || first == 'd') return 2;
  if (pos + 2 >= text.size()) return 0;
  const char second = text[pos + 2];
  if ((first == 'r' && second == 'e') || (first == 'v' && second == 'e') || (first == 'l' && second == 'l')) return 3;
  return 0;
}

// End of the run of characters of class `run_class` starting at `pos`.
size_t RunEnd(std::string_view text, size_t pos, CharClass run_class) {
  while (pos < text.size()) {
    const DecodedChar next = DecodeAt(text, pos);
    if (next.char_class != run_class) break;
    pos += static_cast<size_t>(next.length);
  }
  return pos;
}

// \s+(?!\S) | \s+ : a whitespace run followed by more text leaves its last
// character to start the next piece (so " word" keeps its space), unless the run
// is a single character.
size_t WhitespaceLength(std::string_view text, size_t start) {
  size_t pos = start;
  size_t last_start = start;
  while (pos < text.size()) {
    const DecodedChar next = DecodeAt(text, pos);
    if (next.char_class != CharClass::kSpace) break;
    last_start = pos;
    pos += static_cast<size_t>(next.length);
  }
  if (pos == text.size() || last_start == start) return pos - start;
  return last_start - start;
}

}  // namespace

size_t Gpt2PieceLength(std::string_view text, size_t pos) {
  if (text[pos] == '\'') {
    if (const size_t length = ContractionLength(text, pos)) return length;
  }
  size_t body = pos;
  if (text[pos] == ' ' && pos + 1 < text.size()) {
    // " ?X+" takes one leading space when a letter, digit or symbol follows it.
    if (DecodeAt(text, pos + 1).char_class != CharClass::kSpace) body = pos + 1;
  }
  const DecodedChar first = DecodeAt(text, body);
  if (first.char_class == CharClass::kSpace) return WhitespaceLength(text, pos);
  return RunEnd(text, body + static_cast<size_t>(first.length), first.char_class) - pos;
}

}  // namespace mf
