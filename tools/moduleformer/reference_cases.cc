#include "tools/moduleformer/reference_cases.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace mf {
namespace {

using nlohmann::json;

absl::StatusOr<ReferenceCase> ParseCase(const json& entry) {
  ReferenceCase reference;
  reference.prompt = entry.at("prompt").get<std::vector<int32_t>>();
  reference.logits_positions = entry.at("logits_positions").get<std::vector<int>>();
  reference.logits = entry.at("logits").get<std::vector<std::vector<float>>>();
  reference.greedy = entry.at("greedy").get<std::vector<int32_t>>();
  reference.greedy_step_logits = entry.at("greedy_step_logits").get<std::vector<std::vector<float>>>();
  for (const json& item : entry.at("routing")) {
    ReferenceRouting routing;
    routing.layer = item.at("layer").get<int>();
    const std::string kind = item.at("kind").get<std::string>();
    if (kind != "attention" && kind != "mlp") return absl::InvalidArgumentError("routing kind '" + kind + "'");
    routing.mixture = kind == "attention" ? Mixture::kAttention : Mixture::kMlp;
    routing.experts = item.at("experts").get<std::vector<std::vector<int32_t>>>();
    routing.gates = item.at("gates").get<std::vector<std::vector<float>>>();
    reference.routing.push_back(std::move(routing));
  }
  if (reference.logits.size() != reference.logits_positions.size()) {
    return absl::InvalidArgumentError("'logits' and 'logits_positions' differ in length");
  }
  return reference;
}

double MaxAbsDifference(const std::vector<float>& expected, const std::vector<float>& actual) {
  if (expected.size() != actual.size()) return INFINITY;
  double worst = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    worst = std::max(worst, std::abs(static_cast<double>(expected[i]) - actual[i]));
  }
  return worst;
}

// Chosen experts are compared as a set with their gates: two experts of nearly
// equal probability may be listed in either order.
bool SameChoice(std::vector<int32_t> expected_experts, std::vector<float> expected_gates, const int32_t* experts,
                const float* gates, int top_k, double gate_tolerance) {
  if (static_cast<int>(expected_experts.size()) != top_k) return false;
  for (int rank = 0; rank < top_k; ++rank) {
    auto it = std::find(expected_experts.begin(), expected_experts.end(), experts[rank]);
    if (it == expected_experts.end()) return false;
    const size_t index = static_cast<size_t>(it - expected_experts.begin());
    if (std::abs(expected_gates[index] - gates[rank]) > gate_tolerance) return false;
    expected_experts[index] = -1;
  }
  return true;
}

void CheckRouting(const ReferenceCase& reference, const GenerationResult& result, const Tolerances& tolerances,
                  CaseReport* report) {
  report->routing_matches = true;
  for (const ReferenceRouting& expected : reference.routing) {
    if (expected.layer < 0 || static_cast<size_t>(expected.layer) >= result.routing.size()) {
      report->routing_matches = false;
      report->first_mismatch = absl::StrCat("routing: no layer ", expected.layer);
      return;
    }
    const MixtureRouting& actual = result.routing[static_cast<size_t>(expected.layer)][static_cast<size_t>(expected.mixture)];
    for (size_t t = 0; t < expected.experts.size(); ++t) {
      const size_t offset = t * static_cast<size_t>(actual.top_k);
      if (offset + static_cast<size_t>(actual.top_k) > actual.experts.size() ||
          !SameChoice(expected.experts[t], expected.gates[t], &actual.experts[offset], &actual.gates[offset],
                      actual.top_k, tolerances.gates)) {
        report->routing_matches = false;
        report->first_mismatch = absl::StrCat("routing differs at layer ", expected.layer, " ",
                                              MixtureName(expected.mixture), " prompt token ", t);
        return;
      }
    }
  }
}

}  // namespace

absl::StatusOr<std::vector<ReferenceCase>> LoadReferenceCases(const std::string& path) {
  std::ifstream file(path);
  if (!file) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream text;
  text << file.rdbuf();
  json doc = json::parse(text.str(), nullptr, false);
  if (doc.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": malformed JSON"));
  auto cases = doc.find("cases");
  if (cases == doc.end() || !cases->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": missing 'cases' array"));
  }
  std::vector<ReferenceCase> result;
  for (size_t i = 0; i < cases->size(); ++i) {
    absl::StatusOr<ReferenceCase> parsed = absl::InternalError("unparsed");
    try {
      parsed = ParseCase((*cases)[i]);
    } catch (const json::exception& error) {  // nlohmann's typed accessors throw; keep it local
      parsed = absl::InvalidArgumentError(error.what());
    }
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": case ", i, ": ", parsed.status().message()));
    }
    result.push_back(*std::move(parsed));
  }
  return result;
}

GenerateOptions VerificationOptions(const std::vector<ReferenceCase>& cases, int prefill_chunk) {
  GenerateOptions options;
  options.max_new_tokens = 0;
  for (const ReferenceCase& reference : cases) {
    options.max_new_tokens = std::max(options.max_new_tokens, static_cast<int>(reference.greedy.size()));
  }
  options.prefill_chunk = prefill_chunk;
  options.all_prompt_logits = true;
  options.record_routing = true;
  return options;
}

CaseReport CompareWithReference(const ReferenceCase& reference, const GenerationResult& result,
                                const Tolerances& tolerances) {
  CaseReport report;
  for (size_t i = 0; i < reference.logits_positions.size(); ++i) {
    const size_t position = static_cast<size_t>(reference.logits_positions[i]);
    const double error = position < result.prompt_logits.size()
                             ? MaxAbsDifference(reference.logits[i], result.prompt_logits[position])
                             : INFINITY;
    report.max_logit_error = std::max(report.max_logit_error, error);
  }
  const size_t steps = reference.greedy_step_logits.size();
  for (size_t i = 0; i < steps; ++i) {
    const double error = i < result.step_logits.size()
                             ? MaxAbsDifference(reference.greedy_step_logits[i], result.step_logits[i])
                             : INFINITY;
    report.max_logit_error = std::max(report.max_logit_error, error);
  }
  const size_t generated = std::min(result.tokens.size(), reference.greedy.size());
  report.greedy_matches = generated == reference.greedy.size() &&
                          std::equal(reference.greedy.begin(), reference.greedy.end(), result.tokens.begin());
  CheckRouting(reference, result, tolerances, &report);
  if (!report.greedy_matches && report.first_mismatch.empty()) report.first_mismatch = "greedy continuation differs";
  if (!(report.max_logit_error <= tolerances.logits) && report.first_mismatch.empty()) {
    report.first_mismatch = absl::StrCat("max logit error ", report.max_logit_error, " exceeds ", tolerances.logits);
  }
  return report;
}

}  // namespace mf
