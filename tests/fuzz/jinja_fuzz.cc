// libFuzzer target: any template text either fails to parse with an error, or renders a
// fixed conversation to text or an error; never a crash, hang or unbounded allocation.
#include <string>
#include <string_view>

#include "engine/text/jinja.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view source(reinterpret_cast<const char*>(data), size);
  auto parsed = mf::jinja::Template::Parse(source, "fuzz.jinja");
  if (!parsed.ok()) return 0;
  using mf::jinja::Dict;
  using mf::jinja::List;
  using mf::jinja::Value;
  const Dict globals = {
      {"messages", Value(List{Value(Dict{{"role", Value("system")}, {"content", Value("Be brief.")}}),
                              Value(Dict{{"role", Value("user")}, {"content", Value("Hi \xc3\xa9t\xc3\xa9")}})})},
      {"add_generation_prompt", Value(true)},
      {"bos_token", Value("<s>")},
      {"eos_token", Value("</s>")},
  };
  auto rendered = parsed->Render(globals);
  (void)rendered;
  return 0;
}
