#include "engine/generator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"

namespace mf {
namespace {

struct ActiveSequence {
  std::vector<int32_t> tokens;  // prompt, then generated
  size_t prompt_length = 0;
  int num_cached = 0;
  std::vector<int32_t> block_table;
  GenerationResult result;

  bool in_prefill() const { return static_cast<size_t>(num_cached) < prompt_length; }
};

void AppendRouting(const ForwardOutput& output, int seq_index, std::vector<std::array<MixtureRouting, 2>>* routing) {
  routing->resize(output.routing.size());
  const int begin = output.token_offsets[static_cast<size_t>(seq_index)];
  const int end = output.token_offsets[static_cast<size_t>(seq_index) + 1];
  for (size_t layer = 0; layer < output.routing.size(); ++layer) {
    for (int mixture = 0; mixture < 2; ++mixture) {
      const MixtureRouting& step = output.routing[layer][static_cast<size_t>(mixture)];
      MixtureRouting& kept = (*routing)[layer][static_cast<size_t>(mixture)];
      kept.top_k = step.top_k;
      kept.num_experts = step.num_experts;
      kept.experts.insert(kept.experts.end(), step.experts.begin() + begin * step.top_k,
                          step.experts.begin() + end * step.top_k);
      kept.gates.insert(kept.gates.end(), step.gates.begin() + begin * step.top_k, step.gates.begin() + end * step.top_k);
    }
  }
}

}  // namespace

int32_t ArgMax(const float* logits, int64_t count) {
  return static_cast<int32_t>(std::max_element(logits, logits + count) - logits);
}

absl::StatusOr<std::vector<GenerationResult>> GenerateGreedy(Model& model,
                                                             const std::vector<std::vector<int32_t>>& prompts,
                                                             const GenerateOptions& options) {
  KvCache& cache = model.kv_cache();
  std::vector<ActiveSequence> sequences(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) return absl::InvalidArgumentError(absl::StrCat("prompt ", i, " is empty"));
    sequences[i].tokens = prompts[i];
    sequences[i].prompt_length = prompts[i].size();
  }
  auto release_all = [&] {
    for (ActiveSequence& seq : sequences) {
      cache.allocator().Release(seq.block_table);
      seq.block_table.clear();
    }
  };

  while (true) {
    ForwardBatch batch;
    batch.record_routing = options.record_routing;
    std::vector<size_t> members;
    for (size_t i = 0; i < sequences.size(); ++i) {
      ActiveSequence& seq = sequences[i];
      if (!seq.in_prefill() && static_cast<int>(seq.result.tokens.size()) >= options.max_new_tokens) continue;
      size_t count = seq.tokens.size() - static_cast<size_t>(seq.num_cached);
      if (seq.in_prefill() && options.prefill_chunk > 0) count = std::min<size_t>(count, options.prefill_chunk);
      const int blocks_needed = cache.BlocksFor(seq.num_cached + static_cast<int64_t>(count)) -
                                static_cast<int>(seq.block_table.size());
      if (blocks_needed > 0) {
        auto blocks = cache.allocator().Allocate(blocks_needed);
        if (!blocks.ok()) {
          release_all();
          return blocks.status();
        }
        seq.block_table.insert(seq.block_table.end(), blocks->begin(), blocks->end());
      }
      const bool prompt_chunk = seq.in_prefill();
      batch.sequences.push_back(SequenceChunk{
          absl::MakeConstSpan(seq.tokens).subspan(static_cast<size_t>(seq.num_cached), count), seq.num_cached,
          seq.block_table, prompt_chunk && options.all_prompt_logits});
      members.push_back(i);
    }
    if (members.empty()) break;

    absl::StatusOr<ForwardOutput> output = model.Forward(batch);
    if (!output.ok()) {
      release_all();
      return output.status();
    }
    for (size_t b = 0; b < members.size(); ++b) {
      ActiveSequence& seq = sequences[members[b]];
      const bool was_prefill = seq.in_prefill();
      seq.num_cached += static_cast<int>(batch.sequences[b].new_tokens.size());
      if (options.record_routing) AppendRouting(*output, static_cast<int>(b), &seq.result.routing);
      const int first_row = output->logit_row_offsets[b];
      const int end_row = output->logit_row_offsets[b + 1];
      for (int row = first_row; row < end_row; ++row) {
        std::vector<float> logits(output->logits_row(row), output->logits_row(row) + output->vocab_size);
        (was_prefill ? seq.result.prompt_logits : seq.result.step_logits).push_back(std::move(logits));
      }
      if (!seq.in_prefill() && static_cast<int>(seq.result.tokens.size()) < options.max_new_tokens) {
        const int32_t next = ArgMax(output->logits_row(end_row - 1), output->vocab_size);
        seq.result.tokens.push_back(next);
        seq.tokens.push_back(next);
      }
    }
  }
  release_all();
  std::vector<GenerationResult> results;
  for (ActiveSequence& seq : sequences) results.push_back(std::move(seq.result));
  return results;
}

}  // namespace mf
