// libFuzzer target: any bytes encode, decode back byte-exactly, and stream like a
// full decode. The GPT-2 tokenizer comes from $MF_FUZZ_TOKENIZER_DIR.
#include <cstdlib>
#include <cstdio>
#include <string>

#include "engine/text/detokenizer.h"
#include "engine/text/tokenizer.h"

namespace {

const mf::Tokenizer* tokenizer = nullptr;

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* dir = std::getenv("MF_FUZZ_TOKENIZER_DIR");
  auto loaded = mf::Tokenizer::Load(dir != nullptr ? dir : "tests/fixtures/tokenizer/gpt2");
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", std::string(loaded.status().message()).c_str());
    std::abort();
  }
  tokenizer = loaded->release();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> ids = tokenizer->Encode(text, {.allow_special = size % 2 == 0});
  Check(*tokenizer->DecodeBytes(ids) == text, "decode(encode(x)) == x");
  const std::string full = *tokenizer->Decode(ids);
  mf::IncrementalDecoder decoder(*tokenizer, false);
  mf::StopMatcher matcher({"\n\n", "the"});
  std::string streamed, released;
  for (int32_t id : ids) {
    const std::string piece = *decoder.Push(id);
    streamed += piece;
    released += matcher.Push(piece).text;
  }
  streamed += decoder.Finish();
  Check(streamed == full, "incremental decode == full decode");
  if (!matcher.stopped()) released += matcher.Finish();
  Check(full.compare(0, released.size(), released) == 0, "stop matcher releases a prefix of the text");
  return 0;
}
