#include "engine/text/tokenizer.h"

#include <algorithm>
#include <cstring>
#include <queue>

#include "absl/strings/str_cat.h"
#include "engine/text/pretokenizer.h"
#include "engine/text/utf8.h"

namespace mf {
namespace {

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// Pieces longer than this are encoded without the cache (they rarely repeat).
constexpr size_t kMaxCachedPiece = 64;

}  // namespace

absl::Status Tokenizer::AddToken(const std::string& bytes, int32_t id, bool special, const std::string& source) {
  if (id < 0 || id > kMaxTokenId) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": token id ", id, " is outside [0, ", kMaxTokenId, "]"));
  }
  if (static_cast<size_t>(id) >= token_bytes_.size()) {
    token_bytes_.resize(static_cast<size_t>(id) + 1);
    has_token_.resize(static_cast<size_t>(id) + 1, false);
    is_special_.resize(static_cast<size_t>(id) + 1, false);
  }
  if (has_token_[static_cast<size_t>(id)] && token_bytes_[static_cast<size_t>(id)] != bytes) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": token id ", id, " is assigned twice"));
  }
  token_bytes_[static_cast<size_t>(id)] = bytes;
  has_token_[static_cast<size_t>(id)] = true;
  is_special_[static_cast<size_t>(id)] = special;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromVocabAndMerges(
    const std::unordered_map<std::string, int32_t>& vocab, const std::vector<std::string>& merges,
    const std::vector<AddedToken>& added_tokens, const std::string& source) {
  std::unique_ptr<Tokenizer> tokenizer(new Tokenizer());
  std::fill(std::begin(tokenizer->byte_ids_), std::end(tokenizer->byte_ids_), -1);
  for (const auto& [token, id] : vocab) {
    bool ok = true;
    const std::string bytes = ByteLevelToBytes(token, &ok);
    if (!ok) return absl::InvalidArgumentError(absl::StrCat(source, ": vocab entry '", token, "' is not byte-level"));
    if (auto status = tokenizer->AddToken(bytes, id, false, source); !status.ok()) return status;
    tokenizer->bytes_to_id_[bytes] = id;
    if (bytes.size() == 1) tokenizer->byte_ids_[static_cast<uint8_t>(bytes[0])] = id;
  }
  for (int byte = 0; byte < 256; ++byte) {
    if (tokenizer->byte_ids_[byte] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": vocab has no token for byte ", byte));
    }
  }
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string& line = merges[rank];
    const size_t space = line.find(' ');
    auto left = vocab.find(line.substr(0, space));
    auto right = space == std::string::npos ? vocab.end() : vocab.find(line.substr(space + 1));
    auto merged = space == std::string::npos ? vocab.end() : vocab.find(line.substr(0, space) + line.substr(space + 1));
    if (left == vocab.end() || right == vocab.end() || merged == vocab.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": merge ", rank + 1, " '", line, "' names a token missing from the vocab"));
    }
    // The first listed merge of a pair wins, as in the reference implementations.
    tokenizer->merges_.emplace(PairKey(left->second, right->second),
                               Merge{static_cast<int32_t>(rank), merged->second});
  }
  for (const AddedToken& added : added_tokens) {
    if (added.content.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": empty added token"));
    if (auto status = tokenizer->AddToken(added.content, added.id, added.special, source); !status.ok()) return status;
    tokenizer->added_tokens_.push_back(added);
    tokenizer->added_first_byte_[static_cast<uint8_t>(added.content[0])] = true;
  }
  std::stable_sort(tokenizer->added_tokens_.begin(), tokenizer->added_tokens_.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  return tokenizer;
}

const AddedToken* Tokenizer::MatchAdded(std::string_view text, size_t pos, bool allow_special) const {
  if (!added_first_byte_[static_cast<uint8_t>(text[pos])]) return nullptr;
  for (const AddedToken& added : added_tokens_) {  // longest first: the first hit is the longest match
    if (added.special && !allow_special) continue;
    if (text.compare(pos, added.content.size(), added.content) == 0) return &added;
  }
  return nullptr;
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, const EncodeOptions& options) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3);
  PieceCache cache;  // per call: no locks, and repeated words in long texts hit it
  size_t segment_start = 0;
  for (size_t pos = 0; pos < text.size();) {
    const AddedToken* added = MatchAdded(text, pos, options.allow_special);
    if (added == nullptr) {
      ++pos;
      continue;
    }
    EncodeOrdinary(text.substr(segment_start, pos - segment_start), cache, &ids);
    ids.push_back(added->id);
    pos += added->content.size();
    segment_start = pos;
  }
  EncodeOrdinary(text.substr(segment_start), cache, &ids);
  return ids;
}

void Tokenizer::EncodeOrdinary(std::string_view text, PieceCache& cache, std::vector<int32_t>* ids) const {
  SplitGpt2(text, [&](std::string_view piece) {
    if (piece.size() > kMaxCachedPiece) {
      EncodePiece(piece, ids);
      return;
    }
    auto [it, inserted] = cache.try_emplace(piece);
    if (inserted) EncodePiece(piece, &it->second);
    ids->insert(ids->end(), it->second.begin(), it->second.end());
  });
}

// Byte-pair merging: repeatedly merge the adjacent pair of lowest rank (leftmost on
// ties). A heap with lazy invalidation keeps long pieces O(n log n).
void Tokenizer::EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.size() > 1) {
    auto whole = bytes_to_id_.find(std::string(piece));
    if (whole != bytes_to_id_.end()) {
      ids->push_back(whole->second);
      return;
    }
  }
  const int count = static_cast<int>(piece.size());
  std::vector<int32_t> symbol(static_cast<size_t>(count));
  std::vector<int> next(static_cast<size_t>(count)), prev(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) {
    symbol[static_cast<size_t>(i)] = byte_ids_[static_cast<uint8_t>(piece[static_cast<size_t>(i)])];
    next[static_cast<size_t>(i)] = i + 1 < count ? i + 1 : -1;
    prev[static_cast<size_t>(i)] = i - 1;
  }
  struct Candidate {
    int32_t rank, left, left_id, right_id;
    bool operator>(const Candidate& other) const {
      return rank != other.rank ? rank > other.rank : left > other.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push_pair = [&](int left) {
    if (left < 0 || next[static_cast<size_t>(left)] < 0) return;
    const int right = next[static_cast<size_t>(left)];
    auto merge = merges_.find(PairKey(symbol[static_cast<size_t>(left)], symbol[static_cast<size_t>(right)]));
    if (merge != merges_.end()) {
      heap.push({merge->second.rank, left, symbol[static_cast<size_t>(left)], symbol[static_cast<size_t>(right)]});
    }
  };
  for (int i = 0; i + 1 < count; ++i) push_pair(i);
  while (!heap.empty()) {
    const Candidate best = heap.top();
    heap.pop();
    const int right = next[static_cast<size_t>(best.left)];
    // Stale: one side was merged away or changed since this entry was pushed.
    if (right < 0 || symbol[static_cast<size_t>(best.left)] != best.left_id ||
        symbol[static_cast<size_t>(right)] != best.right_id || prev[static_cast<size_t>(right)] != best.left) {
      continue;
    }
    symbol[static_cast<size_t>(best.left)] = merges_.at(PairKey(best.left_id, best.right_id)).merged_id;
    symbol[static_cast<size_t>(right)] = -1;
    next[static_cast<size_t>(best.left)] = next[static_cast<size_t>(right)];
    if (next[static_cast<size_t>(right)] >= 0) prev[static_cast<size_t>(next[static_cast<size_t>(right)])] = best.left;
    push_pair(prev[static_cast<size_t>(best.left)]);
    push_pair(best.left);
  }
  for (int i = 0; i >= 0; i = next[static_cast<size_t>(i)]) ids->push_back(symbol[static_cast<size_t>(i)]);
}

absl::StatusOr<std::string> Tokenizer::DecodeBytes(absl::Span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (!IsValidId(id)) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is not in the vocabulary (size ",
                                                     vocab_size(), ")"));
    }
    if (skip_special && IsSpecial(id)) continue;
    bytes += TokenBytes(id);
  }
  return bytes;
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special) const {
  absl::StatusOr<std::string> bytes = DecodeBytes(ids, skip_special);
  if (!bytes.ok()) return bytes.status();
  return SanitizeUtf8(*bytes);
}

}  // namespace mf
