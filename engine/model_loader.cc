#include "engine/model_loader.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/base/host_memory.h"
#include "engine/base/status_macros.h"
#include "engine/cpu/cpu_backend.h"

namespace mf {

std::filesystem::path ExecutableDir() {
  std::error_code error;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", error);
  return error ? std::filesystem::path() : exe.parent_path();
}

namespace {

// The CUDA backend lives in libmf_cuda_backend.so beside the executable (or at
// $MF_CUDA_BACKEND), so that binaries load CUDA and cuBLAS only when asked to.
absl::StatusOr<std::unique_ptr<Backend>> LoadCudaBackend(int device, bool bf16) {
  std::string path;
  if (const char* override_path = std::getenv("MF_CUDA_BACKEND")) {
    path = override_path;
  } else {
    // Beside the executable, or one level up (build/bench/ tools use build/'s plugin).
    const std::filesystem::path exe_dir = ExecutableDir();
    path = (exe_dir / "libmf_cuda_backend.so").string();
    if (!std::filesystem::exists(path)) path = (exe_dir.parent_path() / "libmf_cuda_backend.so").string();
  }
  // Never closed: backend objects and their vtables live in the library.
  void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) return absl::FailedPreconditionError(absl::StrCat("--device cuda: ", dlerror()));
  using Factory = Backend* (*)(int, int, char*, size_t);
  auto factory = reinterpret_cast<Factory>(dlsym(library, "mf_create_cuda_backend"));
  if (factory == nullptr) return absl::FailedPreconditionError(absl::StrCat("--device cuda: ", path, ": ", dlerror()));
  char error[512] = {};
  Backend* backend = factory(device, bf16 ? 1 : 0, error, sizeof(error));
  if (backend == nullptr) return absl::FailedPreconditionError(absl::StrCat("--device cuda: ", error));
  return std::unique_ptr<Backend>(backend);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& device, const std::string& precision) {
  if (precision != "exact" && precision != "bf16") {
    return absl::InvalidArgumentError(absl::StrCat("--precision: '", precision, "' is not exact or bf16"));
  }
  if (device == "cpu") return MakeCpuBackend();
  if (device == "cuda") return LoadCudaBackend(0, precision == "bf16");
  if (device.rfind("cuda:", 0) == 0) return LoadCudaBackend(std::atoi(device.c_str() + 5), precision == "bf16");
  return absl::InvalidArgumentError(absl::StrCat("--device: unknown backend '", device, "' (cpu, cuda, cuda:N)"));
}

absl::StatusOr<std::unique_ptr<Model>> LoadModel(const ModelSource& source) {
  if (source.model_dir.empty() && source.random_config.empty()) {
    return absl::InvalidArgumentError(
        "no model: give --model DIR or --random-weights CONFIG (the built-in models/demo was not found)");
  }
  if (!source.model_dir.empty() && !source.random_config.empty()) {
    return absl::InvalidArgumentError("give only one of --model DIR or --random-weights CONFIG");
  }
  if (source.check_weights != "auto" && source.check_weights != "true" && source.check_weights != "false") {
    return absl::InvalidArgumentError(
        absl::StrCat("--check-weights: '", source.check_weights, "' is not auto, true or false"));
  }
  MF_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, MakeBackend(source.device, source.precision));
  ModelWeights weights;
  if (!source.model_dir.empty()) {
    MF_ASSIGN_OR_RETURN(weights, LoadWeights(source.model_dir));
  } else {
    MF_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(source.random_config));
    // Random weights are made in host memory, as bf16.
    MF_ASSIGN_OR_RETURN(const int64_t parameters, ParameterCount(config));
    const int64_t host_bytes = parameters * 2;
    if (const int64_t available = HostAvailableBytes(); host_bytes > available) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "--random-weights %s: %d parameters need %.1f GiB of host memory as bf16; %.1f GiB are available",
          source.random_config, parameters, static_cast<double>(host_bytes) / (1 << 30),
          static_cast<double>(available) / (1 << 30)));
    }
    weights = RandomWeights(config, source.seed);
  }
  const bool check = source.check_weights == "true" ||
                     (source.check_weights == "auto" && TotalWeightBytes(weights) <= kAutoCheckWeightBytes);
  if (check) MF_RETURN_IF_ERROR(CheckWeightsFinite(weights));
  return Model::Create(weights, std::move(backend), source.cache);
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

absl::Status CheckTokenizerFitsModel(const Tokenizer& tokenizer, const ModelConfig& config) {
  if (tokenizer.vocab_size() <= config.vocab_size) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("the tokenizer's largest id is ", tokenizer.vocab_size() - 1,
                                                    " but the model's vocab_size is ", config.vocab_size,
                                                    ": they do not belong together (check --tokenizer)"));
}

}  // namespace mf
