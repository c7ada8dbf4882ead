// Splits a template into text and tags, applying Jinja's whitespace control with
// trim_blocks and lstrip_blocks on (as Hugging Face renders chat templates), and the
// inside of each tag into expression tokens.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "engine/text/jinja_value.h"

namespace mf::jinja {

struct Token {
  enum class Type { kName, kString, kInteger, kFloat, kOperator };
  Type type = Type::kName;
  std::string text;  // names and operators; a string literal's decoded value
  Value value;       // numbers
  int line = 0;
};

struct Piece {
  enum class Kind { kText, kOutput, kStatement };  // text, {{ ... }}, {% ... %}
  Kind kind = Kind::kText;
  int line = 0;
  std::string text;
  std::vector<Token> tokens;
};

// Throws TemplateError.
std::vector<Piece> LexTemplate(std::string_view source);

}  // namespace mf::jinja
