// Building a ready model from what a user names on the command line: a checkpoint
// directory or a config with random weights, a backend, a KV cache size.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model.h"
#include "engine/text/tokenizer.h"

namespace mf {

struct ModelSource {
  std::string model_dir;       // checkpoint directory, or
  std::string random_config;   // config.json for random weights
  uint64_t seed = 0;
  std::string device = "cpu";
  std::string precision = "exact";  // CUDA: exact (fp32-accurate) or bf16; the CPU backend is always fp32
  // Reject NaN or infinite weights at load: "true", "false", or "auto" (checked when the
  // weights take at most kAutoCheckWeightBytes).
  std::string check_weights = "auto";
  KvCacheOptions cache;
};

inline constexpr size_t kAutoCheckWeightBytes = size_t{2} << 30;

// The running executable's directory: plugins and the built-in model are found from it.
std::filesystem::path ExecutableDir();

// `device`: "cpu", "cuda" or "cuda:N"; `precision`: "exact" or "bf16" (engine/cuda/cuda_backend.h).
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& device, const std::string& precision);
absl::StatusOr<std::unique_ptr<Model>> LoadModel(const ModelSource& source);

// The tokenizer in `tokenizer_dir`, else in `model_dir`; null when neither has one.
absl::StatusOr<std::shared_ptr<const Tokenizer>> LoadTokenizerIfPresent(const std::string& tokenizer_dir,
                                                                        const std::string& model_dir);

// A tokenizer may serve a model only if every id it can produce is in the model's
// vocabulary (checkpoints often pad the vocabulary past the tokenizer's, never the reverse).
absl::Status CheckTokenizerFitsModel(const Tokenizer& tokenizer, const ModelConfig& config);

}  // namespace mf
