// A Jinja template engine for the subset chat templates use, with the settings
// Hugging Face's apply_chat_template renders them under (trim_blocks, lstrip_blocks, no
// autoescape; raise_exception, strftime_now and an unescaped tojson). Supported:
//   {{ expr }}, {# comments #}, whitespace control ({%- -%}, {{- -}}, {%+),
//   {% if / elif / else / endif %}, {% for a[, b] in expr [if cond] %} ... {% else %} ...
//   {% endfor %} with loop.index/index0/revindex/revindex0/first/last/length/previtem/nextitem,
//   {% set name = expr %}, {% set ns.attr = expr %};
//   literals (str, int, float, True/False/None in either case, lists, tuples, dicts),
//   attribute/item access, slices, + - * / // % ** ~, comparisons, in / not in, and/or/not,
//   conditional expressions, filters (see jinja_builtins.cc), tests (is [not] ...), string
//   and dict methods, namespace(), range(), raise_exception(), strftime_now().
// Anything else fails when the template is parsed, naming the construct and the line, so an
// unsupported template is refused when the server starts, not on a request.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/text/jinja_value.h"

namespace mf::jinja {

struct Stmt;

class Template {
 public:
  // `source_name` prefixes error messages (e.g. the file the template came from).
  static absl::StatusOr<Template> Parse(std::string_view source, const std::string& source_name);

  // Renders with `globals` as the top-level variables. Template errors, including
  // raise_exception(), come back as InvalidArgument with the template's message.
  absl::StatusOr<std::string> Render(const Dict& globals) const;

 private:
  std::string source_name_;
  std::shared_ptr<const std::vector<std::unique_ptr<Stmt>>> body_;
};

}  // namespace mf::jinja
