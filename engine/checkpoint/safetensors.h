// A memory-mapped safetensors file with a fully validated header.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/checkpoint/dtype.h"

namespace mf {

// A tensor stored in a checkpoint; `data` points into the mapped file.
struct TensorView {
  std::string name;
  std::string file;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t num_bytes = 0;

  int64_t num_elements() const;
};

class SafetensorsFile {
 public:
  // Maps `path` read-only and validates the header: its length, JSON form, dtypes,
  // shapes, and that data offsets are in range, sized to the shape and disjoint.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile(std::string path, void* mapping, size_t mapping_size)
      : path_(std::move(path)), mapping_(mapping), mapping_size_(mapping_size) {}
  absl::Status ParseHeader();

  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Writes a safetensors file (used by tests and tools that produce checkpoints).
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors);

}  // namespace mf
