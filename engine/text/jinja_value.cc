#include "engine/text/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"

namespace mf::jinja {
namespace {

void AppendHexEscape(std::string& out, const char* prefix, unsigned code, int digits) {
  char buffer[8];
  std::snprintf(buffer, sizeof(buffer), "%0*x", digits, code);
  absl::StrAppend(&out, prefix, buffer);
}

// Python's json string encoding with ensure_ascii=False: only quotes, backslashes and
// control characters are escaped.
void AppendJsonString(std::string& out, const std::string& text) {
  out += '"';
  for (const char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          AppendHexEscape(out, "\\u", static_cast<unsigned char>(c), 4);
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

std::string StringRepr(const std::string& text) {
  const bool has_single = text.find('\'') != std::string::npos;
  const char quote = has_single && text.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, quote);
  for (const char c : text) {
    if (c == quote || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      AppendHexEscape(out, "\\x", static_cast<unsigned char>(c), 2);
    } else {
      out += c;
    }
  }
  return out + quote;
}

void AppendNewlineIndent(std::string& out, int indent, int depth) {
  out += '\n';
  out.append(static_cast<size_t>(indent * depth), ' ');
}

}  // namespace

std::string FloatRepr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buffer[64];
  const auto [end, error] = std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::scientific);
  const std::string scientific(buffer, end);  // e.g. "-1.25e+02": the shortest round-trip digits
  const size_t e = scientific.find('e');
  const bool negative = scientific[0] == '-';
  std::string digits;
  for (size_t i = negative ? 1 : 0; i < e; ++i) {
    if (scientific[i] != '.') digits += scientific[i];
  }
  const int exponent = std::stoi(scientific.substr(e + 1));
  std::string out = negative ? "-" : "";
  if (exponent < -4 || exponent >= 16) {  // Python's repr switches to exponent form here
    out += digits[0];
    if (digits.size() > 1) absl::StrAppend(&out, ".", digits.substr(1));
    char exponent_text[16];
    std::snprintf(exponent_text, sizeof(exponent_text), "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    return out + exponent_text;
  }
  if (exponent < 0) return absl::StrCat(out, "0.", std::string(static_cast<size_t>(-exponent - 1), '0'), digits);
  const size_t integer_digits = static_cast<size_t>(exponent) + 1;
  if (digits.size() <= integer_digits) {
    return absl::StrCat(out, digits, std::string(integer_digits - digits.size(), '0'), ".0");
  }
  return absl::StrCat(out, digits.substr(0, integer_digits), ".", digits.substr(integer_digits));
}

Value::Value(List list) {
  for (const Value& item : list) depth_ = std::max(depth_, item.depth_);
  if (++depth_ > kMaxDepth) throw TemplateError{absl::StrCat("values nest deeper than ", kMaxDepth, " levels")};
  data_ = std::make_shared<List>(std::move(list));
}

Value::Value(Dict dict) {
  for (const auto& [key, item] : dict) depth_ = std::max(depth_, item.depth_);
  if (++depth_ > kMaxDepth) throw TemplateError{absl::StrCat("values nest deeper than ", kMaxDepth, " levels")};
  data_ = std::make_shared<Dict>(std::move(dict));
}

Value Value::FromJson(const nlohmann::ordered_json& json) {
  switch (json.type()) {
    case nlohmann::ordered_json::value_t::null: return Value(nullptr);
    case nlohmann::ordered_json::value_t::boolean: return Value(json.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value(json.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const uint64_t value = json.get<uint64_t>();
      return value <= INT64_MAX ? Value(static_cast<int64_t>(value)) : Value(static_cast<double>(value));
    }
    case nlohmann::ordered_json::value_t::number_float: return Value(json.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value(json.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List list;
      for (const auto& item : json) list.push_back(FromJson(item));
      return Value(std::move(list));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict dict;
      for (const auto& [key, item] : json.items()) dict.emplace_back(key, FromJson(item));
      return Value(std::move(dict));
    }
    default: return Value();
  }
}

Value Value::Get(const std::string& key) const {
  const Dict* entries = is_dict() ? &dict() : is_namespace() ? &namespace_attributes() : nullptr;
  if (entries == nullptr) return Value();
  for (const auto& [name, value] : *entries) {
    if (name == key) return value;
  }
  return Value();
}

void Value::Set(const std::string& key, Value value) const {
  Dict& entries = is_dict() ? dict() : namespace_attributes();
  for (auto& [name, existing] : entries) {
    if (name == key) {
      existing = std::move(value);
      return;
    }
  }
  entries.emplace_back(key, std::move(value));
}

bool Value::Truthy() const {
  if (is_undefined() || is_none()) return false;
  if (is_bool()) return as_bool();
  if (is_int()) return as_int() != 0;
  if (is_float()) return as_double() != 0.0;
  if (is_string()) return !as_string().empty();
  if (is_list()) return !list().empty();
  if (is_dict()) return !dict().empty();
  return true;
}

std::string Value::Str() const {
  if (is_undefined()) return "";
  if (is_string()) return as_string();
  return Repr();
}

std::string Value::Repr() const {
  if (is_undefined()) return "Undefined";
  if (is_none()) return "None";
  if (is_bool()) return as_bool() ? "True" : "False";
  if (is_int()) return std::to_string(as_int());
  if (is_float()) return FloatRepr(as_double());
  if (is_string()) return StringRepr(as_string());
  if (is_namespace()) return "<Namespace>";
  std::string out;
  if (is_list()) {
    out = "[";
    for (size_t i = 0; i < list().size(); ++i) absl::StrAppend(&out, i ? ", " : "", list()[i].Repr());
    return out + "]";
  }
  out = "{";
  for (size_t i = 0; i < dict().size(); ++i) {
    absl::StrAppend(&out, i ? ", " : "", StringRepr(dict()[i].first), ": ", dict()[i].second.Repr());
  }
  return out + "}";
}

std::string Value::TypeName() const {
  if (is_undefined()) return "undefined";
  if (is_none()) return "NoneType";
  if (is_bool()) return "bool";
  if (is_int()) return "int";
  if (is_float()) return "float";
  if (is_string()) return "str";
  if (is_list()) return "list";
  if (is_dict()) return "dict";
  return "Namespace";
}

std::string Value::ToJson(int indent) const {
  std::string out;
  AppendJson(out, indent, 0);
  return out;
}

void Value::AppendJson(std::string& out, int indent, int depth) const {
  if (is_undefined() || is_namespace()) {
    throw TemplateError{absl::StrCat("tojson: a value of type ", TypeName(), " is not JSON serializable")};
  }
  if (is_none()) {
    out += "null";
  } else if (is_bool()) {
    out += as_bool() ? "true" : "false";
  } else if (is_float() && !std::isfinite(as_double())) {
    out += std::isnan(as_double()) ? "NaN" : as_double() > 0 ? "Infinity" : "-Infinity";
  } else if (is_int() || is_float()) {
    out += Repr();
  } else if (is_string()) {
    AppendJsonString(out, as_string());
  } else {
    const bool is_array = is_list();
    const size_t size = is_array ? list().size() : dict().size();
    out += is_array ? '[' : '{';
    for (size_t i = 0; i < size; ++i) {
      if (i > 0) out += indent >= 0 ? "," : ", ";
      if (indent >= 0) AppendNewlineIndent(out, indent, depth + 1);
      if (is_array) {
        list()[i].AppendJson(out, indent, depth + 1);
      } else {
        AppendJsonString(out, dict()[i].first);
        out += ": ";
        dict()[i].second.AppendJson(out, indent, depth + 1);
      }
    }
    if (indent >= 0 && size > 0) AppendNewlineIndent(out, indent, depth);
    out += is_array ? ']' : '}';
  }
}

bool operator==(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.data_.index() != b.data_.index()) return false;
  if (a.is_undefined() || a.is_none()) return true;
  if (a.is_string()) return a.as_string() == b.as_string();
  if (a.is_list()) return a.list() == b.list();
  if (a.is_dict()) return a.dict() == b.dict();
  return &a.namespace_attributes() == &b.namespace_attributes();
}

}  // namespace mf::jinja
