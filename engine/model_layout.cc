// Checking a ragged batch and laying it out for the backend.
#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"
#include "engine/model.h"
#include "engine/model_step.h"

namespace mf {

absl::Status Model::Validate(const ForwardBatch& batch) const {
  if (batch.sequences.empty()) return absl::InvalidArgumentError("batch has no sequences");
  const int block_size = kv_cache_->block_size();
  const int num_blocks = kv_cache_->allocator().num_blocks();
  for (size_t s = 0; s < batch.sequences.size(); ++s) {
    const SequenceChunk& chunk = batch.sequences[s];
    if (chunk.new_tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": no new tokens"));
    }
    if (chunk.num_cached < 0) return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": negative num_cached"));
    for (int32_t token : chunk.new_tokens) {
      if (token < 0 || token >= config_.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("sequence ", s, ": token id ", token, " out of range [0, ", config_.vocab_size, ")"));
      }
    }
    const int64_t total_tokens = chunk.num_cached + static_cast<int64_t>(chunk.new_tokens.size());
    if (static_cast<int64_t>(chunk.block_table.size()) * block_size < total_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": block table of ", chunk.block_table.size(),
                                                     " blocks cannot hold ", total_tokens, " tokens"));
    }
    for (int32_t block : chunk.block_table) {
      if (block < 0 || block >= num_blocks) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": block id ", block, " out of range"));
      }
    }
    if (chunk.device_sample.has_value()) {
      if (!SamplesOnDevice()) {
        return absl::InvalidArgumentError(
            absl::StrCat("sequence ", s, ": the ", backend_->name(), " backend does not sample on the device"));
      }
      const SampleRowParams& params = *chunk.device_sample;
      if (params.penalty_slot >= kPenaltySlots || params.num_top_logprobs < 0 ||
          params.num_top_logprobs > kMaxSampleLogprobs) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": device sampling: penalty slot ",
                                                       params.penalty_slot, " or ", params.num_top_logprobs,
                                                       " top log-probabilities out of range"));
      }
    }
  }
  return absl::OkStatus();
}

SampleRowParams PackSampleRow(const SamplingParams& sampling, uint64_t seed, uint32_t draw_index, int penalty_slot) {
  SampleRowParams params{};
  params.temperature = sampling.temperature;
  params.top_p = sampling.top_p;
  params.min_p_offset = sampling.min_p > 0 ? MinPLogitOffset(sampling) : -std::numeric_limits<float>::infinity();
  params.repetition_penalty = ClampedRepetitionPenalty(sampling);
  params.presence_penalty = sampling.presence_penalty;
  params.frequency_penalty = sampling.frequency_penalty;
  params.top_k = sampling.top_k;
  params.num_top_logprobs = std::clamp(sampling.num_logprobs, 0, kMaxSampleLogprobs);
  params.want_logprob = sampling.chosen_logprob || sampling.num_logprobs > 0;
  params.penalty_slot = penalty_slot;
  params.seed_low = static_cast<uint32_t>(seed);
  params.seed_high = static_cast<uint32_t>(seed >> 32);
  params.draw_index = draw_index;
  return params;
}

namespace {

// Decode steps whose longest block table falls in the same multiple of this many blocks
// share recorded work: tables are padded to it (attention sizes its splits by it).
constexpr int kReplayBlockBucket = 8;
// Larger decode batches gain little from replay next to their kernels' run time.
constexpr int kMaxReplayTokens = 512;

bool IsDecodeStep(const ForwardBatch& batch) {
  if (static_cast<int>(batch.sequences.size()) > kMaxReplayTokens) return false;
  return std::all_of(batch.sequences.begin(), batch.sequences.end(),
                     [](const SequenceChunk& chunk) { return chunk.new_tokens.size() == 1; });
}

}  // namespace

Model::StepInputs Model::BuildInputs(const ForwardBatch& batch, ForwardOutput* output) const {
  const int block_size = kv_cache_->block_size();
  StepInputs inputs;
  StepLayout& layout = inputs.layout;
  layout.num_sequences = static_cast<int>(batch.sequences.size());
  layout.block_size = block_size;
  for (const SequenceChunk& chunk : batch.sequences) {
    layout.max_blocks_per_sequence = std::max(layout.max_blocks_per_sequence, static_cast<int>(chunk.block_table.size()));
    inputs.argmax |= !chunk.full_logits && !chunk.device_sample.has_value();
    inputs.sample |= chunk.device_sample.has_value();
  }
  inputs.record_routing = batch.record_routing;
  const bool decode = IsDecodeStep(batch);
  if (decode) {
    layout.max_blocks_per_sequence =
        (layout.max_blocks_per_sequence + kReplayBlockBucket - 1) / kReplayBlockBucket * kReplayBlockBucket;
  }

  std::vector<int32_t> token_ids, token_seq, token_pos, cache_rows, seq_new_tokens, logit_rows;
  layout.seq_token_begin.push_back(0);
  std::vector<int32_t> block_tables(static_cast<size_t>(layout.num_sequences) * layout.max_blocks_per_sequence, 0);
  output->token_offsets.push_back(0);
  output->logit_row_offsets.push_back(0);
  for (int s = 0; s < layout.num_sequences; ++s) {
    const SequenceChunk& chunk = batch.sequences[static_cast<size_t>(s)];
    std::copy(chunk.block_table.begin(), chunk.block_table.end(),
              block_tables.begin() + static_cast<int64_t>(s) * layout.max_blocks_per_sequence);
    const int num_new = static_cast<int>(chunk.new_tokens.size());
    for (int i = 0; i < num_new; ++i) {
      const int position = chunk.num_cached + i;
      if (chunk.all_logits || i == num_new - 1) logit_rows.push_back(static_cast<int32_t>(token_ids.size()));
      token_ids.push_back(chunk.new_tokens[static_cast<size_t>(i)]);
      token_seq.push_back(s);
      token_pos.push_back(position);
      cache_rows.push_back(chunk.block_table[static_cast<size_t>(position / block_size)] * block_size +
                           position % block_size);
    }
    output->token_offsets.push_back(static_cast<int>(token_ids.size()));
    layout.seq_token_begin.push_back(static_cast<int32_t>(token_ids.size()));
    layout.seq_cached.push_back(chunk.num_cached);
    seq_new_tokens.push_back(num_new);
    output->logit_row_offsets.push_back(static_cast<int>(logit_rows.size()));
  }
  layout.num_tokens = static_cast<int>(token_ids.size());
  inputs.num_logit_rows = static_cast<int>(logit_rows.size());
  for (const std::vector<int32_t>* part :
       {&token_ids, &token_seq, &token_pos, &cache_rows, &block_tables, &seq_new_tokens, &logit_rows}) {
    inputs.packed.insert(inputs.packed.end(), part->begin(), part->end());
  }
  if (inputs.sample) {
    // Every row gets parameters; only each sampled chunk's last row is enabled.
    std::vector<SampleRowParams> params(logit_rows.size(), SampleRowParams{});
    output->sampled.assign(logit_rows.size(), 0);
    for (int s = 0; s < layout.num_sequences; ++s) {
      const SequenceChunk& chunk = batch.sequences[static_cast<size_t>(s)];
      if (!chunk.device_sample.has_value()) continue;
      const size_t row = static_cast<size_t>(output->logit_row_offsets[static_cast<size_t>(s) + 1] - 1);
      params[row] = *chunk.device_sample;
      params[row].enabled = 1;
      output->sampled[row] = 1;
    }
    const auto* words = reinterpret_cast<const int32_t*>(params.data());
    inputs.packed.insert(inputs.packed.end(), words, words + params.size() * kSampleParamsWords);
  }
  if (decode && !batch.record_router_logits) {
    // Decode steps have one token and one logit row per sequence; what else shapes
    // their work is the table width and which outputs they produce.
    inputs.replay_key = static_cast<uint64_t>(layout.num_sequences) |
                        static_cast<uint64_t>(layout.max_blocks_per_sequence) << 20 |
                        static_cast<uint64_t>(inputs.argmax) << 50 | static_cast<uint64_t>(inputs.record_routing) << 51 |
                        static_cast<uint64_t>(inputs.sample) << 52;
  }
  return inputs;
}

}  // namespace mf
