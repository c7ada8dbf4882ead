// Turns chat messages into a prompt, as Hugging Face's apply_chat_template does: the
// model's Jinja chat template with `messages`, `add_generation_prompt`, `bos_token` and
// `eos_token`. Where the tokenizer files carry no template, a plain built-in one
// (kPlainChatTemplate) is used.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "engine/text/jinja.h"
#include "nlohmann/json.hpp"

namespace mf {

// "System: ...\n\nUser: ...\n\nAssistant: ...\n\n" and, for a generation prompt, "Assistant:".
// Base models continue such a transcript; clients usually pass "\n\nUser:" as a stop string.
inline constexpr char kPlainChatTemplate[] =
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}";

class ChatTemplate {
 public:
  // From `dir`: chat_template.jinja, else tokenizer_config.json's "chat_template" (a
  // string, or a list of named templates of which "default" is taken), else the plain
  // template. bos_token / eos_token come from tokenizer_config.json when it names them.
  static absl::StatusOr<ChatTemplate> Load(const std::string& dir);
  // The template in `path` (as --chat-template gives it), with the special tokens of `dir`.
  static absl::StatusOr<ChatTemplate> FromFile(const std::string& path, const std::string& dir);
  static absl::StatusOr<ChatTemplate> FromSource(const std::string& source, const std::string& source_name,
                                                 std::string bos_token = "", std::string eos_token = "");

  // `messages`: the request's array of {"role", "content", ...} objects, passed to the
  // template as they are. A template's raise_exception() comes back as InvalidArgument.
  absl::StatusOr<std::string> Render(const nlohmann::ordered_json& messages, bool add_generation_prompt) const;

  // Where the template came from: a file name, or "built-in plain template".
  const std::string& origin() const { return origin_; }

 private:
  ChatTemplate(jinja::Template parsed, std::string origin) : template_(std::move(parsed)), origin_(std::move(origin)) {}

  jinja::Template template_;
  std::string origin_;
  std::string bos_token_, eos_token_;
};

}  // namespace mf
