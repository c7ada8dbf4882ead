#include "engine/text/jinja_builtins.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <ctime>
#include <functional>
#include <map>

#include "absl/strings/str_cat.h"
#include "engine/text/jinja_python.h"

namespace mf::jinja {
namespace {

constexpr int64_t kMaxRangeLength = 100000;

[[noreturn]] void Fail(const std::string& message) { throw TemplateError{message}; }

}  // namespace

bool CompareValues(const Value& a, const Value& b, const std::string& op) {
  if (op == "==") return a == b;
  if (op == "!=") return !(a == b);
  int order;
  if (a.is_number() && b.is_number()) {
    order = a.as_double() < b.as_double() ? -1 : a.as_double() > b.as_double() ? 1 : 0;
  } else if (a.is_string() && b.is_string()) {
    order = a.as_string().compare(b.as_string());
  } else {
    Fail(absl::StrCat("'", op, "' is not supported between ", a.TypeName(), " and ", b.TypeName()));
  }
  if (op == "<") return order < 0;
  if (op == "<=") return order <= 0;
  if (op == ">") return order > 0;
  return order >= 0;
}

namespace {

using FilterFunction = std::function<Value(const Value&, const Arguments&)>;
using TestFunction = std::function<bool(const Value&, const Arguments&)>;

const std::map<std::string, TestFunction>& Tests() {
  static const auto* tests = new std::map<std::string, TestFunction>{
      {"defined", [](const Value& v, const Arguments&) { return !v.is_undefined(); }},
      {"undefined", [](const Value& v, const Arguments&) { return v.is_undefined(); }},
      {"none", [](const Value& v, const Arguments&) { return v.is_none(); }},
      {"string", [](const Value& v, const Arguments&) { return v.is_string(); }},
      {"number", [](const Value& v, const Arguments&) { return v.is_int() || v.is_float(); }},
      {"integer", [](const Value& v, const Arguments&) { return v.is_int(); }},
      {"float", [](const Value& v, const Arguments&) { return v.is_float(); }},
      {"boolean", [](const Value& v, const Arguments&) { return v.is_bool(); }},
      {"true", [](const Value& v, const Arguments&) { return v.is_bool() && v.as_bool(); }},
      {"false", [](const Value& v, const Arguments&) { return v.is_bool() && !v.as_bool(); }},
      {"mapping", [](const Value& v, const Arguments&) { return v.is_dict(); }},
      {"iterable", [](const Value& v, const Arguments&) { return v.is_list() || v.is_dict() || v.is_string(); }},
      {"sequence", [](const Value& v, const Arguments&) { return v.is_list() || v.is_dict() || v.is_string(); }},
      {"odd", [](const Value& v, const Arguments&) { return v.is_int() && v.as_int() % 2 != 0; }},
      {"even", [](const Value& v, const Arguments&) { return v.is_int() && v.as_int() % 2 == 0; }},
      {"divisibleby", [](const Value& v, const Arguments& a) {
         const Value divisor = a.Get(0, "num", Value());
         if (!divisor.is_int() || divisor.as_int() == 0) Fail("divisibleby needs a non-zero integer");
         return v.is_int() && v.as_int() % divisor.as_int() == 0;
       }},
      {"lower", [](const Value& v, const Arguments&) { return v.is_string() && Lower(v.as_string()) == v.as_string(); }},
      {"upper", [](const Value& v, const Arguments&) { return v.is_string() && Upper(v.as_string()) == v.as_string(); }},
      {"in", [](const Value& v, const Arguments& a) {
         const Value container = a.Get(0, "seq", Value());
         if (container.is_string()) return v.is_string() && container.as_string().find(v.as_string()) != std::string::npos;
         const List items = ToList(container);
         return std::find(items.begin(), items.end(), v) != items.end();
       }},
  };
  return *tests;
}

// Comparison tests under all the names Jinja gives them.
bool ComparisonTest(const std::string& name, const Value& value, const Arguments& arguments) {
  static const std::map<std::string, std::string> kOperators = {
      {"eq", "=="}, {"equalto", "=="}, {"==", "=="}, {"sameas", "=="}, {"ne", "!="}, {"!=", "!="}, {"lt", "<"},
      {"lessthan", "<"}, {"<", "<"}, {"le", "<="}, {"<=", "<="}, {"gt", ">"}, {"greaterthan", ">"}, {">", ">"},
      {"ge", ">="}, {">=", ">="}};
  return CompareValues(value, arguments.Get(0, "other", Value()), kOperators.at(name));
}
bool IsComparisonTest(const std::string& name) {
  static const char* const kNames[] = {"eq", "equalto", "==", "sameas", "ne", "!=", "lt", "lessthan", "<", "le", "<=",
                                       "gt", "greaterthan", ">", "ge", ">="};
  return std::find(std::begin(kNames), std::end(kNames), name) != std::end(kNames);
}

// selectattr / rejectattr: items whose attribute passes the test (truthiness by default).
Value SelectAttribute(const Value& value, const Arguments& arguments, bool keep_passing) {
  const std::string attribute = RequireString(arguments.Get(0, "attribute", Value()), "selectattr's attribute");
  Arguments test_arguments;
  for (size_t i = 2; i < arguments.positional.size(); ++i) test_arguments.positional.push_back(arguments.positional[i]);
  List kept;
  for (const Value& item : ToList(value)) {
    const Value field = item.Get(attribute);
    const bool passes = arguments.positional.size() < 2
                            ? field.Truthy()
                            : ApplyTest(RequireString(arguments.positional[1], "selectattr's test"), field, test_arguments);
    if (passes == keep_passing) kept.push_back(item);
  }
  return Value(std::move(kept));
}

const std::map<std::string, FilterFunction>& Filters() {
  static const auto* filters = new std::map<std::string, FilterFunction>{
      {"trim", [](const Value& v, const Arguments& a) { return Value(Strip(RequireString(v, "trim"), a.Get(0, "chars", Value()), true, true)); }},
      {"length", [](const Value& v, const Arguments&) { return Value(Length(v)); }},
      {"count", [](const Value& v, const Arguments&) { return Value(Length(v)); }},
      {"tojson", [](const Value& v, const Arguments& a) {
         const Value indent = a.Get(0, "indent", Value(nullptr));
         return Value(v.ToJson(indent.is_int() ? static_cast<int>(indent.as_int()) : -1));
       }},
      {"upper", [](const Value& v, const Arguments&) { return Value(Upper(RequireString(v, "upper"))); }},
      {"lower", [](const Value& v, const Arguments&) { return Value(Lower(RequireString(v, "lower"))); }},
      {"capitalize", [](const Value& v, const Arguments&) { return Value(Capitalize(RequireString(v, "capitalize"))); }},
      {"title", [](const Value& v, const Arguments&) { return Value(JinjaTitle(RequireString(v, "title"))); }},
      {"string", [](const Value& v, const Arguments&) { return Value(v.Str()); }},
      {"safe", [](const Value& v, const Arguments&) { return v; }},
      {"int", [](const Value& v, const Arguments& a) {
         if (v.is_float() && !(std::abs(v.as_double()) < 9.2e18)) Fail("int: the value does not fit 64 bits");
         if (v.is_number()) return Value(v.is_float() ? static_cast<int64_t>(v.as_double()) : v.as_int());
         try { return Value(static_cast<int64_t>(std::stoll(v.Str()))); } catch (...) { return a.Get(0, "default", Value(0)); }
       }},
      {"float", [](const Value& v, const Arguments& a) {
         if (v.is_number()) return Value(v.as_double());
         try { return Value(std::stod(v.Str())); } catch (...) { return a.Get(0, "default", Value(0.0)); }
       }},
      {"abs", [](const Value& v, const Arguments&) {
         if (v.is_float()) return Value(std::abs(v.as_double()));
         if (v.is_number() && v.as_int() == INT64_MIN) Fail("integer overflow");
         if (v.is_number()) return Value(v.as_int() < 0 ? -v.as_int() : v.as_int());
         Fail(absl::StrCat("abs needs a number, got ", v.TypeName()));
       }},
      {"first", [](const Value& v, const Arguments&) { List items = ToList(v); return items.empty() ? Value() : items.front(); }},
      {"last", [](const Value& v, const Arguments&) { List items = ToList(v); return items.empty() ? Value() : items.back(); }},
      {"list", [](const Value& v, const Arguments&) { return Value(ToList(v)); }},
      {"items", [](const Value& v, const Arguments&) { return v.is_undefined() ? Value(List{}) : Items(v); }},
      {"reverse", [](const Value& v, const Arguments&) {
         List items = ToList(v);
         std::reverse(items.begin(), items.end());
         if (!v.is_string()) return Value(std::move(items));
         std::string text;
         for (const Value& c : items) text += c.as_string();
         return Value(std::move(text));
       }},
      {"join", [](const Value& v, const Arguments& a) {
         const std::string separator = a.Get(0, "d", Value("")).Str();
         const Value attribute = a.Get(1, "attribute", Value(nullptr));
         std::string out;
         bool first = true;
         for (const Value& item : ToList(v)) {
           absl::StrAppend(&out, first ? "" : separator, attribute.is_string() ? item.Get(attribute.as_string()).Str() : item.Str());
           first = false;
         }
         return Value(std::move(out));
       }},
      {"default", [](const Value& v, const Arguments& a) {
         const bool boolean = a.Get(1, "boolean", Value(false)).Truthy();
         return (v.is_undefined() || (boolean && !v.Truthy())) ? a.Get(0, "default_value", Value("")) : v;
       }},
      {"replace", [](const Value& v, const Arguments& a) {
         return Value(Replace(RequireString(v, "replace"), RequireString(a.Get(0, "old", Value()), "replace"),
                              RequireString(a.Get(1, "new", Value()), "replace"), a.Get(2, "count", Value(-1)).as_int()));
       }},
      {"selectattr", [](const Value& v, const Arguments& a) { return SelectAttribute(v, a, true); }},
      {"rejectattr", [](const Value& v, const Arguments& a) { return SelectAttribute(v, a, false); }},
      {"map", [](const Value& v, const Arguments& a) {
         const Value attribute = a.Get(SIZE_MAX, "attribute", Value(nullptr));  // keyword only
         List mapped;
         for (const Value& item : ToList(v)) {
           if (attribute.is_string()) {
             mapped.push_back(item.Get(attribute.as_string()));
           } else {
             Arguments rest;
             rest.positional.assign(a.positional.begin() + (a.positional.empty() ? 0 : 1), a.positional.end());
             mapped.push_back(ApplyFilter(RequireString(a.Get(0, "filter", Value()), "map's filter"), item, rest));
           }
         }
         return Value(std::move(mapped));
       }},
      {"dictsort", [](const Value& v, const Arguments&) {
         List items = Items(v).list();
         std::stable_sort(items.begin(), items.end(), [](const Value& x, const Value& y) {
           return x.list()[0].as_string() < y.list()[0].as_string();
         });
         return Value(std::move(items));
       }},
  };
  return *filters;
}

const std::map<std::string, FilterFunction>& Functions() {
  static const auto* functions = new std::map<std::string, FilterFunction>{
      {"raise_exception", [](const Value&, const Arguments& a) -> Value { throw RaisedError{a.Get(0, "message", Value()).Str()}; }},
      {"namespace", [](const Value&, const Arguments& a) {
         Dict attributes;
         if (!a.positional.empty() && a.positional[0].is_dict()) attributes = a.positional[0].dict();
         for (const auto& [name, value] : a.keywords) attributes.emplace_back(name, value);
         return Value::MakeNamespace(std::move(attributes));
       }},
      {"dict", [](const Value&, const Arguments& a) {
         Dict entries(a.keywords.begin(), a.keywords.end());
         return Value(std::move(entries));
       }},
      {"range", [](const Value&, const Arguments& a) {
         for (const Value& bound : a.positional) {
           if (!bound.is_int()) Fail("range() needs integers");
         }
         if (a.positional.empty() || a.positional.size() > 3) Fail("range() takes 1 to 3 arguments");
         const int64_t start = a.positional.size() > 1 ? a.positional[0].as_int() : 0;
         const int64_t stop = a.positional.size() > 1 ? a.positional[1].as_int() : a.positional[0].as_int();
         const int64_t step = a.positional.size() > 2 ? a.positional[2].as_int() : 1;
         if (step == 0) Fail("range() step must not be zero");
         List values;
         for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
           if (static_cast<int64_t>(values.size()) >= kMaxRangeLength) Fail("range() longer than 100000");
           values.emplace_back(i);
           if (__builtin_add_overflow(i, step, &i)) break;
         }
         return Value(std::move(values));
       }},
      {"strftime_now", [](const Value&, const Arguments& a) {
         const std::time_t now = std::time(nullptr);
         std::tm local{};
         localtime_r(&now, &local);
         char buffer[256];
         const size_t length = std::strftime(buffer, sizeof(buffer), RequireString(a.Get(0, "format", Value()), "strftime_now").c_str(), &local);
         return Value(std::string(buffer, length));
       }},
  };
  return *functions;
}

}  // namespace

Value Arguments::Get(size_t index, const char* name, const Value& fallback) const {
  if (index < positional.size()) return positional[index];
  for (const auto& [keyword, value] : keywords) {
    if (keyword == name) return value;
  }
  return fallback;
}


bool IsKnownFilter(const std::string& name) { return Filters().contains(name) || name == "d"; }
bool IsKnownTest(const std::string& name) { return Tests().contains(name) || IsComparisonTest(name); }
bool IsKnownFunction(const std::string& name) { return Functions().contains(name); }

Value ApplyFilter(const std::string& name, const Value& value, const Arguments& arguments) {
  const auto found = Filters().find(name == "d" ? "default" : name);
  if (found == Filters().end()) Fail(absl::StrCat("unknown filter '", name, "'"));
  return found->second(value, arguments);
}

bool ApplyTest(const std::string& name, const Value& value, const Arguments& arguments) {
  if (IsComparisonTest(name)) return ComparisonTest(name, value, arguments);
  const auto found = Tests().find(name);
  if (found == Tests().end()) Fail(absl::StrCat("unknown test '", name, "'"));
  return found->second(value, arguments);
}

Value CallFunction(const std::string& name, const Arguments& arguments) {
  const auto found = Functions().find(name);
  if (found == Functions().end()) Fail(absl::StrCat("unknown function '", name, "'"));
  return found->second(Value(), arguments);
}


}  // namespace mf::jinja
