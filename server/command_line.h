// Command-line helpers shared by the server and the CLI.
#pragma once

#include <string>
#include <vector>

namespace mf {

// Flags are spelled with dashes on the command line (--max-new-tokens) and with
// underscores in code; Abseil knows only the latter. Rewrites the names, not values.
std::vector<std::string> NormalizeFlagNames(int argc, char** argv);

// Parses flags (after normalising their names); returns the positional arguments.
std::vector<std::string> ParseFlags(int argc, char** argv);

}  // namespace mf
