// `moduleformer chat-template`: chat messages (a JSON array) on stdin -> the prompt the
// server's /v1/chat/completions would give the model, for checking a model's template.
#include <cstdio>
#include <iostream>
#include <iterator>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "engine/text/chat_template.h"
#include "server/model_flags.h"
#include "tools/moduleformer/commands.h"

ABSL_DECLARE_FLAG(std::string, tokenizer);
ABSL_FLAG(std::string, chat_template, "",
          "A Jinja chat template file; default: the template of the tokenizer's (or model's) directory");
ABSL_FLAG(bool, generation_prompt, true, "Render the assistant's turn opening (add_generation_prompt)");

namespace mf::cli {

int RunChatTemplate() {
  const std::string directory =
      absl::GetFlag(FLAGS_tokenizer).empty() ? ModelSourceFromFlags().model_dir : absl::GetFlag(FLAGS_tokenizer);
  const std::string file = absl::GetFlag(FLAGS_chat_template);
  auto chat_template = file.empty() ? ChatTemplate::Load(directory) : ChatTemplate::FromFile(file, directory);
  if (!chat_template.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(chat_template.status().message()).c_str());
    return 1;
  }
  const std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  const nlohmann::ordered_json messages = nlohmann::ordered_json::parse(input, nullptr, /*allow_exceptions=*/false);
  if (!messages.is_array()) {
    std::fprintf(stderr, "error: expected a JSON array of messages on stdin\n");
    return 2;
  }
  auto prompt = chat_template->Render(messages, absl::GetFlag(FLAGS_generation_prompt));
  if (!prompt.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(prompt.status().message()).c_str());
    return 1;
  }
  std::fwrite(prompt->data(), 1, prompt->size(), stdout);
  return 0;
}

}  // namespace mf::cli
