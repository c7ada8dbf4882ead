// Client authentication by API key: requests carry `authorization: Bearer KEY` (gRPC
// metadata, or the HTTP header) and are refused UNAUTHENTICATED otherwise. Keys are
// held only as SHA-256 digests and compared in constant time, so neither timing nor a
// memory dump of a log line gives one away; nothing here logs a key.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace mf::server {

class ApiKeys {
 public:
  // One key a line; blank lines and lines starting with '#' are skipped. An empty or
  // unreadable file is an error (a server asked to check keys must not run open).
  static absl::StatusOr<ApiKeys> Load(const std::string& path);
  static ApiKeys FromKeys(const std::vector<std::string>& keys);

  // Whether an `authorization` header value ("Bearer KEY") names a known key.
  bool Allows(std::string_view authorization) const;
  size_t size() const { return digests_.size(); }

 private:
  using Digest = std::array<uint8_t, 32>;
  std::vector<Digest> digests_;
};

}  // namespace mf::server
