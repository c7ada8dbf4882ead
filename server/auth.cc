#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <cctype>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace mf::server {
namespace {

std::string_view Trim(std::string_view text) {
  const size_t begin = text.find_first_not_of(" \t\r\n");
  if (begin == std::string_view::npos) return {};
  return text.substr(begin, text.find_last_not_of(" \t\r\n") - begin + 1);
}

bool StartsWithBearer(std::string_view text) {
  constexpr std::string_view kScheme = "bearer ";
  if (text.size() < kScheme.size()) return false;
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(text[i])) != kScheme[i]) return false;
  }
  return true;
}

std::array<uint8_t, 32> Sha256(std::string_view text) {
  std::array<uint8_t, 32> digest{};
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest.data());
  return digest;
}

}  // namespace

absl::StatusOr<ApiKeys> ApiKeys::Load(const std::string& path) {
  std::ifstream file(path);
  if (!file) return absl::NotFoundError(absl::StrCat("--api-key-file ", path, ": cannot read it"));
  std::vector<std::string> keys;
  std::string line;
  while (std::getline(file, line)) {
    const std::string_view key = Trim(line);
    if (key.empty() || key.front() == '#') continue;
    keys.emplace_back(key);
  }
  if (keys.empty()) return absl::InvalidArgumentError(absl::StrCat("--api-key-file ", path, ": holds no key"));
  return FromKeys(keys);
}

ApiKeys ApiKeys::FromKeys(const std::vector<std::string>& keys) {
  ApiKeys result;
  for (const std::string& key : keys) result.digests_.push_back(Sha256(key));
  return result;
}

bool ApiKeys::Allows(std::string_view authorization) const {
  if (!StartsWithBearer(authorization)) return false;
  const std::string_view key = Trim(authorization.substr(7));
  if (key.empty()) return false;
  // Digests have one length whatever the key's, and every key is compared in full.
  const std::array<uint8_t, 32> offered = Sha256(key);
  bool allowed = false;
  for (const std::array<uint8_t, 32>& digest : digests_) {
    allowed |= CRYPTO_memcmp(digest.data(), offered.data(), digest.size()) == 0;
  }
  return allowed;
}

}  // namespace mf::server
