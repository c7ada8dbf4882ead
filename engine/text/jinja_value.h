// Values of the Jinja subset that chat templates use: Python's None, bool, int, float,
// str, list and dict (string keys, insertion order), Jinja's Undefined, and namespace()
// objects. Lists, dicts and namespaces are shared and mutable, as in Python.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "nlohmann/json.hpp"

namespace mf::jinja {

class Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion order, like a Python dict

// A template's runtime error (or a parse error), with the template line it comes from.
struct TemplateError {
  std::string message;
  int line = 0;
};

class Value {
 public:
  struct Undefined {};
  struct Namespace {
    std::shared_ptr<Dict> attributes;
  };

  Value() : data_(Undefined{}) {}
  Value(std::nullptr_t) : data_(nullptr) {}
  Value(bool b) : data_(b) {}
  Value(int64_t i) : data_(i) {}
  Value(int i) : data_(static_cast<int64_t>(i)) {}
  Value(double d) : data_(d) {}
  Value(std::string s) : data_(std::move(s)) {}
  Value(const char* s) : data_(std::string(s)) {}
  // Lists and dicts nest at most kMaxDepth deep (TemplateError beyond): printing, comparing
  // and freeing values recurse, so a template or request cannot nest without bound.
  static constexpr int kMaxDepth = 128;
  Value(List list);
  Value(Dict dict);
  static Value MakeNamespace(Dict attributes) { return Value(Namespace{std::make_shared<Dict>(std::move(attributes))}); }
  // Ordered: a template sees object keys in the order the request wrote them, as Python does.
  static Value FromJson(const nlohmann::ordered_json& json);

  bool is_undefined() const { return std::holds_alternative<Undefined>(data_); }
  bool is_none() const { return std::holds_alternative<std::nullptr_t>(data_); }
  bool is_bool() const { return std::holds_alternative<bool>(data_); }
  bool is_int() const { return std::holds_alternative<int64_t>(data_); }
  bool is_float() const { return std::holds_alternative<double>(data_); }
  bool is_number() const { return is_int() || is_float() || is_bool(); }
  bool is_string() const { return std::holds_alternative<std::string>(data_); }
  bool is_list() const { return std::holds_alternative<std::shared_ptr<List>>(data_); }
  bool is_dict() const { return std::holds_alternative<std::shared_ptr<Dict>>(data_); }
  bool is_namespace() const { return std::holds_alternative<Namespace>(data_); }

  bool as_bool() const { return std::get<bool>(data_); }
  int64_t as_int() const { return is_bool() ? (as_bool() ? 1 : 0) : std::get<int64_t>(data_); }
  double as_double() const { return is_float() ? std::get<double>(data_) : static_cast<double>(as_int()); }
  const std::string& as_string() const { return std::get<std::string>(data_); }
  List& list() const { return *std::get<std::shared_ptr<List>>(data_); }
  Dict& dict() const { return *std::get<std::shared_ptr<Dict>>(data_); }
  Dict& namespace_attributes() const { return *std::get<Namespace>(data_).attributes; }

  // A dict's or namespace's entry; Undefined when absent.
  Value Get(const std::string& key) const;
  // Sets a dict's or namespace's entry, keeping the first insertion's position.
  void Set(const std::string& key, Value value) const;

  bool Truthy() const;              // Python's bool()
  std::string Str() const;          // Python's str(); Undefined is ""
  std::string Repr() const;         // Python's repr()
  std::string TypeName() const;     // for error messages
  // json.dumps(value, ensure_ascii=False, indent=indent) as Hugging Face's tojson filter
  // calls it; indent < 0 means none.
  std::string ToJson(int indent = -1) const;
  friend bool operator==(const Value& a, const Value& b);

 private:
  explicit Value(Namespace ns) : data_(std::move(ns)) {}
  void AppendJson(std::string& out, int indent, int depth) const;

  std::variant<Undefined, std::nullptr_t, bool, int64_t, double, std::string, std::shared_ptr<List>,
               std::shared_ptr<Dict>, Namespace>
      data_;
  int depth_ = 0;  // lists and dicts: 1 + the deepest element's depth
};

// Python's repr() of a float (shortest round trip, always with a '.' or exponent).
std::string FloatRepr(double value);

}  // namespace mf::jinja
