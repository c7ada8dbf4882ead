// `moduleformer generate`: greedy generation on a local model, from prompt text (with the
// model's tokenizer; prints text) or from --prompt-ids (prints token ids).
#include <cstdio>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/generator.h"
#include "engine/model_loader.h"
#include "server/model_flags.h"
#include "tools/moduleformer/commands.h"

ABSL_FLAG(std::string, prompt_ids, "", "Comma-separated prompt token ids");
ABSL_FLAG(int32_t, max_new_tokens, 16, "Number of tokens to generate");
ABSL_FLAG(std::string, server, "", "HOST:PORT of a running moduleformer-server: generate there, streaming");
ABSL_DECLARE_FLAG(std::string, tokenizer);

namespace mf::cli {
namespace {

absl::StatusOr<std::vector<int32_t>> ParsePromptIds() {
  std::vector<int32_t> prompt;
  for (absl::string_view piece : absl::StrSplit(absl::GetFlag(FLAGS_prompt_ids), ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(piece, &id)) {
      return absl::InvalidArgumentError(absl::StrCat("--prompt-ids: '", piece, "' is not an integer"));
    }
    prompt.push_back(id);
  }
  return prompt;
}

int Fail(const absl::Status& status, int code) {
  std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
  return code;
}

}  // namespace

int RunGenerate() {
  if (!absl::GetFlag(FLAGS_server).empty()) return RunRemoteGenerate();
  const std::string text = absl::StrJoin(PositionalArguments(), " ");
  std::shared_ptr<const Tokenizer> tokenizer;
  std::vector<int32_t> prompt;
  if (!text.empty()) {
    auto loaded = LoadTokenizerIfPresent(absl::GetFlag(FLAGS_tokenizer), ModelSourceFromFlags().model_dir);
    if (!loaded.ok()) return Fail(loaded.status(), 1);
    if (*loaded == nullptr) {
      return Fail(absl::InvalidArgumentError("the model has no tokenizer: give --prompt-ids or --tokenizer DIR"), 2);
    }
    tokenizer = *std::move(loaded);
    prompt = tokenizer->Encode(text);
  } else {
    auto ids = ParsePromptIds();
    if (!ids.ok()) return Fail(ids.status(), 2);
    prompt = *std::move(ids);
  }
  if (prompt.empty()) return Fail(absl::InvalidArgumentError("give the prompt text as an argument, or --prompt-ids"), 2);
  auto model = LoadModelFromFlags();
  if (!model.ok()) return Fail(model.status(), 1);
  GenerateOptions options;
  options.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  auto results = GenerateGreedy(**model, {prompt}, options);
  if (!results.ok()) return Fail(results.status(), 1);
  const std::vector<int32_t>& tokens = results->front().tokens;
  if (tokenizer == nullptr) {
    std::printf("%s\n", absl::StrJoin(tokens, ",").c_str());
    return 0;
  }
  auto decoded = tokenizer->Decode(tokens);
  if (!decoded.ok()) return Fail(decoded.status(), 1);
  std::printf("%s\n", decoded->c_str());
  return 0;
}

}  // namespace mf::cli
