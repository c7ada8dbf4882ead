// Python's str and dict semantics for templates (jinja_python.cc): what the filters,
// tests and methods of jinja_builtins.cc are built from. All throw TemplateError on misuse.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/text/jinja_value.h"

namespace mf::jinja {

struct Arguments;

std::string RequireString(const Value& value, const std::string& what);
// str.strip / lstrip / rstrip: `chars` None strips whitespace.
std::string Strip(const std::string& text, const Value& chars, bool left, bool right);
// str.upper / lower / capitalize / title, over Unicode letters (the C.UTF-8 locale's
// simple case mappings); JinjaTitle is Jinja's title filter, which words differently.
std::string Upper(const std::string& text);
std::string Lower(const std::string& text);
std::string Capitalize(const std::string& text);
std::string PythonTitle(const std::string& text);
std::string JinjaTitle(const std::string& text);
std::string Replace(const std::string& text, const std::string& old_text, const std::string& new_text, int64_t count);
List Split(const std::string& text, const Value& separator, int64_t max_split);
// str.startswith / endswith with one affix or a tuple (list) of them.
bool AffixMatches(const std::string& text, const Value& affixes, bool at_start);
int64_t Length(const Value& value);  // len(): code points of a string
List ToList(const Value& value);     // list(): a dict's keys, a string's characters
Value Items(const Value& value);     // dict.items() as [key, value] lists

// Python strings index code points: a string split into its characters (a stray byte of
// invalid UTF-8 is a character of its own).
std::vector<std::string> CodePoints(const std::string& text);

// object.name(arguments) for the str and dict methods templates use.
Value CallMethod(const Value& object, const std::string& name, const Arguments& arguments);

}  // namespace mf::jinja
