// A step's buffers (kept for replayable steps, with their recorded work) and the
// downloads of its outputs.
#include <algorithm>

#include "engine/base/status_macros.h"
#include "engine/model.h"
#include "engine/model_step.h"

namespace mf {
namespace {

// Recorded decode steps kept: one per batch size and table-width bucket in use, within a
// memory budget (a batch of 256 keeps 51 MB of logits alone), least recently used dropped.
constexpr size_t kMaxReplayBuffers = 64;
constexpr int64_t kMaxReplayBytes = int64_t{1} << 30;

}  // namespace

absl::StatusOr<std::shared_ptr<Model::StepBuffers>> Model::BuffersFor(const StepInputs& inputs) {
  if (!inputs.replay_key.has_value()) return AllocateBuffers(inputs);
  const uint64_t key = *inputs.replay_key;
  auto found = std::find_if(replay_buffers_.begin(), replay_buffers_.end(),
                            [key](const auto& entry) { return entry.first == key; });
  if (found != replay_buffers_.end()) {
    replay_buffers_.splice(replay_buffers_.begin(), replay_buffers_, found);
    return replay_buffers_.front().second;
  }
  absl::StatusOr<std::shared_ptr<StepBuffers>> buffers = AllocateBuffers(inputs);
  if (!buffers.ok() && absl::IsResourceExhausted(buffers.status()) && !replay_buffers_.empty()) {
    replay_buffers_.clear();  // give the kept steps' memory back and try once more
    buffers = AllocateBuffers(inputs);
  }
  if (!buffers.ok()) return buffers.status();
  replay_buffers_.emplace_front(key, *buffers);
  auto bytes_of = [](const StepBuffers& step) {
    int64_t bytes = 0;
    for (const Tensor* tensor :
         {&step.packed, &step.logits, &step.argmax, &step.samples, &step.routing_experts, &step.routing_gates}) {
      bytes += static_cast<int64_t>(tensor->num_bytes());
    }
    return bytes;
  };
  int64_t kept_bytes = 0;
  for (const auto& entry : replay_buffers_) kept_bytes += bytes_of(*entry.second);
  while (replay_buffers_.size() > 1 &&
         (replay_buffers_.size() > kMaxReplayBuffers || kept_bytes > kMaxReplayBytes)) {
    kept_bytes -= bytes_of(*replay_buffers_.back().second);
    replay_buffers_.pop_back();
  }
  return *buffers;
}

absl::StatusOr<std::shared_ptr<Model::StepBuffers>> Model::AllocateBuffers(const StepInputs& inputs) {
  auto step = std::make_shared<StepBuffers>();
  StepLayout& layout = step->layout;
  layout = inputs.layout;
  const int64_t tokens = layout.num_tokens, sequences = layout.num_sequences, rows = inputs.num_logit_rows;
  MF_ASSIGN_OR_RETURN(step->packed, backend_->Allocate(DType::kI32, {static_cast<int64_t>(inputs.packed.size())}));
  int64_t offset = 0;
  auto view = [&](std::vector<int64_t> shape) {
    Tensor part = step->packed.Slice(offset, shape);
    offset += part.num_elements();
    return part;
  };
  layout.token_ids = view({tokens});
  layout.token_seq = view({tokens});
  layout.token_pos = view({tokens});
  layout.cache_rows = view({tokens});
  layout.block_tables = view({sequences, layout.max_blocks_per_sequence});
  layout.seq_new_tokens = view({sequences});
  step->logit_rows = view({rows});
  if (inputs.sample) {
    step->sample_params = view({rows, kSampleParamsWords});
    MF_ASSIGN_OR_RETURN(step->samples, backend_->Allocate(DType::kI32, {rows, kSampleResultWords}));
  }
  MF_ASSIGN_OR_RETURN(step->logits, Empty({rows, config_.vocab_size}));
  if (inputs.argmax) {
    MF_ASSIGN_OR_RETURN(step->argmax, backend_->Allocate(DType::kI32, {rows}));
  }
  if (inputs.record_routing) {
    int64_t decisions = 0;
    for (const DeviceLayer& layer : layers_) {
      for (const DeviceMixture* mixture : {&layer.attention, &layer.mlp}) {
        step->routing_offsets.push_back(decisions);
        decisions += tokens * mixture->top_k;
      }
    }
    MF_ASSIGN_OR_RETURN(step->routing_experts, backend_->Allocate(DType::kI32, {decisions}));
    MF_ASSIGN_OR_RETURN(step->routing_gates, backend_->Allocate(DType::kF32, {decisions}));
  }
  return step;
}

absl::Status Model::ReadOutputs(const ForwardBatch& batch, const StepBuffers& step, ForwardOutput* output) {
  if (!step.argmax.empty()) {
    output->argmax.resize(static_cast<size_t>(step.argmax.num_elements()));
    backend_->CopyToHostDeferred(step.argmax, output->argmax.data());
  }
  if (!step.samples.empty()) {
    output->samples.resize(static_cast<size_t>(step.samples.rows()));
    backend_->CopyToHostDeferred(step.samples, output->samples.data());
  }
  if (!step.routing_experts.empty()) {
    // One download each for every layer's decisions; split by layer once they arrive.
    routing_experts_.resize(static_cast<size_t>(step.routing_experts.num_elements()));
    routing_gates_.resize(routing_experts_.size());
    backend_->CopyToHostDeferred(step.routing_experts, routing_experts_.data());
    backend_->CopyToHostDeferred(step.routing_gates, routing_gates_.data());
  }
  return ReadLogits(batch, step, output);
}

void Model::SplitRouting(const StepBuffers& step, ForwardOutput* output) const {
  if (step.routing_experts.empty()) return;
  output->routing.resize(layers_.size());
  const int64_t num_tokens = step.layout.num_tokens;
  for (size_t layer = 0; layer < layers_.size(); ++layer) {
    for (Mixture mixture : {Mixture::kAttention, Mixture::kMlp}) {
      const int index = static_cast<int>(mixture);
      const DeviceMixture& weights = index == 0 ? layers_[layer].attention : layers_[layer].mlp;
      MixtureRouting& routing = output->routing[layer][static_cast<size_t>(index)];
      routing.top_k = weights.top_k;
      routing.num_experts = weights.num_experts;
      const int64_t begin = step.routing_offsets[layer * 2 + static_cast<size_t>(index)];
      const int64_t end = begin + num_tokens * weights.top_k;
      routing.experts.assign(routing_experts_.begin() + begin, routing_experts_.begin() + end);
      routing.gates.assign(routing_gates_.begin() + begin, routing_gates_.begin() + end);
    }
  }
}

absl::Status Model::ReadLogits(const ForwardBatch& batch, const StepBuffers& step, ForwardOutput* output) {
  const Tensor& logits = step.logits;
  const int64_t num_rows = logits.rows();
  std::vector<int32_t> full_rows;
  output->full_row.assign(static_cast<size_t>(num_rows), -1);
  for (size_t s = 0; s < batch.sequences.size(); ++s) {
    if (!batch.sequences[s].full_logits || batch.sequences[s].device_sample.has_value()) continue;
    for (int row = output->logit_row_offsets[s]; row < output->logit_row_offsets[s + 1]; ++row) {
      output->full_row[static_cast<size_t>(row)] = static_cast<int>(full_rows.size());
      full_rows.push_back(row);
    }
  }
  if (full_rows.empty()) return absl::OkStatus();
  output->logits.resize(full_rows.size() * static_cast<size_t>(config_.vocab_size));
  if (static_cast<int64_t>(full_rows.size()) == num_rows) {
    backend_->ToFloat(logits, output->logits.data());
    return absl::OkStatus();
  }
  MF_ASSIGN_OR_RETURN(Tensor rows, backend_->Allocate(DType::kI32, {static_cast<int64_t>(full_rows.size())}));
  backend_->CopyFromHost(full_rows.data(), rows);
  MF_ASSIGN_OR_RETURN(Tensor selected, Empty({static_cast<int64_t>(full_rows.size()), config_.vocab_size}));
  backend_->GatherRows(logits, rows, selected);
  backend_->ToFloat(selected, output->logits.data());
  return absl::OkStatus();
}

}  // namespace mf
