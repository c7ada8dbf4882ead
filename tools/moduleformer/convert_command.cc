// `moduleformer convert --model SRC --out DST`: a PyTorch checkpoint directory (one
// pytorch_model.bin, or shards listed by pytorch_model.bin.index.json) to safetensors
// (model.safetensors, or shards with model.safetensors.index.json above --shard-size-mb),
// plus config.json and the tokenizer files. Tensors keep names, dtypes and values.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/checkpoint/torch_checkpoint.h"
#include "nlohmann/json.hpp"
#include "tools/moduleformer/commands.h"

ABSL_DECLARE_FLAG(std::string, model);
ABSL_FLAG(std::string, out, "", "convert: directory to write the safetensors checkpoint to");
ABSL_FLAG(int64_t, shard_size_mb, 5000, "convert: largest output shard; a larger model is split into shards");

namespace mf::cli {
namespace {

namespace fs = std::filesystem;

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
  return 1;
}

// The input shards, in order: from the index's weight map, or the single file.
absl::StatusOr<std::vector<fs::path>> InputFiles(const fs::path& source) {
  const fs::path index = source / "pytorch_model.bin.index.json";
  if (!fs::exists(index)) {
    if (fs::exists(source / "pytorch_model.bin")) return std::vector<fs::path>{source / "pytorch_model.bin"};
    return absl::NotFoundError(absl::StrCat(source.string(), ": no pytorch_model.bin or pytorch_model.bin.index.json"));
  }
  std::ifstream file(index);
  const nlohmann::json doc = nlohmann::json::parse(file, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object() || !doc.contains("weight_map") || !doc["weight_map"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index.string(), ": no weight_map object"));
  }
  std::set<std::string> names;
  for (const auto& [tensor, shard] : doc["weight_map"].items()) {
    const std::string name = shard.is_string() ? shard.get<std::string>() : "";
    if (name.empty() || name.find('/') != std::string::npos || name.rfind("..", 0) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(index.string(), ": tensor '", tensor, "' names a bad shard"));
    }
    names.insert(name);
  }
  std::vector<fs::path> files;
  for (const std::string& name : names) files.push_back(source / name);
  return files;
}

absl::Status WriteShards(const std::vector<TensorToWrite>& tensors, const fs::path& out, size_t shard_bytes) {
  std::vector<std::vector<const TensorToWrite*>> shards(1);
  size_t current = 0, total = 0;
  for (const TensorToWrite& tensor : tensors) {
    if (current > 0 && current + tensor.bytes.size() > shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(&tensor);
    current += tensor.bytes.size();
    total += tensor.bytes.size();
  }
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string name = shards.size() == 1 ? "model.safetensors"
                                                : absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards.size());
    std::vector<TensorToWrite> shard;
    for (const TensorToWrite* tensor : shards[i]) {
      shard.push_back(*tensor);
      weight_map[tensor->name] = name;
    }
    if (absl::Status written = WriteSafetensors((out / name).string(), shard); !written.ok()) return written;
    std::fprintf(stderr, "convert: wrote %s (%zu tensors)\n", name.c_str(), shard.size());
  }
  if (shards.size() > 1) {
    const nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    std::ofstream((out / "model.safetensors.index.json").string()) << index.dump(2) << "\n";
  }
  return absl::OkStatus();
}

}  // namespace

int RunConvert() {
  const fs::path source = absl::GetFlag(FLAGS_model), out = absl::GetFlag(FLAGS_out);
  if (source.empty() || out.empty()) return Fail(absl::InvalidArgumentError("convert needs --model SRC and --out DST"));
  if (fs::weakly_canonical(source) == fs::weakly_canonical(out)) {
    return Fail(absl::InvalidArgumentError("--out must differ from --model"));
  }
  absl::StatusOr<std::vector<fs::path>> inputs = InputFiles(source);
  if (!inputs.ok()) return Fail(inputs.status());
  std::vector<TensorToWrite> tensors;
  std::set<std::string> seen;
  for (size_t i = 0; i < inputs->size(); ++i) {
    const fs::path& input = (*inputs)[i];
    std::fprintf(stderr, "convert: reading %s (%zu/%zu, %.1f MB)\n", input.filename().c_str(), i + 1, inputs->size(),
                 fs::exists(input) ? static_cast<double>(fs::file_size(input)) / 1e6 : 0.0);
    absl::StatusOr<std::vector<TensorToWrite>> read = ReadTorchCheckpoint(input.string());
    if (!read.ok()) return Fail(read.status());
    for (TensorToWrite& tensor : *read) {
      if (!seen.insert(tensor.name).second) {
        return Fail(absl::InvalidArgumentError(absl::StrCat(input.string(), ": tensor '", tensor.name, "' appears twice")));
      }
      tensors.push_back(std::move(tensor));
    }
  }
  std::error_code error;
  fs::create_directories(out, error);
  if (error) return Fail(absl::InternalError(absl::StrCat(out.string(), ": ", error.message())));
  const size_t shard_bytes = static_cast<size_t>(std::max<int64_t>(1, absl::GetFlag(FLAGS_shard_size_mb))) << 20;
  if (absl::Status written = WriteShards(tensors, out, shard_bytes); !written.ok()) return Fail(written);
  for (const char* name : {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                           "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json"}) {
    if (fs::exists(source / name)) fs::copy_file(source / name, out / name, fs::copy_options::overwrite_existing);
  }
  std::fprintf(stderr, "convert: %zu tensors from %zu file(s) into %s\n", tensors.size(), inputs->size(),
               out.c_str());
  return 0;
}

}  // namespace mf::cli
