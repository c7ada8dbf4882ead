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
#include "engine/base/status_macros.h"
#include "engine/checkpoint/torch_checkpoint.h"
#include "nlohmann/json.hpp"
#include "tools/moduleformer/commands.h"

ABSL_DECLARE_FLAG(std::string, model);
ABSL_FLAG(std::string, out, "", "convert: directory to write the safetensors checkpoint to");
ABSL_FLAG(double, shard_size_mb, 5000, "convert: largest output shard in MB; a larger model is split into shards");

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

// Writes shards as tensors arrive, so memory holds one input file and one shard, not
// the model; shards get their final names (which need their count) once all are written.
class ShardWriter {
 public:
  ShardWriter(fs::path out, size_t shard_bytes) : out_(std::move(out)), shard_bytes_(shard_bytes) {}

  absl::Status Add(TensorToWrite tensor) {
    if (pending_bytes_ > 0 && pending_bytes_ + tensor.bytes.size() > shard_bytes_) MF_RETURN_IF_ERROR(Flush());
    pending_bytes_ += tensor.bytes.size();
    total_bytes_ += tensor.bytes.size();
    pending_.push_back(std::move(tensor));
    return absl::OkStatus();
  }

  absl::Status Finish() {
    if (!pending_.empty() || shards_.empty()) MF_RETURN_IF_ERROR(Flush());
    nlohmann::json weight_map = nlohmann::json::object();
    for (size_t i = 0; i < shards_.size(); ++i) {
      const std::string name = shards_.size() == 1
                                   ? "model.safetensors"
                                   : absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards_.size());
      std::error_code error;
      fs::rename(out_ / TemporaryName(i), out_ / name, error);
      if (error) return absl::InternalError(absl::StrCat((out_ / name).string(), ": ", error.message()));
      for (const std::string& tensor : shards_[i]) weight_map[tensor] = name;
    }
    if (shards_.size() > 1) {
      const nlohmann::json index = {{"metadata", {{"total_size", total_bytes_}}}, {"weight_map", weight_map}};
      std::ofstream((out_ / "model.safetensors.index.json").string()) << index.dump(2) << "\n";
    }
    return absl::OkStatus();
  }

  static std::string TemporaryName(size_t index) { return absl::StrFormat("model-%05d.safetensors.partial", index + 1); }

  // Removes the shards written so far: a failed conversion leaves nothing behind.
  void Abandon() {
    std::error_code ignored;
    for (size_t i = 0; i < shards_.size(); ++i) fs::remove(out_ / TemporaryName(i), ignored);
  }

 private:
  absl::Status Flush() {
    std::error_code error;
    fs::create_directories(out_, error);
    if (error) return absl::InternalError(absl::StrCat(out_.string(), ": ", error.message()));
    const std::string name = TemporaryName(shards_.size());
    MF_RETURN_IF_ERROR(WriteSafetensors((out_ / name).string(), pending_));
    std::fprintf(stderr, "convert: wrote shard %zu (%zu tensors, %.1f MB)\n", shards_.size() + 1, pending_.size(),
                 static_cast<double>(pending_bytes_) / 1e6);
    shards_.emplace_back();
    for (const TensorToWrite& tensor : pending_) shards_.back().push_back(tensor.name);
    pending_.clear();
    pending_bytes_ = 0;
    return absl::OkStatus();
  }

  fs::path out_;
  size_t shard_bytes_;
  std::vector<TensorToWrite> pending_;
  size_t pending_bytes_ = 0, total_bytes_ = 0;
  std::vector<std::vector<std::string>> shards_;  // tensor names, per shard written
};

}  // namespace

int RunConvert() {
  const fs::path source = absl::GetFlag(FLAGS_model), out = absl::GetFlag(FLAGS_out);
  if (source.empty() || out.empty()) return Fail(absl::InvalidArgumentError("convert needs --model SRC and --out DST"));
  if (fs::weakly_canonical(source) == fs::weakly_canonical(out)) {
    return Fail(absl::InvalidArgumentError("--out must differ from --model"));
  }
  absl::StatusOr<std::vector<fs::path>> inputs = InputFiles(source);
  if (!inputs.ok()) return Fail(inputs.status());
  const size_t shard_bytes = static_cast<size_t>(std::max(0.0, absl::GetFlag(FLAGS_shard_size_mb)) * (1 << 20));
  ShardWriter writer(out, shard_bytes);
  std::set<std::string> seen;
  for (size_t i = 0; i < inputs->size(); ++i) {
    const fs::path& input = (*inputs)[i];
    std::fprintf(stderr, "convert: reading %s (%zu/%zu, %.1f MB)\n", input.filename().c_str(), i + 1, inputs->size(),
                 fs::exists(input) ? static_cast<double>(fs::file_size(input)) / 1e6 : 0.0);
    absl::StatusOr<std::vector<TensorToWrite>> read = ReadTorchCheckpoint(input.string());
    absl::Status status = read.status();
    for (size_t t = 0; status.ok() && t < read->size(); ++t) {
      TensorToWrite& tensor = (*read)[t];
      status = seen.insert(tensor.name).second
                   ? writer.Add(std::move(tensor))
                   : absl::InvalidArgumentError(absl::StrCat(input.string(), ": tensor '", tensor.name, "' appears twice"));
    }
    if (!status.ok()) {
      writer.Abandon();
      return Fail(status);
    }
  }
  if (absl::Status finished = writer.Finish(); !finished.ok()) {
    writer.Abandon();
    return Fail(finished);
  }
  for (const char* name : {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                           "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json"}) {
    if (fs::exists(source / name)) fs::copy_file(source / name, out / name, fs::copy_options::overwrite_existing);
  }
  std::fprintf(stderr, "convert: %zu tensors from %zu file(s) into %s\n", seen.size(), inputs->size(),
               out.c_str());
  return 0;
}

}  // namespace mf::cli
