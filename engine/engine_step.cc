// One engine step after scheduling: the forward pass over the ragged batch, then
// sampling, detokenization, stop checks and the updates sent to each request.
#include <algorithm>

#include "engine/engine.h"

namespace mf {
namespace {

double Seconds(absl::Duration duration) { return absl::ToDoubleSeconds(duration); }

// Log-probabilities and anything but plain greedy decoding need the whole row of logits.
bool NeedsFullLogits(const GenerationRequest& request) {
  return request.sampling.chosen_logprob || !PicksArgmax(request.sampling);
}

// A prompt being scored: its chunks return every row of logits.
bool ScoresPrompt(const Sequence& sequence) {
  return sequence.request.prompt_logprobs.has_value() && !sequence.prompt_logprobs_sent &&
         static_cast<size_t>(sequence.num_cached) < sequence.prompt_length;
}

TokenRouting RoutingAt(const ForwardOutput& output, int token_index) {
  TokenRouting routing;
  for (int mixture = 0; mixture < 2; ++mixture) {
    for (const auto& layer : output.routing) {
      const MixtureRouting& decisions = layer[static_cast<size_t>(mixture)];
      const auto begin = static_cast<size_t>(token_index) * static_cast<size_t>(decisions.top_k);
      routing.experts[mixture].emplace_back(decisions.experts.begin() + static_cast<int64_t>(begin),
                                            decisions.experts.begin() + static_cast<int64_t>(begin) + decisions.top_k);
      routing.gates[mixture].emplace_back(decisions.gates.begin() + static_cast<int64_t>(begin),
                                          decisions.gates.begin() + static_cast<int64_t>(begin) + decisions.top_k);
    }
  }
  return routing;
}

}  // namespace

void Engine::RunStep(const SchedulePlan& plan) {
  ForwardBatch batch;
  batch.record_routing = true;  // expert statistics count every routed token
  const absl::Time now = absl::Now();
  int first_scheduled = 0;
  for (const ScheduledChunk& chunk : plan.chunks) {
    Sequence& sequence = *chunk.sequence;
    if (!sequence.first_scheduled_time.has_value()) {
      sequence.first_scheduled_time = now;
      ++first_scheduled;
    }
    const bool scores_prompt = ScoresPrompt(sequence);
    SequenceChunk& entry = batch.sequences.emplace_back(SequenceChunk{
        absl::MakeConstSpan(sequence.tokens).subspan(static_cast<size_t>(sequence.num_cached),
                                                     static_cast<size_t>(chunk.num_tokens)),
        sequence.num_cached, sequence.block_table, /*all_logits=*/scores_prompt,
        scores_prompt || NeedsFullLogits(sequence.request)});
    const bool ends_at_new_token = sequence.num_cached + chunk.num_tokens == static_cast<int>(sequence.tokens.size());
    if (ends_at_new_token && !scores_prompt) {
      entry.device_sample = DeviceSampleParams(sequence);
      if (entry.device_sample.has_value()) entry.full_logits = false;
    }
  }
  LeftQueue(first_scheduled);
  const absl::Time forward_start = absl::Now();
  absl::StatusOr<ForwardOutput> output = model_->Forward(batch);
  forward_seconds_ += Seconds(absl::Now() - forward_start);
  if (!output.ok()) {
    // A failed step leaves the cache contents undefined for these sequences: fail them, keep serving others.
    for (const ScheduledChunk& chunk : plan.chunks) {
      Finish(*chunk.sequence, FinishReason::kCancelled, absl::InternalError(output.status().message()),
             GenerationUpdate{});
    }
    return;
  }
  scheduler_->CompleteStep(plan);
  // Taken first: Postprocess finishes (and frees) sequences that end in this step.
  std::vector<std::string> chunk_tags;
  chunk_tags.reserve(plan.chunks.size());
  for (const ScheduledChunk& chunk : plan.chunks) chunk_tags.push_back(chunk.sequence->request.stats_tag);
  Postprocess(plan, *output);
  RecordStatistics(std::move(chunk_tags), *output, now);
  step_seconds_ += Seconds(absl::Now() - now);
  absl::MutexLock lock(&mutex_);
  ++stats_.steps;
}

void Engine::RecordStatistics(std::vector<std::string> chunk_tags, ForwardOutput& output, absl::Time step_start) {
  const absl::Time start = absl::Now();
  if (config_.observer != nullptr) {
    config_.observer->OnStep(Seconds(start - step_start), output.token_offsets.back(),
                             static_cast<int>(chunk_tags.size()));
  }
  // Queued ahead of this step's updates (FlushUpdates comes later), so a request's tokens
  // are counted by the time its caller hears it finished.
  delivery_->Post([stats = expert_stats_.get(), routing = std::move(output.routing), offsets = output.token_offsets,
                  tags = std::move(chunk_tags), start] {
    std::vector<const std::string*> token_tags(static_cast<size_t>(offsets.back()));
    for (size_t chunk = 0; chunk + 1 < offsets.size(); ++chunk) {
      for (int token = offsets[chunk]; token < offsets[chunk + 1]; ++token) {
        token_tags[static_cast<size_t>(token)] = &tags[chunk];
      }
    }
    stats->Record(routing, token_tags, start);
  });
  metrics_seconds_ += Seconds(absl::Now() - start);
}

// The log-probability of each prompt token a scored chunk's rows predict: row j of a chunk
// starting at position p predicts the token at p + j + 1. Runs after CompleteStep, so
// num_cached already counts the chunk.
void Engine::ScorePromptRows(const SchedulePlan& plan, const ForwardOutput& output) {
  for (size_t index = 0; index < plan.chunks.size(); ++index) {
    Sequence& sequence = *plan.chunks[index].sequence;
    if (!sequence.request.prompt_logprobs.has_value() || sequence.prompt_logprobs_sent) continue;
    const int first_row = output.logit_row_offsets[index];
    const int num_rows = output.logit_row_offsets[index + 1] - first_row;
    const int chunk_start = sequence.num_cached - plan.chunks[index].num_tokens;
    if (num_rows != plan.chunks[index].num_tokens) continue;  // not a scored chunk
    sequence.prompt_logprobs.resize(sequence.prompt_length - 1);
    for (int row = 0; row < num_rows; ++row) {
      const size_t next_position = static_cast<size_t>(chunk_start + row + 1);
      if (next_position >= sequence.prompt_length) break;  // the last row samples the first new token
      SampleResult& scored = sequence.prompt_logprobs[next_position - 1];
      scored = SampleResult{};
      scored.token = sequence.tokens[next_position];
      const float* logits = output.logits_row(first_row + row);
      FillLogprobs(std::vector<float>(logits, logits + output.vocab_size), *sequence.request.prompt_logprobs, &scored);
    }
  }
}

void Engine::Postprocess(const SchedulePlan& plan, const ForwardOutput& output) {
  ScorePromptRows(plan, output);
  // Chunks that end at a new token: a decode, or the last chunk of a prompt.
  std::vector<size_t> finishing;
  int full_rows = 0;
  for (size_t index = 0; index < plan.chunks.size(); ++index) {
    if (plan.chunks[index].sequence->num_pending() > 0) continue;  // a prefill chunk that did not reach the end
    finishing.push_back(index);
    full_rows += output.has_full_logits(output.logit_row_offsets[index + 1] - 1) ? 1 : 0;
  }
  // Each row touches only its own sequence's generator and history, so rows sample in
  // parallel; a few rows are not worth waking the helpers for.
  const absl::Time sampling_start = absl::Now();
  std::vector<absl::StatusOr<SampleResult>> samples(finishing.size());
  auto sample_row = [&](int i) {
    const size_t index = finishing[static_cast<size_t>(i)];
    samples[static_cast<size_t>(i)] = SampleRow(*plan.chunks[index].sequence, output, output.logit_row_offsets[index + 1] - 1);
  };
  constexpr int kMinRowsForHelpers = 8;
  if (full_rows >= kMinRowsForHelpers) {
    sampling_pool_->ParallelFor(static_cast<int>(finishing.size()), sample_row);
  } else {
    for (size_t i = 0; i < finishing.size(); ++i) sample_row(static_cast<int>(i));
  }
  sampling_seconds_ += Seconds(absl::Now() - sampling_start);

  for (size_t i = 0; i < finishing.size(); ++i) {
    const size_t index = finishing[i];
    Sequence& sequence = *plan.chunks[index].sequence;
    if (!samples[i].ok()) {  // this request fails; the others in the step go on
      Finish(sequence, FinishReason::kCancelled, samples[i].status(), GenerationUpdate{});
      continue;
    }
    GenerationUpdate update;
    if (sequence.request.prompt_logprobs.has_value() && !sequence.prompt_logprobs_sent) {
      update.prompt_logprobs = std::move(sequence.prompt_logprobs);
      sequence.prompt_logprobs_sent = true;
    }
    if (sequence.request.sampling.chosen_logprob) update.logprobs.push_back(*samples[i]);
    if (sequence.request.return_routing) update.routing.push_back(RoutingAt(output, output.token_offsets[index + 1] - 1));
    const bool finished = AppendToken(sequence, *samples[i], update);
    if (!finished) Deliver(sequence, std::move(update));
  }
}

std::optional<SampleRowParams> Engine::DeviceSampleParams(Sequence& sequence) {
  const SamplingParams& sampling = sequence.request.sampling;
  if (!config_.device_sampling || !model_->SamplesOnDevice() || !NeedsFullLogits(sequence.request)) {
    return std::nullopt;
  }
  const bool penalised = Penalised(sampling);
  if (penalised && sequence.penalty_slot < 0) {
    const auto tokens = absl::MakeConstSpan(sequence.tokens);
    absl::StatusOr<int> slot =
        model_->AcquirePenaltySlot(tokens.first(sequence.prompt_length), tokens.subspan(sequence.prompt_length));
    if (!slot.ok()) return std::nullopt;  // every slot is taken: this row samples on the host
    sequence.penalty_slot = *slot;
  }
  return PackSampleRow(sampling, sequence.sampling_seed, static_cast<uint32_t>(sequence.num_generated()),
                       penalised ? sequence.penalty_slot : -1);
}

absl::StatusOr<SampleResult> Engine::SampleRow(Sequence& sequence, const ForwardOutput& output, int row) {
  if (output.has_device_sample(row)) {
    const SampleRowResult& drawn = output.samples[static_cast<size_t>(row)];
    if (drawn.token < 0) return NonFiniteLogitError(drawn.bad_value, drawn.bad_token);
    SampleResult sample;
    sample.token = drawn.token;
    sample.logprob = drawn.logprob;
    const int64_t num_top = std::min<int64_t>({sequence.request.sampling.num_logprobs, kMaxSampleLogprobs, output.vocab_size});
    for (int64_t i = 0; i < num_top; ++i) sample.top.push_back({drawn.top_tokens[i], drawn.top_logprobs[i]});
    return sample;
  }
  if (output.has_full_logits(row)) {
    return SampleFromRow(output.logits_row(row), static_cast<size_t>(output.vocab_size), sequence.request.sampling,
                         sequence.history, sequence.rng);
  }
  SampleResult sample;
  sample.token = output.argmax[static_cast<size_t>(row)];  // what Sample picks for plain greedy requests
  return sample;
}

// Appends a sampled token and releases its text. Returns true (and finishes the
// sequence) when it ends the generation.
bool Engine::AppendToken(Sequence& sequence, const SampleResult& sample, GenerationUpdate& update) {
  const GenerationRequest& request = sequence.request;
  const int32_t token = sample.token;
  sequence.tokens.push_back(token);
  sequence.history.Add(token, /*is_output=*/true);
  const absl::Time now = absl::Now();
  if (!sequence.first_token_time.has_value()) sequence.first_token_time = now;
  if (sequence.last_token_time.has_value() && config_.observer != nullptr) {
    config_.observer->OnInterTokenLatency(Seconds(now - *sequence.last_token_time));
  }
  sequence.last_token_time = now;
  update.tokens.push_back(token);

  FinishReason reason = FinishReason::kNone;
  if (!request.ignore_eos && token == model_->config().eos_token_id) {
    reason = FinishReason::kEos;
  } else if (std::find(request.stop_token_ids.begin(), request.stop_token_ids.end(), token) !=
             request.stop_token_ids.end()) {
    reason = FinishReason::kStop;
  }
  if (sequence.decoder != nullptr && reason == FinishReason::kNone) {
    absl::StatusOr<std::string> piece = sequence.decoder->Push(token);
    StopMatcher::Result released = sequence.stop_matcher->Push(piece.ok() ? *piece : std::string());
    update.text += released.text;
    if (released.stopped) reason = FinishReason::kStop;
  }
  if (reason == FinishReason::kNone && sequence.num_generated() >= request.max_new_tokens) {
    reason = FinishReason::kLength;
  }
  if (reason == FinishReason::kNone) return false;
  if (sequence.decoder != nullptr && !sequence.stop_matcher->stopped()) {
    update.text += sequence.stop_matcher->Push(sequence.decoder->Finish()).text;
    update.text += sequence.stop_matcher->Finish();
  }
  Finish(sequence, reason, absl::OkStatus(), std::move(update));
  return true;
}

void Engine::Deliver(Sequence& sequence, GenerationUpdate&& update) {
  outgoing_.emplace_back(sequence.on_update, std::move(update));
}

void Engine::FlushUpdates() {
  if (outgoing_.empty()) return;
  delivery_->Post([updates = std::move(outgoing_)]() mutable {
    for (auto& [callback, update] : updates) (*callback)(std::move(update));
  });
  outgoing_ = {};
  outgoing_.reserve(static_cast<size_t>(scheduler_->num_running()));
}

void Engine::Finish(Sequence& sequence, FinishReason reason, absl::Status status, GenerationUpdate update) {
  const absl::Time now = absl::Now();
  update.finished = true;
  update.finish_reason = reason;
  update.status = std::move(status);
  update.prompt_tokens = static_cast<int>(sequence.prompt_length);
  update.completion_tokens = sequence.num_generated();
  update.cached_prompt_tokens = sequence.cached_prompt_tokens;
  update.queue_seconds = Seconds(sequence.first_scheduled_time.value_or(now) - sequence.arrival_time);
  if (sequence.first_token_time.has_value()) {
    update.time_to_first_token_seconds = Seconds(*sequence.first_token_time - sequence.arrival_time);
  }
  update.total_seconds = Seconds(now - sequence.arrival_time);
  if (!sequence.first_scheduled_time.has_value()) LeftQueue(1);  // finished while it waited
  scheduler_->Remove(&sequence);
  if (sequence.penalty_slot >= 0) model_->ReleasePenaltySlot(sequence.penalty_slot);
  if (config_.observer != nullptr) config_.observer->OnRequestFinished(update);
  Deliver(sequence, std::move(update));
  sequences_.erase(sequence.id);
}

}  // namespace mf
