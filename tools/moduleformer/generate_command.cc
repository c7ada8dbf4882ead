// `moduleformer generate`: greedy generation from token ids on a local model.
#include <cstdio>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/generator.h"
#include "tools/moduleformer/commands.h"

ABSL_FLAG(std::string, prompt_ids, "", "Comma-separated prompt token ids");
ABSL_FLAG(int32_t, max_new_tokens, 16, "Number of tokens to generate");
ABSL_FLAG(std::string, server, "", "HOST:PORT of a running moduleformer-server: generate there, streaming");

namespace mf::cli {

int RunGenerate() {
  if (!absl::GetFlag(FLAGS_server).empty()) return RunRemoteGenerate();
  std::vector<int32_t> prompt;
  for (absl::string_view piece : absl::StrSplit(absl::GetFlag(FLAGS_prompt_ids), ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(piece, &id)) {
      std::fprintf(stderr, "error: --prompt-ids: '%s' is not an integer\n", std::string(piece).c_str());
      return 2;
    }
    prompt.push_back(id);
  }
  if (prompt.empty()) {
    std::fprintf(stderr, "error: --prompt-ids is empty\n");
    return 2;
  }
  auto model = LoadModelFromFlags();
  if (!model.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  GenerateOptions options;
  options.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  auto results = GenerateGreedy(**model, {prompt}, options);
  if (!results.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(results.status().message()).c_str());
    return 1;
  }
  std::printf("%s\n", absl::StrJoin(results->front().tokens, ",").c_str());
  return 0;
}

}  // namespace mf::cli
