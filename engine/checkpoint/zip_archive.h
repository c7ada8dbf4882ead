// A read-only, memory-mapped zip archive of stored (uncompressed) entries, as PyTorch
// writes checkpoints since 1.6. Only the central directory is trusted for the entry list;
// every entry's local header and data range is checked against the file. Compressed
// entries, encrypted ones and names that climb out of the archive (`..`, absolute paths)
// are refused with the entry's name.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace mf {

class ZipArchive {
 public:
  static absl::StatusOr<std::unique_ptr<ZipArchive>> Open(const std::string& path);
  ~ZipArchive();
  ZipArchive(const ZipArchive&) = delete;
  ZipArchive& operator=(const ZipArchive&) = delete;

  const std::string& path() const { return path_; }
  // Entry names and their bytes (views into the mapping, valid while the archive lives).
  const std::map<std::string, std::string_view>& entries() const { return entries_; }

 private:
  ZipArchive(std::string path, const uint8_t* data, size_t size) : path_(std::move(path)), data_(data), size_(size) {}
  absl::Status ReadDirectory();

  std::string path_;
  const uint8_t* data_;
  size_t size_;
  std::map<std::string, std::string_view> entries_;
};

}  // namespace mf
