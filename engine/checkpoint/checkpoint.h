// A checkpoint directory: config.json plus one or several safetensors shards.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/checkpoint/config.h"
#include "engine/checkpoint/safetensors.h"

namespace mf {

class Checkpoint {
 public:
  // Opens `dir/config.json` and either `dir/model.safetensors.index.json` (sharded)
  // or `dir/model.safetensors`. Every shard is mapped and validated up front.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const ModelConfig& config() const { return config_; }
  const std::string& dir() const { return dir_; }
  bool Has(const std::string& name) const { return tensors_.count(name) != 0; }
  // Every tensor of every shard, sorted by name.
  std::vector<std::string> TensorNames() const {
    std::vector<std::string> names;
    for (const auto& [name, tensor] : tensors_) names.push_back(name);
    return names;
  }
  // The tensor, or NotFound naming it and the checkpoint directory.
  absl::StatusOr<const TensorView*> Find(const std::string& name) const;
  // The tensor, checked to have exactly `shape` and a floating dtype.
  absl::StatusOr<const TensorView*> FindWeight(const std::string& name,
                                               const std::vector<int64_t>& shape) const;

 private:
  absl::Status AddShard(const std::string& file_name);

  std::string dir_;
  ModelConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, const TensorView*> tensors_;
};

std::string ShapeToString(const std::vector<int64_t>& shape);

}  // namespace mf
