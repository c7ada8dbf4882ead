// `moduleformer tokenize`: UTF-8 text on stdin -> JSON array of ids; --decode reverses.
#include <cstdio>
#include <iostream>
#include <iterator>

#include "absl/flags/flag.h"
#include "absl/strings/str_join.h"
#include "engine/text/tokenizer.h"
#include "nlohmann/json.hpp"
#include "server/model_flags.h"
#include "tools/moduleformer/commands.h"

ABSL_FLAG(std::string, tokenizer, "",
          "Tokenizer directory (tokenizer.json, or vocab.json + merges.txt); default: the --model directory");
ABSL_FLAG(bool, decode, false, "Read a JSON array of ids and print their text");
ABSL_FLAG(bool, allow_special, false, "Encode special tokens written in the text as themselves");
ABSL_FLAG(bool, skip_special, false, "Leave special tokens out when decoding");

namespace mf::cli {

int RunTokenize() {
  const std::string directory =
      absl::GetFlag(FLAGS_tokenizer).empty() ? ModelSourceFromFlags().model_dir : absl::GetFlag(FLAGS_tokenizer);
  auto tokenizer = Tokenizer::Load(directory);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(tokenizer.status().message()).c_str());
    return 1;
  }
  const std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  if (!absl::GetFlag(FLAGS_decode)) {
    const std::vector<int32_t> ids = (*tokenizer)->Encode(input, {absl::GetFlag(FLAGS_allow_special)});
    std::printf("[%s]\n", absl::StrJoin(ids, ", ").c_str());
    return 0;
  }
  nlohmann::json parsed = nlohmann::json::parse(input, nullptr, false);
  if (parsed.is_discarded() || !parsed.is_array()) {
    std::fprintf(stderr, "error: --decode expects a JSON array of token ids on stdin\n");
    return 2;
  }
  std::vector<int32_t> ids;
  for (const auto& id : parsed) {
    if (!id.is_number_integer()) {
      std::fprintf(stderr, "error: --decode: '%s' is not a token id\n", id.dump().c_str());
      return 2;
    }
    ids.push_back(id.get<int32_t>());
  }
  auto text = (*tokenizer)->Decode(ids, absl::GetFlag(FLAGS_skip_special));
  if (!text.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(text.status().message()).c_str());
    return 1;
  }
  std::fwrite(text->data(), 1, text->size(), stdout);
  return 0;
}

}  // namespace mf::cli
