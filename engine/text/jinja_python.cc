// Python's str and dict semantics as templates see them: strip, split, replace, case
// mapping over Unicode letters, lengths in code points, iteration, and the methods
// templates call on strings and dicts.
#include "engine/text/jinja_python.h"

#include <locale.h>

#include <algorithm>
#include <cctype>
#include <cwctype>

#include "absl/strings/str_cat.h"
#include "engine/text/jinja_builtins.h"
#include "engine/text/utf8.h"

namespace mf::jinja {
namespace {

[[noreturn]] void Fail(const std::string& message) { throw TemplateError{message}; }

bool IsWhitespace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

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

}  // namespace

std::string RequireString(const Value& value, const std::string& what) {
  if (!value.is_string()) Fail(absl::StrCat(what, " needs a string, got ", value.TypeName()));
  return value.as_string();
}

// Python's str.strip family: `chars` None strips whitespace.
std::string Strip(const std::string& text, const Value& chars, bool left, bool right) {
  auto strippable = [&](char c) { return chars.is_string() ? chars.as_string().find(c) != std::string::npos : IsWhitespace(c); };
  size_t begin = 0, end = text.size();
  while (left && begin < end && strippable(text[begin])) ++begin;
  while (right && end > begin && strippable(text[end - 1])) --end;
  return text.substr(begin, end - begin);
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

std::vector<std::string> CodePoints(const std::string& text) {
  std::vector<std::string> points;
  for (size_t pos = 0; pos < text.size();) {
    const int length = DecodeAt(text, pos).length;
    points.push_back(text.substr(pos, static_cast<size_t>(length)));
    pos += static_cast<size_t>(length);
  }
  return points;
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
