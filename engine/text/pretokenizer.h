// GPT-2's pre-tokenization, hand-written for speed. It splits text exactly as the pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// does under leftmost-first alternation. Invalid UTF-8 bytes count as [^\s\p{L}\p{N}].
#pragma once

#include <string_view>

namespace mf {

// Length in bytes of the piece starting at text[pos] (pos < text.size()).
size_t Gpt2PieceLength(std::string_view text, size_t pos);

// Calls `emit(piece)` for each piece of `text`, in order.
template <typename Emit>
void SplitGpt2(std::string_view text, Emit&& emit) {
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t length = Gpt2PieceLength(text, pos);
    emit(text.substr(pos, length));
    pos += length;
  }
}

}  // namespace mf
