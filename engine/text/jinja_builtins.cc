#include "engine/text/jinja_builtins.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <ctime>
#include <cwctype>
#include <locale.h>
#include <functional>
#include <map>

#include "absl/strings/str_cat.h"
#include "engine/text/utf8.h"

namespace mf::jinja {
namespace {

constexpr int64_t kMaxRangeLength = 100000;

[[noreturn]] void Fail(const std::string& message) { throw TemplateError{message}; }

std::string RequireString(const Value& value, const std::string& what) {
  if (!value.is_string()) Fail(absl::StrCat(what, " needs a string, got ", value.TypeName()));
  return value.as_string();
}

bool IsWhitespace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Python's str.strip family: `chars` None strips whitespace.
std::string Strip(const std::string& text, const Value& chars, bool left, bool right) {
  auto strippable = [&](char c) { return chars.is_string() ? chars.as_string().find(c) != std::string::npos : IsWhitespace(c); };
  size_t begin = 0, end = text.size();
  while (left && begin < end && strippable(text[begin])) ++begin;
  while (right && end > begin && strippable(text[end - 1])) --end;
  return text.substr(begin, end - begin);
}

// Python's str.upper/lower/capitalize/title work on Unicode letters: the C.UTF-8 locale's
// simple case mappings (ASCII only, should a system lack that locale).
locale_t Utf8Locale() {
  static const locale_t locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(nullptr));
  return locale;
}
enum class Case { kUpper, kLower, kKeep };
uint32_t MapCase(uint32_t c, Case to) {
  if (to == Case::kKeep) return c;
  if (Utf8Locale() == nullptr) {
    if (c >= 0x80) return c;
    return static_cast<uint32_t>(to == Case::kUpper ? std::toupper(static_cast<int>(c)) : std::tolower(static_cast<int>(c)));
  }
  return static_cast<uint32_t>(to == Case::kUpper ? towupper_l(static_cast<wint_t>(c), Utf8Locale())
                                                  : towlower_l(static_cast<wint_t>(c), Utf8Locale()));
}
bool IsCased(uint32_t c) {
  if (Utf8Locale() == nullptr) return c < 0x80 && std::isalpha(static_cast<int>(c));
  return MapCase(c, Case::kUpper) != c || MapCase(c, Case::kLower) != c;
}

// Maps each code point; `choose(index, previous_is_cased)` picks the case of each.
template <typename Choose>
std::string MapCodePoints(const std::string& text, Choose choose) {
  std::string out;
  bool previous_is_cased = false;
  for (size_t pos = 0, index = 0; pos < text.size(); ++index) {
    const DecodedChar decoded = DecodeAt(text, pos);
    const bool valid = decoded.length > 1 || static_cast<unsigned char>(text[pos]) < 0x80;
    if (valid) {
      AppendUtf8(MapCase(decoded.code_point, choose(index, previous_is_cased)), &out);
      previous_is_cased = IsCased(decoded.code_point);
    } else {
      out += text[pos];  // a stray byte passes through
      previous_is_cased = false;
    }
    pos += static_cast<size_t>(decoded.length);
  }
  return out;
}

std::string Upper(const std::string& text) { return MapCodePoints(text, [](size_t, bool) { return Case::kUpper; }); }
std::string Lower(const std::string& text) { return MapCodePoints(text, [](size_t, bool) { return Case::kLower; }); }
std::string Capitalize(const std::string& text) {
  return MapCodePoints(text, [](size_t index, bool) { return index == 0 ? Case::kUpper : Case::kLower; });
}
// Python's str.title(): a cased letter after an uncased character starts a word.
std::string PythonTitle(const std::string& text) {
  return MapCodePoints(text, [](size_t, bool previous_is_cased) { return previous_is_cased ? Case::kLower : Case::kUpper; });
}
// Jinja's title filter: words begin after runs of whitespace, '-', '(', '{', '[' or '<';
// each word's first character upper case, the rest lower.
std::string JinjaTitle(const std::string& text) {
  auto separates = [](char c) { return IsWhitespace(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<'; };
  std::string out;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = pos;
    const bool is_separator = separates(text[pos]);
    while (end < text.size() && separates(text[end]) == is_separator) ++end;
    out += is_separator ? text.substr(pos, end - pos) : Capitalize(text.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

std::string Replace(const std::string& text, const std::string& old_text, const std::string& new_text, int64_t count) {
  if (old_text.empty()) Fail("replace() with an empty search string is not supported");
  std::string out;
  size_t pos = 0;
  for (int64_t done = 0; count < 0 || done < count; ++done) {
    const size_t found = text.find(old_text, pos);
    if (found == std::string::npos) break;
    absl::StrAppend(&out, text.substr(pos, found - pos), new_text);
    pos = found + old_text.size();
  }
  return out + text.substr(pos);
}

List Split(const std::string& text, const Value& separator, int64_t max_split) {
  List parts;
  if (separator.is_string()) {
    const std::string& sep = separator.as_string();
    if (sep.empty()) Fail("split() with an empty separator");
    size_t pos = 0;
    for (size_t found; (max_split < 0 || static_cast<int64_t>(parts.size()) < max_split) &&
                       (found = text.find(sep, pos)) != std::string::npos;
         pos = found + sep.size()) {
      parts.emplace_back(text.substr(pos, found - pos));
    }
    parts.emplace_back(text.substr(pos));
    return parts;
  }
  size_t pos = 0;
  while (true) {  // Python's whitespace split: runs of whitespace, no empty parts
    while (pos < text.size() && IsWhitespace(text[pos])) ++pos;
    if (pos >= text.size()) break;
    if (max_split >= 0 && static_cast<int64_t>(parts.size()) >= max_split) {
      parts.emplace_back(Strip(text.substr(pos), Value(), false, true));
      break;
    }
    size_t end = pos;
    while (end < text.size() && !IsWhitespace(text[end])) ++end;
    parts.emplace_back(text.substr(pos, end - pos));
    pos = end;
  }
  return parts;
}

bool AffixMatches(const std::string& text, const Value& affixes, bool at_start) {
  auto matches = [&](const Value& affix) {
    const std::string a = RequireString(affix, at_start ? "startswith()" : "endswith()");
    return a.size() <= text.size() && (at_start ? text.compare(0, a.size(), a) == 0
                                                : text.compare(text.size() - a.size(), a.size(), a) == 0);
  };
  if (affixes.is_list()) return std::any_of(affixes.list().begin(), affixes.list().end(), matches);
  return matches(affixes);
}

int64_t Length(const Value& value) {
  if (value.is_string()) return static_cast<int64_t>(CodePoints(value.as_string()).size());
  if (value.is_list()) return static_cast<int64_t>(value.list().size());
  if (value.is_dict()) return static_cast<int64_t>(value.dict().size());
  Fail(absl::StrCat("object of type ", value.TypeName(), " has no length"));
}

List ToList(const Value& value) {
  List items;
  if (value.is_list()) return value.list();
  if (value.is_dict()) {
    for (const auto& [key, item] : value.dict()) items.emplace_back(key);
  } else if (value.is_string()) {
    for (std::string& c : CodePoints(value.as_string())) items.emplace_back(std::move(c));
  } else if (!value.is_undefined()) {
    Fail(absl::StrCat("a value of type ", value.TypeName(), " is not iterable"));
  }
  return items;
}

Value Items(const Value& value) {
  if (!value.is_dict()) Fail(absl::StrCat("items() needs a dict, got ", value.TypeName()));
  List items;
  for (const auto& [key, item] : value.dict()) items.emplace_back(List{Value(key), item});
  return Value(std::move(items));
}

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

std::vector<std::string> CodePoints(const std::string& text) {
  std::vector<std::string> points;
  for (size_t pos = 0; pos < text.size();) {
    const int length = DecodeAt(text, pos).length;
    points.push_back(text.substr(pos, static_cast<size_t>(length)));
    pos += static_cast<size_t>(length);
  }
  return points;
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

Value CallMethod(const Value& object, const std::string& name, const Arguments& a) {
  if (object.is_string()) {
    const std::string& text = object.as_string();
    const Value chars = a.Get(0, "chars", Value(nullptr));
    if (name == "strip") return Value(Strip(text, chars, true, true));
    if (name == "lstrip") return Value(Strip(text, chars, true, false));
    if (name == "rstrip") return Value(Strip(text, chars, false, true));
    if (name == "startswith") return Value(AffixMatches(text, a.Get(0, "prefix", Value()), true));
    if (name == "endswith") return Value(AffixMatches(text, a.Get(0, "suffix", Value()), false));
    if (name == "upper" || name == "lower" || name == "capitalize") return ApplyFilter(name, object, {});
    if (name == "title") return Value(PythonTitle(text));
    if (name == "split") return Value(Split(text, a.Get(0, "sep", Value(nullptr)), a.Get(1, "maxsplit", Value(-1)).as_int()));
    if (name == "replace") return ApplyFilter("replace", object, a);
    if (name == "find") {
      const size_t found = text.find(RequireString(a.Get(0, "sub", Value()), "find()"));
      return Value(found == std::string::npos ? int64_t{-1} : static_cast<int64_t>(CodePoints(text.substr(0, found)).size()));
    }
  } else if (object.is_dict()) {
    if (name == "get") {
      const Value found = object.Get(RequireString(a.Get(0, "key", Value()), "get()"));
      return found.is_undefined() ? a.Get(1, "default", Value(nullptr)) : found;
    }
    if (name == "items") return Items(object);
    if (name == "keys") return Value(ToList(object));
    if (name == "values") {
      List values;
      for (const auto& [key, value] : object.dict()) values.push_back(value);
      return Value(std::move(values));
    }
  }
  Fail(absl::StrCat("'", object.TypeName(), "' object has no method '", name, "'"));
}

}  // namespace mf::jinja
