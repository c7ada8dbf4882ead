// libFuzzer target: tokenizer.json parsing never crashes, and whatever it accepts
// encodes and decodes its own input consistently.
#include <cstdlib>
#include <string>

#include "engine/text/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto tokenizer = mf::Tokenizer::FromTokenizerJson(text, "fuzz.json");
  if (!tokenizer.ok()) return 0;
  const std::vector<int32_t> ids = (*tokenizer)->Encode(text.substr(0, 256), {.allow_special = true});
  auto decoded = (*tokenizer)->DecodeBytes(ids);
  if (!decoded.ok() || *decoded != text.substr(0, 256)) std::abort();
  return 0;
}
