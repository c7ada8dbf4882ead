// Reading tokenizer files: Hugging Face `tokenizer.json`, or the older
// `vocab.json` + `merges.txt` (+ `added_tokens.json`, `special_tokens_map.json`).
#include <array>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "engine/base/file.h"
#include "engine/text/tokenizer.h"
#include "nlohmann/json.hpp"

namespace mf {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// GPT-2's byte <-> printable code point table: printable Latin-1 bytes stand for
// themselves, the rest map to 256, 257, ... in byte order.
std::array<int, 512> BuildCodePointToByte() {
  std::array<int, 512> table;
  table.fill(-1);
  int next_extra = 256;
  for (int byte = 0; byte < 256; ++byte) {
    const bool printable = (byte >= 33 && byte <= 126) || (byte >= 161 && byte <= 172) || (byte >= 174);
    table[static_cast<size_t>(printable ? byte : next_extra++)] = byte;
  }
  return table;
}

absl::StatusOr<json> ParseJson(std::string_view text, const std::string& source) {
  json doc = json::parse(text.begin(), text.end(), nullptr, false);
  if (doc.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(source, ": malformed JSON"));
  return doc;
}

// A token id read at its full width (a narrowing read would turn 2^31 into a negative
// id and 2^32 into 0), then checked against the range a vocabulary can use.
absl::StatusOr<int32_t> ReadTokenId(const json& id, const std::string& source, const std::string& entry) {
  if (!id.is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", entry, " has no integer id"));
  }
  const bool in_range = id.is_number_unsigned() ? id.get<uint64_t>() <= static_cast<uint64_t>(Tokenizer::kMaxTokenId)
                                                : id.get<int64_t>() >= 0 && id.get<int64_t>() <= Tokenizer::kMaxTokenId;
  if (!in_range) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", entry, " has id ", id.dump(), ", outside [0, ",
                                                   Tokenizer::kMaxTokenId, "]"));
  }
  return static_cast<int32_t>(id.get<int64_t>());
}

absl::StatusOr<std::unordered_map<std::string, int32_t>> ParseVocab(const json& vocab, const std::string& source) {
  if (!vocab.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": vocab must be an object"));
  std::unordered_map<std::string, int32_t> result;
  for (const auto& [token, id] : vocab.items()) {
    absl::StatusOr<int32_t> checked = ReadTokenId(id, source, absl::StrCat("vocab entry '", token, "'"));
    if (!checked.ok()) return checked.status();
    result[token] = *checked;
  }
  return result;
}

absl::Status CheckByteLevel(const json& doc, const char* field, const std::string& source) {
  auto it = doc.find(field);
  if (it == doc.end() || it->is_null()) return absl::OkStatus();
  std::vector<json> parts = {*it};
  if (it->value("type", "") == "Sequence") {
    const char* list = std::string(field) == "decoder" ? "decoders" : "pretokenizers";
    parts = it->value(list, std::vector<json>{});
  }
  for (const json& part : parts) {
    const std::string type = part.value("type", "");
    if (type != "ByteLevel") {
      return absl::InvalidArgumentError(absl::StrCat(source, ": ", field, " type '", type, "' is not supported"));
    }
    if (part.value("add_prefix_space", false)) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": ", field, " with add_prefix_space is not supported"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> FromTokenizerJsonDoc(const json& doc, const std::string& source) {
  if (!doc.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": expected a JSON object"));
  auto model = doc.find("model");
  if (model == doc.end() || !model->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": missing 'model' object"));
  }
  if (model->value("type", "BPE") != "BPE") {
    return absl::InvalidArgumentError(absl::StrCat(source, ": model type '", model->value("type", ""),
                                                   "' is not supported (only BPE)"));
  }
  if (auto status = CheckByteLevel(doc, "pre_tokenizer", source); !status.ok()) return status;
  if (auto status = CheckByteLevel(doc, "decoder", source); !status.ok()) return status;
  auto vocab = ParseVocab(model->value("vocab", json()), source + " model.vocab");
  if (!vocab.ok()) return vocab.status();
  std::vector<std::string> merges;
  for (const json& merge : model->value("merges", json::array())) {
    if (merge.is_string()) {
      merges.push_back(merge.get<std::string>());
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      merges.push_back(merge[0].get<std::string>() + " " + merge[1].get<std::string>());
    } else {
      return absl::InvalidArgumentError(absl::StrCat(source, ": model.merges entries must be \"a b\" or [a, b]"));
    }
  }
  std::vector<AddedToken> added;
  for (const json& token : doc.value("added_tokens", json::array())) {
    if (!token.is_object() || !token.contains("id") || !token["id"].is_number_integer() ||
        !token.contains("content") || !token["content"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": added_tokens entries need 'id' and 'content'"));
    }
    const std::string content = token["content"].get<std::string>();
    absl::StatusOr<int32_t> id = ReadTokenId(token["id"], source, absl::StrCat("added token '", content, "'"));
    if (!id.ok()) return id.status();
    added.push_back({content, *id, token.value("special", false)});
  }
  return Tokenizer::FromVocabAndMerges(*vocab, merges, added, source);
}

absl::StatusOr<std::vector<AddedToken>> ReadAddedTokens(const fs::path& dir) {
  std::vector<AddedToken> added;
  std::vector<std::string> special_contents;
  if (fs::exists(dir / "special_tokens_map.json")) {
    auto text = ReadFileToString((dir / "special_tokens_map.json").string());
    if (!text.ok()) return text.status();
    auto doc = ParseJson(*text, (dir / "special_tokens_map.json").string());
    if (!doc.ok()) return doc.status();
    for (const auto& [role, value] : doc->items()) {
      for (const json& entry : value.is_array() ? value : json::array({value})) {
        if (entry.is_string()) special_contents.push_back(entry.get<std::string>());
        if (entry.is_object() && entry.contains("content")) special_contents.push_back(entry["content"].get<std::string>());
      }
    }
  }
  if (fs::exists(dir / "added_tokens.json")) {
    const std::string source = (dir / "added_tokens.json").string();
    auto text = ReadFileToString((dir / "added_tokens.json").string());
    if (!text.ok()) return text.status();
    auto doc = ParseJson(*text, source);
    if (!doc.ok()) return doc.status();
    auto entries = ParseVocab(*doc, source);
    if (!entries.ok()) return entries.status();
    for (const auto& [content, id] : *entries) {
      const bool special = std::find(special_contents.begin(), special_contents.end(), content) != special_contents.end();
      added.push_back({content, id, special});
    }
  }
  return added;
}

}  // namespace

std::string ByteLevelToBytes(std::string_view token, bool* ok) {
  static const std::array<int, 512> kCodePointToByte = BuildCodePointToByte();
  std::string bytes;
  *ok = true;
  for (size_t pos = 0; pos < token.size();) {
    const auto lead = static_cast<uint8_t>(token[pos]);
    uint32_t code_point = lead;
    int length = 1;
    if (lead >= 0xC0 && lead < 0xE0 && pos + 1 < token.size()) {
      code_point = ((lead & 0x1Fu) << 6) | (static_cast<uint8_t>(token[pos + 1]) & 0x3Fu);
      length = 2;
    } else if (lead >= 0x80) {
      *ok = false;  // byte-level vocabularies use only code points below 512
      return bytes;
    }
    if (code_point >= kCodePointToByte.size() || kCodePointToByte[code_point] < 0) {
      *ok = false;
      return bytes;
    }
    bytes.push_back(static_cast<char>(kCodePointToByte[code_point]));
    pos += static_cast<size_t>(length);
  }
  return bytes;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromTokenizerJson(std::string_view json_text,
                                                                        const std::string& source) {
  auto doc = ParseJson(json_text, source);
  if (!doc.ok()) return doc.status();
  try {  // nlohmann's typed accessors throw on type mismatches; keep that inside
    return FromTokenizerJsonDoc(*doc, source);
  } catch (const json::exception& error) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", error.what()));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& dir_name) {
  const fs::path dir(dir_name);
  if (fs::exists(dir / "tokenizer.json")) {
    auto text = ReadFileToString((dir / "tokenizer.json").string());
    if (!text.ok()) return text.status();
    return FromTokenizerJson(*text, (dir / "tokenizer.json").string());
  }
  if (!fs::exists(dir / "vocab.json") || !fs::exists(dir / "merges.txt")) {
    return absl::NotFoundError(absl::StrCat(dir_name, ": no tokenizer.json, nor vocab.json with merges.txt"));
  }
  const std::string vocab_source = (dir / "vocab.json").string();
  auto vocab_text = ReadFileToString((dir / "vocab.json").string());
  if (!vocab_text.ok()) return vocab_text.status();
  auto vocab_doc = ParseJson(*vocab_text, vocab_source);
  if (!vocab_doc.ok()) return vocab_doc.status();
  auto vocab = ParseVocab(*vocab_doc, vocab_source);
  if (!vocab.ok()) return vocab.status();
  auto merges_text = ReadFileToString((dir / "merges.txt").string());
  if (!merges_text.ok()) return merges_text.status();
  std::vector<std::string> merges;
  std::istringstream lines(*merges_text);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    merges.push_back(line);
  }
  auto added = ReadAddedTokens(dir);
  if (!added.ok()) return added.status();
  return FromVocabAndMerges(*vocab, merges, *added, (dir / "merges.txt").string());
}

}  // namespace mf
