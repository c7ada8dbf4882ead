#include "engine/text/chat_template.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"

namespace mf {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// tokenizer_config.json, or an empty object when the directory has none.
absl::StatusOr<json> ReadTokenizerConfig(const std::string& dir) {
  const fs::path path = fs::path(dir) / "tokenizer_config.json";
  if (dir.empty() || !fs::exists(path)) return json::object();
  MF_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path.string()));
  json config = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!config.is_object()) return absl::InvalidArgumentError(absl::StrCat(path.string(), ": not a JSON object"));
  return config;
}

// A special token as tokenizer_config.json writes it: "<s>" or {"content": "<s>", ...}.
std::string SpecialToken(const json& config, const char* name) {
  if (!config.contains(name)) return "";
  const json& token = config[name];
  if (token.is_string()) return token.get<std::string>();
  if (token.is_object() && token.contains("content") && token["content"].is_string()) {
    return token["content"].get<std::string>();
  }
  return "";
}

// The template text tokenizer_config.json carries, if any; `found` says whether it does.
absl::StatusOr<std::string> ConfigTemplate(const json& config, const std::string& source, bool* found) {
  *found = false;
  if (!config.contains("chat_template") || config["chat_template"].is_null()) return std::string();
  const json& entry = config["chat_template"];
  *found = true;
  if (entry.is_string()) return entry.get<std::string>();
  if (entry.is_array()) {  // [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
    for (const json& named : entry) {
      if (named.is_object() && named.value("name", "") == "default" && named.contains("template") &&
          named["template"].is_string()) {
        return named["template"].get<std::string>();
      }
    }
    return absl::InvalidArgumentError(absl::StrCat(source, ": chat_template lists no template named 'default'"));
  }
  return absl::InvalidArgumentError(absl::StrCat(source, ": chat_template must be a string or a list"));
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::FromSource(const std::string& source, const std::string& source_name,
                                                      std::string bos_token, std::string eos_token) {
  MF_ASSIGN_OR_RETURN(jinja::Template parsed, jinja::Template::Parse(source, source_name));
  ChatTemplate chat(std::move(parsed), source_name);
  chat.bos_token_ = std::move(bos_token);
  chat.eos_token_ = std::move(eos_token);
  return chat;
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromFile(const std::string& path, const std::string& dir) {
  MF_ASSIGN_OR_RETURN(const std::string source, ReadFileToString(path));
  MF_ASSIGN_OR_RETURN(const json config, ReadTokenizerConfig(dir));
  return FromSource(source, path, SpecialToken(config, "bos_token"), SpecialToken(config, "eos_token"));
}

absl::StatusOr<ChatTemplate> ChatTemplate::Load(const std::string& dir) {
  const fs::path jinja_file = fs::path(dir) / "chat_template.jinja";
  if (!dir.empty() && fs::exists(jinja_file)) return FromFile(jinja_file.string(), dir);
  MF_ASSIGN_OR_RETURN(const json config, ReadTokenizerConfig(dir));
  const std::string config_path = (fs::path(dir) / "tokenizer_config.json").string();
  bool found = false;
  MF_ASSIGN_OR_RETURN(const std::string source, ConfigTemplate(config, config_path, &found));
  if (!found) {
    return FromSource(kPlainChatTemplate, "built-in plain template", SpecialToken(config, "bos_token"),
                      SpecialToken(config, "eos_token"));
  }
  return FromSource(source, config_path, SpecialToken(config, "bos_token"), SpecialToken(config, "eos_token"));
}

absl::StatusOr<std::string> ChatTemplate::Render(const nlohmann::ordered_json& messages, bool add_generation_prompt) const {
  jinja::Value converted;
  try {
    converted = jinja::Value::FromJson(messages);
  } catch (const jinja::TemplateError& error) {
    return absl::InvalidArgumentError(absl::StrCat("messages: ", error.message));
  }
  const jinja::Dict globals = {
      {"messages", std::move(converted)},
      {"add_generation_prompt", jinja::Value(add_generation_prompt)},
      {"bos_token", jinja::Value(bos_token_)},
      {"eos_token", jinja::Value(eos_token_)},
  };
  return template_.Render(globals);
}

}  // namespace mf
