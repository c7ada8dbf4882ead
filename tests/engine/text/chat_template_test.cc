// Chat templates and their Jinja engine: loading from tokenizer files, the plain default,
// errors as statuses, and the inputs the fuzzer found (each once crashed the engine).
// Rendering parity with python3-jinja2 is tests/tools/chat_template_test.py.
#include "engine/text/chat_template.h"

#include <filesystem>
#include <fstream>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "engine/text/jinja.h"

namespace mf {
namespace {

using ::testing::HasSubstr;
using nlohmann::ordered_json;

const ordered_json kConversation = ordered_json::parse(
    R"([{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Hi"}])");

std::string Render(const std::string& source) {
  auto parsed = jinja::Template::Parse(source, "t.jinja");
  if (!parsed.ok()) return "parse error: " + std::string(parsed.status().message());
  auto rendered = parsed->Render({{"messages", jinja::Value::FromJson(kConversation)}});
  return rendered.ok() ? *rendered : "render error: " + std::string(rendered.status().message());
}

class TemporaryDirectory {
 public:
  TemporaryDirectory() : path_(std::filesystem::temp_directory_path() / ("mf-chat-" + std::to_string(getpid()))) {
    std::filesystem::create_directories(path_);
  }
  ~TemporaryDirectory() { std::filesystem::remove_all(path_); }
  std::string Write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name) << text;
    return (path_ / name).string();
  }
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

TEST(ChatTemplateTest, WithoutTemplateFilesThePlainTemplateIsUsed) {
  TemporaryDirectory dir;
  auto chat = ChatTemplate::Load(dir.path());
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(chat->origin(), "built-in plain template");
  EXPECT_EQ(*chat->Render(kConversation, true), "System:  Be brief. \n\nUser: Hi\n\nAssistant:");
  EXPECT_EQ(*chat->Render(kConversation, false), "System:  Be brief. \n\nUser: Hi\n\n");
}

TEST(ChatTemplateTest, TokenizerConfigTemplateAndSpecialTokens) {
  TemporaryDirectory dir;
  dir.Write("tokenizer_config.json",
            R"({"bos_token": {"content": "<s>"}, "eos_token": "</s>",
                "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{% endfor %}{{ eos_token }}"})");
  auto chat = ChatTemplate::Load(dir.path());
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(*chat->Render(kConversation, true), "<s>[system][user]</s>");
}

TEST(ChatTemplateTest, RaiseExceptionIsInvalidArgumentWithTheTemplatesMessage) {
  auto chat = ChatTemplate::FromSource("{{ raise_exception('only user turns') }}", "t.jinja");
  ASSERT_TRUE(chat.ok());
  const auto rendered = chat->Render(kConversation, true);
  EXPECT_EQ(rendered.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rendered.status().message(), "only user turns");
}

TEST(ChatTemplateTest, BrokenTemplatesFailWhenParsedNamingFileAndLine) {
  TemporaryDirectory dir;
  dir.Write("tokenizer_config.json", R"({"chat_template": "ok\n{% for m in messages %}"})");
  const auto chat = ChatTemplate::Load(dir.path());
  EXPECT_EQ(chat.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(chat.status().message(), HasSubstr("tokenizer_config.json:2: '{% for %}' is never closed"));
  dir.Write("tokenizer_config.json", R"({"chat_template": [{"name": "tool_use", "template": "x"}]})");
  EXPECT_THAT(ChatTemplate::Load(dir.path()).status().message(), HasSubstr("no template named 'default'"));
}

TEST(JinjaTest, ArgumentsOutliveTheCallsThatReadThem) {
  // A default argument bound to a reference of a temporary once read freed stack memory.
  EXPECT_EQ(Render("{{ messages[0].content.strip() }}|{{ messages | selectattr('role') | list | length }}"),
            "Be brief.|2");
  EXPECT_EQ(Render("{{ messages | map(attribute='role') | join(',') }}"), "system,user");
}

TEST(JinjaTest, IntegerOverflowIsAnErrorNotAWrap) {
  EXPECT_EQ(Render("{{ 999999999999999999 * 999999999999999999 }}"), "render error: t.jinja:1: integer overflow");
  EXPECT_EQ(Render("{{ -(-999999999999999999 - 999999999999999999 * 9) }}"), "render error: t.jinja:1: integer overflow");
  EXPECT_EQ(Render("{{ range(9223372036854775806, 9223372036854775807, 5) | list }}"), "[9223372036854775806]");
}

TEST(JinjaTest, HugeLiteralsAreInfinityAsInPython) {
  EXPECT_EQ(Render("{{ 1e999 }} {{ -1e999 }} {{ 1e-999 }}"), "inf -inf 0.0");
  EXPECT_EQ(Render("{{ 1234567890123456789012 }}"), "parse error: t.jinja:1: integer literal does not fit 64 bits: 1234567890123456789012");
}

TEST(JinjaTest, ValuesCannotNestWithoutBoundOrFormCycles) {
  EXPECT_THAT(Render("{% set ns = namespace(x=1) %}{% for i in range(1000) %}{% set ns.x = [ns.x] %}{% endfor %}"
                     "{{ ns.x }}"),
              HasSubstr("values nest deeper than 128 levels"));
  EXPECT_THAT(Render("{% set ns = namespace() %}{% set ns.self = [ns] %}"),
              HasSubstr("a namespace attribute cannot hold a namespace"));
  ordered_json deep = "leaf";
  for (int i = 0; i < 1000; ++i) deep = ordered_json::array({deep});
  auto chat = ChatTemplate::FromSource("{{ messages | length }}", "t.jinja");
  const auto rendered = chat->Render(ordered_json::array({{{"role", "user"}, {"content", "x"}, {"extra", deep}}}), true);
  EXPECT_EQ(rendered.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(rendered.status().message(), HasSubstr("messages: values nest deeper than 128 levels"));
}

TEST(JinjaTest, DeepNestingAndLongLoopsAreRefused) {
  EXPECT_THAT(Render("{{ " + std::string(100, '(') + "1" + std::string(100, ')') + " }}"), HasSubstr("nested too deeply"));
  EXPECT_THAT(Render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"),
              HasSubstr("loops more than 2^20 times"));
}

}  // namespace
}  // namespace mf
