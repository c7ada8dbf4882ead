// `moduleformer prune`: a smaller checkpoint keeping, in every layer, the experts that
// expert statistics (`moduleformer expert-stats --json`) show a task uses: the paper's
// task-specific pruning. Expert tensors keep the kept experts' slices, routers keep their
// rows (the router's softmax then runs over the kept experts only, as in the paper); the
// loader reads the per-layer counts from the tensor shapes. pruning.json records what
// was kept and why.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <random>
#include <set>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"
#include "engine/checkpoint/checkpoint.h"
#include "nlohmann/json.hpp"
#include "server/model_flags.h"
#include "tools/moduleformer/commands.h"

ABSL_DECLARE_FLAG(std::string, out);  // convert's: the directory to write
ABSL_FLAG(std::string, stats, "", "Expert statistics JSON, as `moduleformer expert-stats --json` prints it");
ABSL_FLAG(double, keep_mlp, 1.0, "Fraction of MLP experts kept per layer (the most used), at least k_mlp");
ABSL_FLAG(double, keep_attention, 1.0, "Fraction of attention experts kept per layer, at least k_att");
ABSL_FLAG(double, min_share, -1, "Instead of fractions: keep experts whose count is at least this share of "
                                 "their layer's largest (the paper's threshold on f_m)");
ABSL_FLAG(int64_t, random, -1, "Keep as many experts as the statistics would, chosen at random with this seed");

namespace mf::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct MixtureNames {
  const char* stats_key;  // "attention" / "mlp" in the statistics
  std::vector<std::string> expert_tensors;  // [E, ...]: sliced along dim 0
  std::string router;                       // w_gate.3.weight [E, gating_size]: rows kept
};

MixtureNames NamesOf(int layer, bool attention) {
  const std::string prefix = absl::StrCat("transformer.h.", layer, attention ? ".attn.q_proj." : ".mlpf.");
  return {attention ? "attention" : "mlp",
          {prefix + "experts.weight", prefix + "output_experts.weight"},
          prefix + "gate.w_gate.3.weight"};
}

// The experts of one mixture to keep, ascending, chosen from `counts`.
std::vector<int> ChooseExperts(const std::vector<uint64_t>& counts, int top_k, double keep_fraction,
                               std::mt19937_64* random) {
  const int num_experts = static_cast<int>(counts.size());
  std::vector<int> order(static_cast<size_t>(num_experts));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return counts[static_cast<size_t>(a)] > counts[static_cast<size_t>(b)]; });
  int num_kept;
  const double min_share = absl::GetFlag(FLAGS_min_share);
  if (min_share >= 0) {
    const double largest = static_cast<double>(counts[static_cast<size_t>(order[0])]);
    num_kept = static_cast<int>(std::count_if(counts.begin(), counts.end(), [&](uint64_t count) {
      return static_cast<double>(count) >= min_share * largest;
    }));
  } else {
    num_kept = static_cast<int>(std::ceil(keep_fraction * num_experts - 1e-9));
  }
  num_kept = std::clamp(num_kept, top_k, num_experts);
  if (random != nullptr) std::shuffle(order.begin(), order.end(), *random);
  std::vector<int> kept(order.begin(), order.begin() + num_kept);
  std::sort(kept.begin(), kept.end());
  return kept;
}

// Rows `kept` of a tensor whose first dimension indexes experts.
TensorToWrite KeepRows(const TensorView& tensor, const std::vector<int>& kept) {
  TensorToWrite out{tensor.name, tensor.dtype, tensor.shape, {}};
  const size_t row_bytes = tensor.num_bytes / static_cast<size_t>(tensor.shape[0]);
  out.shape[0] = static_cast<int64_t>(kept.size());
  out.bytes.reserve(row_bytes * kept.size());
  const auto* data = static_cast<const uint8_t*>(tensor.data);
  for (const int expert : kept) out.bytes.insert(out.bytes.end(), data + row_bytes * expert, data + row_bytes * (expert + 1));
  return out;
}

TensorToWrite Copy(const TensorView& tensor) {
  const auto* data = static_cast<const uint8_t*>(tensor.data);
  return {tensor.name, tensor.dtype, tensor.shape, std::vector<uint8_t>(data, data + tensor.num_bytes)};
}

absl::StatusOr<json> ReadJson(const std::string& path, const char* flag) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) return absl::NotFoundError(absl::StrCat(flag, ": ", text.status().message()));
  json parsed = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, " is not JSON"));
  return parsed;
}

// The statistics' counts of one layer's mixture, checked against the checkpoint.
absl::StatusOr<std::vector<uint64_t>> CountsOf(const json& stats, int layer, const char* mixture, int64_t num_experts) {
  const json* found = nullptr;
  if (stats.contains("layers") && stats["layers"].is_array()) {
    for (const json& entry : stats["layers"]) {
      if (entry.value("layer", -1) == layer) found = &entry;
    }
  }
  if (found == nullptr || !found->contains(mixture) || !(*found)[mixture].contains("counts")) {
    return absl::InvalidArgumentError(absl::StrCat("--stats: no ", mixture, " counts for layer ", layer));
  }
  const json& counts = (*found)[mixture]["counts"];
  if (!counts.is_array() || static_cast<int64_t>(counts.size()) != num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("--stats: layer ", layer, " ", mixture, " has ", counts.size(),
                                                   " counts; the checkpoint has ", num_experts, " experts"));
  }
  std::vector<uint64_t> values;
  for (const json& count : counts) {
    if (!count.is_number_unsigned() && !(count.is_number_integer() && count.get<int64_t>() >= 0)) {
      return absl::InvalidArgumentError(absl::StrCat("--stats: layer ", layer, " ", mixture, " counts must be integers"));
    }
    values.push_back(count.get<uint64_t>());
  }
  return values;
}

absl::Status Prune(const std::string& model_dir, const std::string& out_dir) {
  MF_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(model_dir));
  MF_ASSIGN_OR_RETURN(const json stats, ReadJson(absl::GetFlag(FLAGS_stats), "--stats"));
  const ModelConfig& config = checkpoint->config();
  std::optional<std::mt19937_64> random;
  if (absl::GetFlag(FLAGS_random) >= 0) random.emplace(static_cast<uint64_t>(absl::GetFlag(FLAGS_random)));
  std::vector<TensorToWrite> tensors;
  std::set<std::string> pruned_names;
  json kept_by_layer = json::array();
  for (int layer = 0; layer < static_cast<int>(config.n_layer); ++layer) {
    json layer_record = {{"layer", layer}};
    for (const bool attention : {true, false}) {
      const MixtureNames names = NamesOf(layer, attention);
      MF_ASSIGN_OR_RETURN(const TensorView* router, checkpoint->Find(names.router));
      MF_ASSIGN_OR_RETURN(const std::vector<uint64_t> counts, CountsOf(stats, layer, names.stats_key, router->shape[0]));
      const int top_k = static_cast<int>(attention ? config.k_att : config.k_mlp);
      const double fraction = absl::GetFlag(attention ? FLAGS_keep_attention : FLAGS_keep_mlp);
      const std::vector<int> kept = ChooseExperts(counts, top_k, fraction, random ? &*random : nullptr);
      layer_record[names.stats_key] = kept;
      for (const std::string& name : names.expert_tensors) {
        MF_ASSIGN_OR_RETURN(const TensorView* tensor, checkpoint->Find(name));
        tensors.push_back(KeepRows(*tensor, kept));
        pruned_names.insert(name);
      }
      tensors.push_back(KeepRows(*router, kept));
      pruned_names.insert(names.router);
    }
    kept_by_layer.push_back(std::move(layer_record));
  }
  for (const std::string& name : checkpoint->TensorNames()) {
    if (pruned_names.contains(name)) continue;
    MF_ASSIGN_OR_RETURN(const TensorView* tensor, checkpoint->Find(name));
    tensors.push_back(Copy(*tensor));
  }
  fs::create_directories(out_dir);
  MF_RETURN_IF_ERROR(WriteSafetensors((fs::path(out_dir) / "model.safetensors").string(), tensors));
  fs::copy_file(fs::path(model_dir) / "config.json", fs::path(out_dir) / "config.json", fs::copy_options::overwrite_existing);
  for (const char* file : {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                           "added_tokens.json", "chat_template.jinja"}) {
    if (fs::exists(fs::path(model_dir) / file)) {
      fs::copy_file(fs::path(model_dir) / file, fs::path(out_dir) / file, fs::copy_options::overwrite_existing);
    }
  }
  const json record = {
      {"source_model", fs::absolute(model_dir).lexically_normal().string()},
      {"statistics", {{"file", absl::GetFlag(FLAGS_stats)}, {"tokens", stats.value("tokens", json(0))},
                      {"stats_tag", stats.value("stats_tag", json(""))}}},
      {"rule", absl::GetFlag(FLAGS_min_share) >= 0
                   ? json{{"min_share", absl::GetFlag(FLAGS_min_share)}}
                   : json{{"keep_mlp", absl::GetFlag(FLAGS_keep_mlp)}, {"keep_attention", absl::GetFlag(FLAGS_keep_attention)}}},
      {"random_seed", random ? json(absl::GetFlag(FLAGS_random)) : json(nullptr)},
      {"kept_experts", kept_by_layer}};
  std::ofstream(fs::path(out_dir) / "pruning.json") << record.dump(2) << "\n";
  return absl::OkStatus();
}

}  // namespace

int RunPrune() {
  const std::string model_dir = ModelSourceFromFlags().model_dir;
  const std::string out_dir = absl::GetFlag(FLAGS_out);
  if (absl::GetFlag(FLAGS_stats).empty() || out_dir.empty()) {
    std::fprintf(stderr, "error: prune needs --stats STATS.json and --out DIR\n");
    return 2;
  }
  for (const double fraction : {absl::GetFlag(FLAGS_keep_mlp), absl::GetFlag(FLAGS_keep_attention)}) {
    if (!(fraction > 0 && fraction <= 1)) {
      std::fprintf(stderr, "error: --keep-mlp and --keep-attention are fractions in (0, 1]\n");
      return 2;
    }
  }
  if (fs::exists(out_dir) && fs::equivalent(out_dir, model_dir)) {
    std::fprintf(stderr, "error: --out must differ from --model\n");
    return 2;
  }
  if (absl::Status status = Prune(model_dir, out_dir); !status.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  std::printf("pruned checkpoint written to %s (see pruning.json)\n", out_dir.c_str());
  return 0;
}

}  // namespace mf::cli
