#include "server/model_flags.h"

#include <array>
#include <filesystem>
#include <system_error>

#include "absl/flags/flag.h"
#include "engine/model_loader.h"

ABSL_FLAG(std::string, model, "",
          "Checkpoint directory (config.json + safetensors [+ tokenizer]); default: the built-in demo model");
ABSL_FLAG(std::string, random_weights, "", "A config.json: use a model of its shape with random weights instead");
ABSL_FLAG(uint64_t, seed, 0, "Seed for --random-weights");
ABSL_FLAG(std::string, device, "cpu", "Backend: cpu, cuda or cuda:N");
ABSL_FLAG(std::string, precision, "auto",
          "CUDA numerics: bf16, or exact (fp32-accurate activations and KV cache); auto: bf16 on CUDA (the CPU "
          "backend is always fp32)");
ABSL_FLAG(int64_t, kv_cache_mb, 0, "KV cache memory in MiB (0: --kv-cache-fraction 0.9 on CUDA, 512 MiB on the CPU)");
ABSL_FLAG(double, kv_cache_fraction, 0,
          "KV cache as this fraction of free memory after the weights (overrides --kv-cache-mb when > 0)");
ABSL_FLAG(int32_t, kv_cache_blocks, 0, "KV cache size in blocks (overrides --kv-cache-mb when > 0)");
ABSL_FLAG(int32_t, block_size, 16, "KV cache block size in tokens");
ABSL_FLAG(std::string, check_weights, "auto",
          "Refuse to load NaN or infinite weights: true, false, or auto (checked for models of up to 2 GiB)");

namespace mf {

namespace fs = std::filesystem;

constexpr double kDefaultGpuCacheFraction = 0.9;
constexpr int64_t kDefaultCpuCacheBytes = int64_t{512} << 20;

std::string DefaultModelDir() {
  const fs::path exe_dir = ExecutableDir();
  // A build tree (build/ or build/<subdir>/), an installed prefix (bin/ -> share/), the source tree.
  const std::array<fs::path, 4> candidates = {
      exe_dir / "../models/demo", exe_dir / "../../models/demo",
      exe_dir / "../share/moduleformer/models/demo", fs::path(MF_SOURCE_DIR) / "models/demo"};
  for (const fs::path& candidate : candidates) {
    std::error_code error;
    if (fs::exists(candidate / "config.json", error)) return fs::weakly_canonical(candidate, error).string();
  }
  return "";
}

ModelSource ModelSourceFromFlags() {
  ModelSource source;
  source.model_dir = absl::GetFlag(FLAGS_model);
  if (source.model_dir.empty() && absl::GetFlag(FLAGS_random_weights).empty()) source.model_dir = DefaultModelDir();
  source.random_config = absl::GetFlag(FLAGS_random_weights);
  source.seed = absl::GetFlag(FLAGS_seed);
  source.device = absl::GetFlag(FLAGS_device);
  const bool on_gpu = source.device.rfind("cuda", 0) == 0;
  source.precision = absl::GetFlag(FLAGS_precision);
  if (source.precision == "auto") source.precision = on_gpu ? "bf16" : "exact";
  source.cache.block_size = absl::GetFlag(FLAGS_block_size);
  source.cache.memory_bytes = absl::GetFlag(FLAGS_kv_cache_mb) << 20;
  source.cache.num_blocks = absl::GetFlag(FLAGS_kv_cache_blocks);
  source.cache.memory_fraction = absl::GetFlag(FLAGS_kv_cache_fraction);
  // No size given: most of a GPU (as vLLM's gpu_memory_utilization), a modest share of a host's RAM.
  if (source.cache.memory_bytes <= 0 && source.cache.num_blocks <= 0 && source.cache.memory_fraction <= 0) {
    if (on_gpu) {
      source.cache.memory_fraction = kDefaultGpuCacheFraction;
    } else {
      source.cache.memory_bytes = kDefaultCpuCacheBytes;
    }
  }
  source.check_weights = absl::GetFlag(FLAGS_check_weights);
  return source;
}

}  // namespace mf
