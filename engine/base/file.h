// Reading a whole file, for the small text files checkpoints and tools carry (configs,
// tokenizer files, templates, statistics).
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace mf {

// The file's bytes; NotFound naming the path when it cannot be opened.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

}  // namespace mf
