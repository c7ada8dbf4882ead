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
#include "server/model_flags.h"
#include "tools/moduleformer/commands.h"


namespace mf::cli {

std::vector<std::string>& PositionalArguments() {
  static std::vector<std::string> arguments;
  return arguments;
}

absl::StatusOr<std::unique_ptr<Model>> LoadModelFromFlags() { return LoadModel(ModelSourceFromFlags()); }

}  // namespace mf::cli

namespace {

constexpr char kUsage[] =
    "moduleformer <command> [flags]\n"
    "commands:\n"
    "  verify   --model DIR --cases FILE      check logits, routing and greedy tokens against reference cases\n"
    "  generate [--model DIR] \"text\" --max-new-tokens N   greedy generation on a local model, prints text\n"
    "  generate [--model DIR] --prompt-ids 1,2,3   the same from token ids, prints new token ids\n"
    "  generate --server HOST:PORT \"text\" [--prompt-ids ...]   stream a completion from a running server\n"
    "  tokenize --tokenizer DIR [--decode]   text on stdin -> JSON ids (or JSON ids -> text)\n"
    "  expert-stats --server HOST:PORT [--tag T] [--reset] [--json]   expert selection counts of a server\n"
    "  convert --model SRC --out DST [--shard-size-mb 5000]   a PyTorch checkpoint directory to safetensors\n"
    "  eval (--model DIR | --server HOST:PORT) --text-file FILE [--context N --stride S]   perplexity of a text\n"
    "  prune --model DIR --stats STATS.json --out DIR (--keep-mlp F --keep-attention F | --min-share S) [--random SEED]\n"
    "           a checkpoint with the experts the statistics show in use\n"
    "  chat-template [--model DIR] [--chat-template FILE] < messages.json   the prompt a chat request renders to\n"
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
  if (command == "convert") return mf::cli::RunConvert();
  if (command == "chat-template") return mf::cli::RunChatTemplate();
  if (command == "eval") return mf::cli::RunEval();
  if (command == "prune") return mf::cli::RunPrune();
  std::fprintf(stderr, "unknown command '%s'\n%s\n", command.c_str(), kUsage);
  return 2;
}
