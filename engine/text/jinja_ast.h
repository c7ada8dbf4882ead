// The parsed form of a template: statements holding expressions. Built by
// jinja_parser.cc, walked by jinja_render.cc.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/text/jinja_value.h"

namespace mf::jinja {

struct Expr {
  enum class Kind {
    kLiteral,    // literal
    kName,       // name
    kAttribute,  // operands[0].name
    kItem,       // operands[0][operands[1]]
    kSlice,      // operands[0][operands[1]:operands[2]:operands[3]] (null parts absent)
    kCall,       // operands[0](operands[1..]); the last keyword_names.size() are keywords
    kFilter,     // operands[0] | name(operands[1..])
    kTest,       // operands[0] is [not] name(operands[1..])
    kUnary,      // name operands[0]: "not", "-", "+"
    kBinary,     // operands[0] name operands[1]: or and == != < > <= >= in "not in" + - ~ * / // % **
    kCondition,  // operands[1] if operands[0] else operands[2] (operands[2] may be null)
    kList,       // [operands...] (tuples too)
    kDict,       // {operands[0]: operands[1], ...}
  };
  Kind kind = Kind::kLiteral;
  int line = 0;
  std::string name;
  bool negated = false;  // kTest: "is not"
  Value literal;
  std::vector<std::unique_ptr<Expr>> operands;
  std::vector<std::string> keyword_names;  // kCall / kFilter: names of the trailing keyword arguments
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  enum class Kind {
    kText,    // text
    kOutput,  // {{ expr }}
    kIf,      // {% if conditions[0] %} bodies[0] {% elif conditions[1] %} bodies[1] ... {% else %} else_body
    kFor,     // {% for targets in expr [if condition] %} bodies[0] {% else %} else_body
    kSet,     // {% set targets[0][.attribute] = expr %}
  };
  Kind kind = Kind::kText;
  int line = 0;
  std::string text;
  std::unique_ptr<Expr> expr;
  std::vector<std::unique_ptr<Expr>> conditions;  // kIf branches; kFor: at most one filter
  std::vector<Body> bodies;
  Body else_body;
  std::vector<std::string> targets;  // kFor loop variables (unpacked when several); kSet name
  std::string attribute;             // kSet on a namespace attribute
};

}  // namespace mf::jinja

namespace mf::jinja {

// Both throw TemplateError.
Body ParseTemplate(std::string_view source);
std::string RenderBody(const Body& body, const Dict& globals);

}  // namespace mf::jinja
