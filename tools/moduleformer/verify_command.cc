// `moduleformer verify`: runs every reference case and reports the worst errors.
#include <cstdio>

#include "absl/flags/flag.h"
#include "tools/moduleformer/commands.h"
#include "tools/moduleformer/reference_cases.h"

ABSL_FLAG(std::string, cases, "", "Reference cases file (cases.json)");
ABSL_FLAG(double, logit_tolerance, 1e-4, "Largest accepted absolute logit error");
ABSL_FLAG(double, gate_tolerance, 1e-4, "Largest accepted absolute error of a chosen expert's gate");
ABSL_FLAG(int32_t, prefill_chunk, 0, "Prefill prompts in chunks of this many tokens (0: whole prompts)");
ABSL_FLAG(bool, batched, true, "Run all cases together as one ragged batch (else one at a time)");

namespace mf::cli {

int RunVerify() {
  auto cases = LoadReferenceCases(absl::GetFlag(FLAGS_cases));
  if (!cases.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(cases.status().message()).c_str());
    return 1;
  }
  auto model = LoadModelFromFlags();
  if (!model.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const GenerateOptions options = VerificationOptions(*cases, absl::GetFlag(FLAGS_prefill_chunk));
  std::vector<GenerationResult> results;
  std::vector<std::vector<int32_t>> prompts;
  for (const ReferenceCase& reference : *cases) prompts.push_back(reference.prompt);
  if (absl::GetFlag(FLAGS_batched)) {
    auto batch_results = GenerateGreedy(**model, prompts, options);
    if (!batch_results.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(batch_results.status().message()).c_str());
      return 1;
    }
    results = *std::move(batch_results);
  } else {
    for (const auto& prompt : prompts) {
      auto single = GenerateGreedy(**model, {prompt}, options);
      if (!single.ok()) {
        std::fprintf(stderr, "error: %s\n", std::string(single.status().message()).c_str());
        return 1;
      }
      results.push_back(std::move(single->front()));
    }
  }

  Tolerances tolerances;
  tolerances.logits = absl::GetFlag(FLAGS_logit_tolerance);
  tolerances.gates = absl::GetFlag(FLAGS_gate_tolerance);
  int failures = 0;
  for (size_t i = 0; i < cases->size(); ++i) {
    const CaseReport report = CompareWithReference((*cases)[i], results[i], tolerances);
    std::printf("case %zu: prompt %zu tokens, max abs logit error %.3g, routing %s, greedy %s%s%s\n", i,
                (*cases)[i].prompt.size(), report.max_logit_error, report.routing_matches ? "ok" : "MISMATCH",
                report.greedy_matches ? "ok" : "MISMATCH", report.ok() ? "" : ": ", report.first_mismatch.c_str());
    if (!report.ok()) ++failures;
  }
  std::printf("%zu cases, %d failed\n", cases->size(), failures);
  return failures == 0 ? 0 : 1;
}

}  // namespace mf::cli
