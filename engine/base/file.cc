#include "engine/base/file.h"

#include <fstream>
#include <sstream>

namespace mf {

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(path + ": cannot open");
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

}  // namespace mf
