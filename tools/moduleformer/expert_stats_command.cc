// `moduleformer expert-stats --server HOST:PORT`: per-layer expert selection counts
// and frequencies (count / layer maximum), as a table or JSON.
#include <grpcpp/grpcpp.h>

#include <cstdio>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "moduleformer/v1/moduleformer.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tools/moduleformer/commands.h"

ABSL_DECLARE_FLAG(std::string, server);
ABSL_FLAG(std::string, tag, "", "Only requests that carried this stats_tag");
ABSL_FLAG(bool, reset, false, "Reset the counts after reading them");
ABSL_FLAG(bool, json, false, "Print JSON instead of a table");

namespace mf::cli {
namespace {

namespace pb = moduleformer::v1;

void PrintTable(const pb::ExpertStatsResponse& stats) {
  std::printf("%llu tokens over %.1f s%s%s\n", static_cast<unsigned long long>(stats.tokens()),
              stats.seconds_since_reset(), stats.stats_tag().empty() ? "" : ", tag ", stats.stats_tag().c_str());
  std::printf("%-6s %-10s %-7s %-12s %s\n", "layer", "mixture", "expert", "count", "frequency");
  for (const pb::LayerExpertStats& layer : stats.layers()) {
    for (const auto& [name, mixture] : {std::pair{"attention", &layer.attention()}, std::pair{"mlp", &layer.mlp()}}) {
      for (int expert = 0; expert < mixture->counts_size(); ++expert) {
        std::printf("%-6u %-10s %-7d %-12llu %.3f\n", layer.layer(), name, expert,
                    static_cast<unsigned long long>(mixture->counts(expert)), mixture->frequency(expert));
      }
    }
  }
}

void PrintJson(const pb::ExpertStatsResponse& stats) {
  nlohmann::json layers = nlohmann::json::array();
  for (const pb::LayerExpertStats& layer : stats.layers()) {
    nlohmann::json entry = {{"layer", layer.layer()}};
    for (const auto& [name, mixture] : {std::pair{"attention", &layer.attention()}, std::pair{"mlp", &layer.mlp()}}) {
      entry[name] = {{"counts", std::vector<uint64_t>(mixture->counts().begin(), mixture->counts().end())},
                     {"frequency", std::vector<double>(mixture->frequency().begin(), mixture->frequency().end())}};
    }
    layers.push_back(entry);
  }
  nlohmann::json out = {{"tokens", stats.tokens()},
                        {"seconds_since_reset", stats.seconds_since_reset()},
                        {"stats_tag", stats.stats_tag()},
                        {"layers", layers}};
  std::printf("%s\n", out.dump(2).c_str());
}

}  // namespace

int RunExpertStats() {
  if (absl::GetFlag(FLAGS_server).empty()) {
    std::fprintf(stderr, "error: --server HOST:PORT is required\n");
    return 2;
  }
  auto stub = pb::ModuleFormer::NewStub(
      grpc::CreateChannel(absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  AddApiKey(context);
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  pb::ExpertStatsRequest request;
  request.set_stats_tag(absl::GetFlag(FLAGS_tag));
  request.set_reset(absl::GetFlag(FLAGS_reset));
  pb::ExpertStatsResponse response;
  if (grpc::Status status = stub->ExpertStats(&context, request, &response); !status.ok()) {
    std::fprintf(stderr, "error: %s\n", status.error_message().c_str());
    return 1;
  }
  absl::GetFlag(FLAGS_json) ? PrintJson(response) : PrintTable(response);
  return 0;
}

}  // namespace mf::cli
