// GPT-2 byte-level BPE with added tokens, as MoLM checkpoints use it.
// Thread-safe after loading: Encode/Decode keep no shared mutable state.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace mf {

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
};

struct EncodeOptions {
  // Special tokens written in user text are plain text unless the caller allows
  // them (a prompt must not be able to forge an end-of-text marker).
  bool allow_special = false;
};

class Tokenizer {
 public:
  // `dir/tokenizer.json` if present, else `vocab.json` + `merges.txt`
  // (+ `added_tokens.json`, `special_tokens_map.json`).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& dir);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromTokenizerJson(std::string_view json_text,
                                                                      const std::string& source);
  // `vocab` maps byte-level token strings to ids; `merges` holds "left right" lines.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromVocabAndMerges(
      const std::unordered_map<std::string, int32_t>& vocab, const std::vector<std::string>& merges,
      const std::vector<AddedToken>& added_tokens, const std::string& source);

  std::vector<int32_t> Encode(std::string_view text, const EncodeOptions& options = {}) const;
  // Raw bytes of the ids (may end inside a multi-byte character).
  absl::StatusOr<std::string> DecodeBytes(absl::Span<const int32_t> ids, bool skip_special = false) const;
  // Text of the ids: invalid UTF-8 replaced by U+FFFD, as a streaming decode would.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids, bool skip_special = false) const;

  // Ids above this are refused at load: a vocabulary is stored densely up to its largest
  // id, and no real tokenizer comes near 16.7 million tokens.
  static constexpr int32_t kMaxTokenId = (1 << 24) - 1;

  int32_t vocab_size() const { return static_cast<int32_t>(token_bytes_.size()); }
  bool IsValidId(int32_t id) const { return id >= 0 && id < vocab_size() && has_token_[static_cast<size_t>(id)]; }
  bool IsSpecial(int32_t id) const { return IsValidId(id) && is_special_[static_cast<size_t>(id)]; }
  const std::string& TokenBytes(int32_t id) const { return token_bytes_[static_cast<size_t>(id)]; }
  const std::vector<AddedToken>& added_tokens() const { return added_tokens_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };
  using PieceCache = std::unordered_map<std::string_view, std::vector<int32_t>>;

  Tokenizer() = default;
  absl::Status AddToken(const std::string& bytes, int32_t id, bool special, const std::string& source);
  void EncodeOrdinary(std::string_view text, PieceCache& cache, std::vector<int32_t>* ids) const;
  void EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const;
  // The added token matching longest at text[pos], or nullptr.
  const AddedToken* MatchAdded(std::string_view text, size_t pos, bool allow_special) const;

  std::vector<std::string> token_bytes_;  // by id
  std::vector<bool> has_token_;
  std::vector<bool> is_special_;
  std::unordered_map<std::string, int32_t> bytes_to_id_;  // ordinary BPE tokens
  int32_t byte_ids_[256] = {};
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> rank, result
  std::vector<AddedToken> added_tokens_;        // longest first
  bool added_first_byte_[256] = {};
};

// GPT-2's printable stand-ins for bytes in vocab files ("Ġ" is the space byte).
std::string ByteLevelToBytes(std::string_view token, bool* ok);

}  // namespace mf
