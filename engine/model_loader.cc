#include "engine/model_loader.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "engine/cpu_backend.h"
#include "engine/status_macros.h"

namespace mf {

absl::StatusOr<std::unique_ptr<Model>> LoadModel(const ModelSource& source) {
  if (source.model_dir.empty() == source.random_config.empty()) {
    return absl::InvalidArgumentError("give exactly one of --model DIR or --random-weights CONFIG");
  }
  if (source.device != "cpu") {
    return absl::InvalidArgumentError(absl::StrCat("--device: unknown backend '", source.device, "' (available: cpu)"));
  }
  ModelWeights weights;
  if (!source.model_dir.empty()) {
    MF_ASSIGN_OR_RETURN(weights, LoadWeights(source.model_dir));
  } else {
    MF_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(source.random_config));
    weights = RandomWeights(config, source.seed);
  }
  return Model::Create(weights, MakeCpuBackend(), source.cache);
}

absl::StatusOr<std::shared_ptr<const Tokenizer>> LoadTokenizerIfPresent(const std::string& tokenizer_dir,
                                                                        const std::string& model_dir) {
  namespace fs = std::filesystem;
  std::string dir = tokenizer_dir;
  if (dir.empty() && !model_dir.empty() &&
      (fs::exists(fs::path(model_dir) / "tokenizer.json") || fs::exists(fs::path(model_dir) / "vocab.json"))) {
    dir = model_dir;
  }
  if (dir.empty()) return std::shared_ptr<const Tokenizer>();
  MF_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::Load(dir));
  return std::shared_ptr<const Tokenizer>(std::move(tokenizer));
}

}  // namespace mf
