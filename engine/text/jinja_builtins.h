// Jinja's built-in filters, tests and global functions, and the Python str/dict/list
// methods chat templates call, limited to what chat templates use. All throw
// TemplateError on misuse.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "engine/text/jinja_value.h"

namespace mf::jinja {

struct Arguments {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keywords;

  // The argument at `index`, or the keyword `name`, or `fallback`.
  Value Get(size_t index, const char* name, const Value& fallback) const;
};

// Raised by raise_exception(): its message is the template author's, shown as is.
struct RaisedError {
  std::string message;
};

bool IsKnownFilter(const std::string& name);
bool IsKnownTest(const std::string& name);
bool IsKnownFunction(const std::string& name);

Value ApplyFilter(const std::string& name, const Value& value, const Arguments& arguments);
bool ApplyTest(const std::string& name, const Value& value, const Arguments& arguments);
Value CallFunction(const std::string& name, const Arguments& arguments);
Value CallMethod(const Value& object, const std::string& name, const Arguments& arguments);

// Python's comparison operators (== != < <= > >=) on numbers and strings.
bool CompareValues(const Value& a, const Value& b, const std::string& op);

// Code-point helpers shared with the renderer (Python strings index code points).
std::vector<std::string> CodePoints(const std::string& text);

}  // namespace mf::jinja
