// Renders a parsed template: statements write text, expressions evaluate with Python's
// semantics. A for loop's variables (and what it sets) live in the loop's own scope, as in
// Jinja, which is why templates carry state out of loops with namespace().
#include <algorithm>
#include <cmath>
#include <optional>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "engine/text/jinja.h"
#include "engine/text/jinja_ast.h"
#include "engine/text/jinja_builtins.h"
#include "engine/text/jinja_python.h"

namespace mf::jinja {
namespace {

constexpr size_t kMaxOutputBytes = 64 << 20;
constexpr int64_t kMaxLoopIterations = 1 << 20;

[[noreturn]] void Fail(const std::string& message, int line) { throw TemplateError{message, line}; }

bool HoldsNamespace(const Value& value) {
  if (value.is_namespace()) return true;
  if (value.is_list()) return std::any_of(value.list().begin(), value.list().end(), HoldsNamespace);
  if (value.is_dict()) {
    return std::any_of(value.dict().begin(), value.dict().end(), [](const auto& entry) { return HoldsNamespace(entry.second); });
  }
  return false;
}

int64_t FloorDivide(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0)) ? 1 : 0); }

class Renderer {
 public:
  explicit Renderer(const Dict& globals) { scopes_.emplace_back(globals.begin(), globals.end()); }

  std::string Run(const Body& body) {
    Execute(body);
    return std::move(out_);
  }

 private:
  void Execute(const Body& body) {
    for (const auto& statement : body) Execute(*statement);
  }

  void Execute(const Stmt& statement) {
    switch (statement.kind) {
      case Stmt::Kind::kText: return Write(statement.text, statement.line);
      case Stmt::Kind::kOutput: return Write(Evaluate(*statement.expr).Str(), statement.line);
      case Stmt::Kind::kIf:
        for (size_t i = 0; i < statement.conditions.size(); ++i) {
          if (Evaluate(*statement.conditions[i]).Truthy()) return Execute(statement.bodies[i]);
        }
        return Execute(statement.else_body);
      case Stmt::Kind::kFor: return Loop(statement);
      case Stmt::Kind::kSet: {
        Value value = Evaluate(*statement.expr);
        if (statement.attribute.empty()) {
          scopes_.back()[statement.targets[0]] = std::move(value);
          return;
        }
        const Value target = Lookup(statement.targets[0]);
        if (!target.is_namespace()) {
          Fail(absl::StrCat("cannot set an attribute of '", statement.targets[0], "': not a namespace()"), statement.line);
        }
        // A namespace inside a namespace could make a cycle, which reference counting never frees.
        if (HoldsNamespace(value)) Fail("a namespace attribute cannot hold a namespace", statement.line);
        target.Set(statement.attribute, std::move(value));
        return;
      }
    }
  }

  void Write(const std::string& text, int line) {
    if (out_.size() + text.size() > kMaxOutputBytes) Fail("the rendered text exceeds 64 MiB", line);
    out_ += text;
  }

  void Bind(const Stmt& loop, const Value& item) {
    auto& scope = scopes_.back();
    if (loop.targets.size() == 1) {
      scope[loop.targets[0]] = item;
      return;
    }
    if (!item.is_list() || item.list().size() != loop.targets.size()) {
      Fail(absl::StrCat("cannot unpack ", item.Repr(), " into ", loop.targets.size(), " loop variables"), loop.line);
    }
    for (size_t i = 0; i < loop.targets.size(); ++i) scope[loop.targets[i]] = item.list()[i];
  }

  void Loop(const Stmt& loop) {
    const Value iterable = Evaluate(*loop.expr);
    if (!iterable.is_undefined() && !iterable.is_list() && !iterable.is_dict() && !iterable.is_string()) {
      Fail(absl::StrCat("a value of type ", iterable.TypeName(), " is not iterable"), loop.line);
    }
    scopes_.emplace_back();
    List items;
    const Value all_items = ApplyFilter("list", iterable, {});
    for (const Value& item : all_items.list()) {
      Bind(loop, item);
      if (loop.conditions.empty() || Evaluate(*loop.conditions[0]).Truthy()) items.push_back(item);
    }
    const auto length = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < length; ++i) {
      if (++iterations_ > kMaxLoopIterations) Fail("the template loops more than 2^20 times", loop.line);
      Bind(loop, items[static_cast<size_t>(i)]);
      scopes_.back()["loop"] = Value(Dict{
          {"index", Value(i + 1)}, {"index0", Value(i)}, {"revindex", Value(length - i)},
          {"revindex0", Value(length - i - 1)}, {"first", Value(i == 0)}, {"last", Value(i == length - 1)},
          {"length", Value(length)}, {"previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value()},
          {"nextitem", i + 1 < length ? items[static_cast<size_t>(i + 1)] : Value()}});
      Execute(loop.bodies[0]);
    }
    scopes_.pop_back();
    if (items.empty()) Execute(loop.else_body);
  }

  Value Lookup(const std::string& name) const {
    for (auto scope = scopes_.rbegin(); scope != scopes_.rend(); ++scope) {
      if (const auto found = scope->find(name); found != scope->end()) return found->second;
    }
    return Value();
  }

  Arguments EvaluateArguments(const Expr& expr, size_t first) {
    Arguments arguments;
    const size_t keyword_start = expr.operands.size() - expr.keyword_names.size();
    for (size_t i = first; i < expr.operands.size(); ++i) {
      Value value = Evaluate(*expr.operands[i]);
      if (i < keyword_start) {
        arguments.positional.push_back(std::move(value));
      } else {
        arguments.keywords.emplace_back(expr.keyword_names[i - keyword_start], std::move(value));
      }
    }
    return arguments;
  }

  Value Evaluate(const Expr& expr) {
    try {
      return EvaluateUnchecked(expr);
    } catch (TemplateError& error) {
      if (error.line == 0) error.line = expr.line;
      throw;
    }
  }

  Value EvaluateUnchecked(const Expr& expr) {
    switch (expr.kind) {
      case Expr::Kind::kLiteral: return expr.literal;
      case Expr::Kind::kName: return Lookup(expr.name);
      case Expr::Kind::kAttribute: return Item(Evaluate(*expr.operands[0]), Value(expr.name), expr);
      case Expr::Kind::kItem: return Item(Evaluate(*expr.operands[0]), Evaluate(*expr.operands[1]), expr);
      case Expr::Kind::kSlice: return Slice(expr);
      case Expr::Kind::kCall: {
        const Expr& callee = *expr.operands[0];
        if (callee.kind == Expr::Kind::kName) return CallFunction(callee.name, EvaluateArguments(expr, 1));
        if (callee.kind != Expr::Kind::kAttribute) Fail("only functions and methods can be called", expr.line);
        const Value object = Evaluate(*callee.operands[0]);
        if (object.is_undefined()) Fail(absl::StrCat("cannot call '", callee.name, "' on an undefined value"), expr.line);
        return CallMethod(object, callee.name, EvaluateArguments(expr, 1));
      }
      case Expr::Kind::kFilter: return ApplyFilter(expr.name, Evaluate(*expr.operands[0]), EvaluateArguments(expr, 1));
      case Expr::Kind::kTest:
        return Value(ApplyTest(expr.name, Evaluate(*expr.operands[0]), EvaluateArguments(expr, 1)) != expr.negated);
      case Expr::Kind::kUnary: return Unary(expr);
      case Expr::Kind::kBinary: return Binary(expr);
      case Expr::Kind::kCondition:
        if (Evaluate(*expr.operands[0]).Truthy()) return Evaluate(*expr.operands[1]);
        return expr.operands[2] ? Evaluate(*expr.operands[2]) : Value();
      case Expr::Kind::kList: {
        List items;
        for (const auto& operand : expr.operands) items.push_back(Evaluate(*operand));
        return Value(std::move(items));
      }
      case Expr::Kind::kDict: {
        Dict entries;
        for (size_t i = 0; i + 1 < expr.operands.size(); i += 2) {
          const Value key = Evaluate(*expr.operands[i]);
          if (!key.is_string()) Fail("dict keys must be strings", expr.line);
          Value value = Evaluate(*expr.operands[i + 1]);
          auto same_key = [&key](const auto& entry) { return entry.first == key.as_string(); };
          if (auto existing = std::find_if(entries.begin(), entries.end(), same_key); existing != entries.end()) {
            existing->second = std::move(value);  // a repeated key keeps its first position, as in Python
          } else {
            entries.emplace_back(key.as_string(), std::move(value));
          }
        }
        return Value(std::move(entries));
      }
    }
    Fail("unknown expression", expr.line);
  }

  // obj.name and obj[key]: dict entries, namespace attributes, list and string positions.
  Value Item(const Value& object, const Value& key, const Expr& expr) {
    if (object.is_undefined()) {
      Fail(absl::StrCat("cannot read ", key.Repr(), " of an undefined value"), expr.line);
    }
    if (object.is_dict() || object.is_namespace()) return key.is_string() ? object.Get(key.as_string()) : Value();
    if ((object.is_list() || object.is_string()) && key.is_int()) {
      const List items = ApplyFilter("list", object, {}).list();
      int64_t index = key.as_int();
      if (index < 0) index += static_cast<int64_t>(items.size());
      if (index < 0 || index >= static_cast<int64_t>(items.size())) return Value();
      return items[static_cast<size_t>(index)];
    }
    return Value();  // Jinja: a missing attribute is undefined
  }

  Value Slice(const Expr& expr) {
    const Value object = Evaluate(*expr.operands[0]);
    if (!object.is_list() && !object.is_string()) Fail(absl::StrCat("cannot slice a ", object.TypeName()), expr.line);
    const List items = ApplyFilter("list", object, {}).list();
    const auto size = static_cast<int64_t>(items.size());
    auto bound = [&](size_t operand) -> std::optional<int64_t> {
      if (!expr.operands[operand]) return std::nullopt;
      const Value value = Evaluate(*expr.operands[operand]);
      if (value.is_none()) return std::nullopt;
      if (!value.is_int()) Fail("slice bounds must be integers", expr.line);
      return value.as_int();
    };
    const int64_t step = bound(3).value_or(1);
    if (step == 0) Fail("slice step cannot be zero", expr.line);
    auto clamp = [&](std::optional<int64_t> index, int64_t if_absent) {  // Python's slice.indices
      if (!index) return if_absent;
      int64_t i = *index < 0 ? *index + size : *index;
      return step > 0 ? std::clamp<int64_t>(i, 0, size) : std::clamp<int64_t>(i, -1, size - 1);
    };
    const int64_t start = clamp(bound(1), step > 0 ? 0 : size - 1);
    const int64_t stop = clamp(bound(2), step > 0 ? size : -1);
    List sliced;
    for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
      sliced.push_back(items[static_cast<size_t>(i)]);
      if (__builtin_add_overflow(i, step, &i)) break;
    }
    if (object.is_list()) return Value(std::move(sliced));
    std::string text;
    for (const Value& c : sliced) text += c.as_string();
    return Value(std::move(text));
  }

  Value Unary(const Expr& expr) {
    const Value operand = Evaluate(*expr.operands[0]);
    if (expr.name == "not") return Value(!operand.Truthy());
    if (!operand.is_number()) Fail(absl::StrCat("bad operand type for unary ", expr.name, ": ", operand.TypeName()), expr.line);
    if (expr.name == "+") return operand;
    if (operand.is_float()) return Value(-operand.as_double());
    if (operand.as_int() == INT64_MIN) Fail("integer overflow", expr.line);
    return Value(-operand.as_int());
  }

  Value Binary(const Expr& expr) {
    const std::string& op = expr.name;
    const Value left = Evaluate(*expr.operands[0]);
    if (op == "and") return left.Truthy() ? Evaluate(*expr.operands[1]) : left;
    if (op == "or") return left.Truthy() ? left : Evaluate(*expr.operands[1]);
    const Value right = Evaluate(*expr.operands[1]);
    if (op == "~") return Value(left.Str() + right.Str());
    if (op == "in" || op == "not in") return Value(ApplyTest("in", left, Arguments{{right}, {}}) == (op == "in"));
    if (op == "==" || op == "!=" || op == "<" || op == ">" || op == "<=" || op == ">=") {
      return Value(CompareValues(left, right, op));
    }
    if (op == "+" && left.is_string() && right.is_string()) return Value(left.as_string() + right.as_string());
    if (op == "+" && left.is_list() && right.is_list()) {
      List joined = left.list();
      joined.insert(joined.end(), right.list().begin(), right.list().end());
      return Value(std::move(joined));
    }
    if (!left.is_number() || !right.is_number()) {
      Fail(absl::StrCat("unsupported operand types for ", op, ": ", left.TypeName(), " and ", right.TypeName()), expr.line);
    }
    return Arithmetic(op, left, right, expr.line);
  }

  static Value Arithmetic(const std::string& op, const Value& left, const Value& right, int line) {
    const bool integers = !left.is_float() && !right.is_float();
    if ((op == "/" || op == "//" || op == "%") && right.as_double() == 0) Fail("division by zero", line);
    if (op == "/") return Value(left.as_double() / right.as_double());
    if (op == "**") {
      const double power = std::pow(left.as_double(), right.as_double());
      if (integers && right.as_int() >= 0 && std::abs(power) < 9.2e18) return Value(static_cast<int64_t>(std::llround(power)));
      return Value(power);
    }
    if (integers) {
      // Python's integers do not overflow; these do, so an overflow is an error, not a wrap.
      const int64_t a = left.as_int(), b = right.as_int();
      int64_t result = 0;
      bool overflow = false;
      if (op == "+") overflow = __builtin_add_overflow(a, b, &result);
      if (op == "-") overflow = __builtin_sub_overflow(a, b, &result);
      if (op == "*") overflow = __builtin_mul_overflow(a, b, &result);
      if (op == "//" || op == "%") {
        if (a == INT64_MIN && b == -1) Fail("integer overflow", line);
        const int64_t quotient = FloorDivide(a, b);
        result = op == "//" ? quotient : a - b * quotient;  // %: the sign of the divisor, as in Python
      }
      if (overflow) Fail("integer overflow", line);
      return Value(result);
    }
    const double a = left.as_double(), b = right.as_double();
    if (op == "+") return Value(a + b);
    if (op == "-") return Value(a - b);
    if (op == "*") return Value(a * b);
    if (op == "//") return Value(std::floor(a / b));
    return Value(a - b * std::floor(a / b));
  }

  std::vector<std::unordered_map<std::string, Value>> scopes_;
  std::string out_;
  int64_t iterations_ = 0;
};

// Filters, tests and functions are checked when the template is parsed, so a template
// that uses one this engine lacks is refused at startup.
void CheckNames(const Expr& expr) {
  if (expr.kind == Expr::Kind::kFilter && !IsKnownFilter(expr.name)) Fail(absl::StrCat("unsupported filter '", expr.name, "'"), expr.line);
  if (expr.kind == Expr::Kind::kTest && !IsKnownTest(expr.name)) Fail(absl::StrCat("unsupported test '", expr.name, "'"), expr.line);
  if (expr.kind == Expr::Kind::kCall && expr.operands[0]->kind == Expr::Kind::kName &&
      !IsKnownFunction(expr.operands[0]->name)) {
    Fail(absl::StrCat("unsupported function '", expr.operands[0]->name, "'"), expr.line);
  }
  for (const auto& operand : expr.operands) {
    if (operand) CheckNames(*operand);
  }
}

void CheckNames(const Body& body) {
  for (const auto& statement : body) {
    if (statement->expr) CheckNames(*statement->expr);
    for (const auto& condition : statement->conditions) CheckNames(*condition);
    for (const Body& inner : statement->bodies) CheckNames(inner);
    CheckNames(statement->else_body);
  }
}

}  // namespace

std::string RenderBody(const Body& body, const Dict& globals) { return Renderer(globals).Run(body); }

absl::StatusOr<Template> Template::Parse(std::string_view source, const std::string& source_name) {
  Template parsed;
  parsed.source_name_ = source_name;
  try {
    auto body = std::make_shared<Body>(ParseTemplate(source));
    CheckNames(*body);
    parsed.body_ = std::move(body);
  } catch (const TemplateError& error) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ":", error.line, ": ", error.message));
  } catch (const std::exception& error) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": ", error.what()));
  }
  return parsed;
}

absl::StatusOr<std::string> Template::Render(const Dict& globals) const {
  try {
    return RenderBody(*body_, globals);
  } catch (const RaisedError& error) {
    return absl::InvalidArgumentError(error.message);
  } catch (const TemplateError& error) {
    return absl::InvalidArgumentError(absl::StrCat(source_name_, ":", error.line, ": ", error.message));
  } catch (const std::exception& error) {  // a builtin given a value of the wrong type
    return absl::InvalidArgumentError(absl::StrCat(source_name_, ": ", error.what()));
  }
}

}  // namespace mf::jinja
