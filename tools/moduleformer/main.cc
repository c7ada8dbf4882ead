// `moduleformer`: verify a checkpoint against reference cases, or generate locally.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "engine/model_loader.h"
#include "server/command_line.h"
#include "tools/moduleformer/commands.h"

ABSL_FLAG(std::string, model, "", "Checkpoint directory (config.json + safetensors)");
ABSL_FLAG(std::string, random_weights, "", "Config file: build a model of that shape with random weights");
ABSL_FLAG(uint64_t, seed, 0, "Seed for --random-weights");
ABSL_FLAG(std::string, device, "cpu", "Backend: cpu, cuda or cuda:N");
ABSL_FLAG(std::string, precision, "exact", "CUDA numerics: exact (fp32-accurate activations and KV cache) or bf16");
ABSL_FLAG(int64_t, kv_cache_mb, 256, "KV cache size in MiB");
ABSL_FLAG(int32_t, block_size, 16, "KV cache block size in tokens");

namespace mf::cli {

std::vector<std::string>& PositionalArguments() {
  static std::vector<std::string> arguments;
  return arguments;
}

absl::StatusOr<std::unique_ptr<Model>> LoadModelFromFlags() {
  ModelSource source;
  source.model_dir = absl::GetFlag(FLAGS_model);
  source.random_config = absl::GetFlag(FLAGS_random_weights);
  source.seed = absl::GetFlag(FLAGS_seed);
  source.device = absl::GetFlag(FLAGS_device);
  source.precision = absl::GetFlag(FLAGS_precision);
  source.cache.block_size = absl::GetFlag(FLAGS_block_size);
  source.cache.memory_bytes = absl::GetFlag(FLAGS_kv_cache_mb) << 20;
  return LoadModel(source);
}

}  // namespace mf::cli

namespace {

constexpr char kUsage[] =
    "moduleformer <command> [flags]\n"
    "commands:\n"
    "  verify   --model DIR --cases FILE      check logits, routing and greedy tokens against reference cases\n"
    "  generate --model DIR --prompt-ids 1,2,3 --max-new-tokens N   greedy generation, prints new token ids\n"
    "  generate --server HOST:PORT \"text\" [--prompt-ids ...]   stream a completion from a running server\n"
    "  tokenize --tokenizer DIR [--decode]   text on stdin -> JSON ids (or JSON ids -> text)\n"
    "  expert-stats --server HOST:PORT [--tag T] [--reset] [--json]   expert selection counts of a server\n"
    "Use --random-weights CONFIG instead of --model for a random model of a config's shape.";

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  if (argc < 2 || std::strncmp(argv[1], "-", 1) == 0) {
    std::fprintf(stderr, "%s\n", kUsage);
    return 2;
  }
  const std::string command = argv[1];
  std::vector<char*> args(argv, argv + argc);
  args.erase(args.begin() + 1);
  mf::cli::PositionalArguments() = mf::ParseFlags(static_cast<int>(args.size()), args.data());

  if (command == "verify") return mf::cli::RunVerify();
  if (command == "generate") return mf::cli::RunGenerate();
  if (command == "tokenize") return mf::cli::RunTokenize();
  if (command == "expert-stats") return mf::cli::RunExpertStats();
  std::fprintf(stderr, "unknown command '%s'\n%s\n", command.c_str(), kUsage);
  return 2;
}
