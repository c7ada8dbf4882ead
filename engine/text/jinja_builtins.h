// Jinja's built-in filters, tests and global functions, limited to what chat templates
// use (string and dict methods: jinja_python.h). All throw TemplateError on misuse.
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

// Python's comparison operators (== != < <= > >=) on numbers and strings.
bool CompareValues(const Value& a, const Value& b, const std::string& op);

}  // namespace mf::jinja
