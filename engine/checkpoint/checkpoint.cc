#include "engine/checkpoint/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace mf {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

absl::StatusOr<std::set<std::string>> ReadShardIndex(const fs::path& index_path,
                                                     std::map<std::string, std::string>* weight_map) {
  std::ifstream file(index_path);
  if (!file) return absl::NotFoundError(absl::StrCat(index_path.string(), ": cannot open"));
  std::stringstream text;
  text << file.rdbuf();
  json index = json::parse(text.str(), nullptr, false);
  if (index.is_discarded() || !index.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": malformed JSON"));
  }
  auto map_it = index.find("weight_map");
  if (map_it == index.end() || !map_it->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": missing 'weight_map' object"));
  }
  std::set<std::string> shard_files;
  for (const auto& [tensor, shard] : map_it->items()) {
    if (!shard.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path.string(), ": weight_map entry for '", tensor, "' is not a file name"));
    }
    const std::string shard_name = shard.get<std::string>();
    if (shard_name.find('/') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": shard '", shard_name,
                                                     "' for tensor '", tensor, "' is not a plain file name"));
    }
    (*weight_map)[tensor] = shard_name;
    shard_files.insert(shard_name);
  }
  return shard_files;
}

}  // namespace

std::string ShapeToString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  auto checkpoint = std::unique_ptr<Checkpoint>(new Checkpoint());
  checkpoint->dir_ = dir;
  const fs::path root(dir);
  if (!fs::is_directory(root)) return absl::NotFoundError(absl::StrCat(dir, ": not a directory"));
  MF_ASSIGN_OR_RETURN(checkpoint->config_, LoadModelConfig((root / "config.json").string()));

  const fs::path index_path = root / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    std::map<std::string, std::string> weight_map;
    MF_ASSIGN_OR_RETURN(std::set<std::string> shard_files, ReadShardIndex(index_path, &weight_map));
    for (const std::string& shard : shard_files) MF_RETURN_IF_ERROR(checkpoint->AddShard(shard));
    for (const auto& [tensor, shard] : weight_map) {
      auto it = checkpoint->tensors_.find(tensor);
      if (it == checkpoint->tensors_.end() || fs::path(it->second->file).filename() != shard) {
        return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": tensor '", tensor,
                                                       "' is listed in shard '", shard, "' but not stored there"));
      }
    }
  } else if (fs::exists(root / "model.safetensors")) {
    MF_RETURN_IF_ERROR(checkpoint->AddShard("model.safetensors"));
  } else if (fs::exists(root / "pytorch_model.bin") || fs::exists(root / "pytorch_model.bin.index.json")) {
    const std::string converted = fs::path(dir).lexically_normal().string();
    return absl::FailedPreconditionError(absl::StrCat(
        dir, ": only PyTorch pickle weights found; convert them to safetensors with: moduleformer convert --model ",
        converted, " --out ", converted.back() == '/' ? converted.substr(0, converted.size() - 1) : converted,
        "-safetensors"));
  } else {
    return absl::NotFoundError(absl::StrCat(dir, ": no model.safetensors or model.safetensors.index.json"));
  }
  return checkpoint;
}

absl::Status Checkpoint::AddShard(const std::string& file_name) {
  MF_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> shard,
                      SafetensorsFile::Open((fs::path(dir_) / file_name).string()));
  for (const auto& [name, view] : shard->tensors()) {
    if (!tensors_.emplace(name, &view).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(shard->path(), ": tensor '", name, "' is also stored in ", tensors_[name]->file));
    }
  }
  shards_.push_back(std::move(shard));
  return absl::OkStatus();
}

absl::StatusOr<const TensorView*> Checkpoint::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat(dir_, ": missing tensor '", name, "'"));
  }
  return it->second;
}

absl::StatusOr<const TensorView*> Checkpoint::FindWeight(const std::string& name,
                                                         const std::vector<int64_t>& shape) const {
  MF_ASSIGN_OR_RETURN(const TensorView* view, Find(name));
  if (view->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(view->file, ": tensor '", name, "' has shape ",
                                                   ShapeToString(view->shape), ", expected ",
                                                   ShapeToString(shape)));
  }
  if (!IsFloatWeightType(view->dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(view->file, ": tensor '", name, "' has dtype ",
                                                   DTypeName(view->dtype), "; weights must be BF16, F16 or F32"));
  }
  return view;
}

}  // namespace mf
