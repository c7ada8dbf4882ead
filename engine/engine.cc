#include "engine/engine.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"

namespace mf {

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength: return "length";
    case FinishReason::kStop: return "stop";
    case FinishReason::kEos: return "eos";
    case FinishReason::kCancelled: return "cancelled";
    default: return "none";
  }
}

Engine::Engine(std::unique_ptr<Model> model, std::shared_ptr<const Tokenizer> tokenizer, const EngineConfig& config)
    : model_(std::move(model)), tokenizer_(std::move(tokenizer)), config_(config) {
  scheduler_ = std::make_unique<Scheduler>(config_.scheduler, model_->kv_cache().allocator());
  std::vector<std::array<int, 2>> experts_per_layer;
  for (int layer = 0; layer < model_->config().n_layer; ++layer) {
    experts_per_layer.push_back({model_->num_experts(layer, Mixture::kAttention), model_->num_experts(layer, Mixture::kMlp)});
  }
  expert_stats_ = std::make_unique<ExpertStats>(std::move(experts_per_layer));
  sampling_pool_ = std::make_unique<WorkerPool>(std::max(0, config_.sampling_threads));
  delivery_ = std::make_unique<SerialExecutor>();
  PublishStats();
  thread_ = std::thread([this] { Loop(); });
}

Engine::~Engine() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  thread_.join();
  delivery_.reset();  // delivers the final updates FailAll queued, while the engine is still whole
}

int Engine::max_sequence_tokens() const {
  const BlockAllocator& allocator = model_->kv_cache().allocator();
  return std::min(config_.max_context, allocator.num_blocks() * allocator.block_size());
}

absl::StatusOr<uint64_t> Engine::Submit(GenerationRequest request, UpdateCallback on_update) {
  const ModelConfig& model_config = model_->config();
  if (request.prompt.empty()) return absl::InvalidArgumentError("prompt: is empty");
  for (int32_t token : request.prompt) {
    if (token < 0 || token >= model_config.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt: token id ", token, " out of range [0, ", model_config.vocab_size, ")"));
    }
  }
  if (request.max_new_tokens < 1) return absl::InvalidArgumentError("max_new_tokens: must be at least 1");
  const int64_t total = static_cast<int64_t>(request.prompt.size()) + request.max_new_tokens;
  if (total > max_sequence_tokens()) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens: prompt (", request.prompt.size(), " tokens) + ",
                                                   request.max_new_tokens, " new tokens exceeds the context limit of ",
                                                   max_sequence_tokens()));
  }
  if (!request.stop.empty() && tokenizer_ == nullptr) {
    return absl::InvalidArgumentError("stop: stop strings need a tokenizer, and this model has none");
  }

  auto sequence = std::make_unique<Sequence>();
  sequence->arrival_time = absl::Now();
  sequence->tokens = request.prompt;
  sequence->prompt_length = request.prompt.size();
  for (int32_t token : request.prompt) sequence->history.Add(token, /*is_output=*/false);
  sequence->sampling_seed = request.seed.has_value()
                               ? *request.seed
                               : (uint64_t{std::random_device{}()} << 32 | std::random_device{}());
  sequence->rng.seed(sequence->sampling_seed);
  if (tokenizer_ != nullptr) {
    sequence->decoder = std::make_unique<IncrementalDecoder>(*tokenizer_, request.skip_special_tokens);
    sequence->stop_matcher = std::make_unique<StopMatcher>(request.stop);
  }
  sequence->request = std::move(request);
  sequence->on_update = std::make_shared<const UpdateCallback>(std::move(on_update));

  absl::MutexLock lock(&mutex_);
  if (!accepting_ || stopping_) return absl::UnavailableError("server is draining; retry on another replica");
  if (unscheduled_ >= config_.max_waiting) {
    return absl::ResourceExhaustedError(absl::StrCat("request queue is full (", config_.max_waiting, " waiting)"));
  }
  ++unscheduled_;
  sequence->id = next_id_++;
  const uint64_t id = sequence->id;
  inbox_.push_back(std::move(sequence));
  idle_ = false;
  return id;
}

void Engine::Cancel(uint64_t id) {
  absl::MutexLock lock(&mutex_);
  cancels_.push_back(id);
}

void Engine::Pause(uint64_t id) {
  absl::MutexLock lock(&mutex_);
  pauses_.emplace_back(id, true);
}

void Engine::Resume(uint64_t id) {
  absl::MutexLock lock(&mutex_);
  pauses_.emplace_back(id, false);
}

void Engine::StopAccepting() {
  absl::MutexLock lock(&mutex_);
  accepting_ = false;
  stats_.draining = true;
}

void Engine::MarkDraining() {
  absl::MutexLock lock(&mutex_);
  stats_.draining = true;
}

bool Engine::WaitUntilIdle(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  {
    absl::MutexLock lock(&mutex_);
    if (!mutex_.AwaitWithTimeout(absl::Condition(this, &Engine::IsIdle), timeout)) return false;
  }
  // The loop posts a step's updates before it publishes idleness, so these are the last.
  return delivery_->WaitUntilIdle(deadline - absl::Now());
}

EngineStats Engine::stats() const {
  absl::MutexLock lock(&mutex_);
  return stats_;
}

void Engine::Loop() {
  while (true) {
    const bool has_work = !scheduler_->idle();
    {
      absl::MutexLock lock(&mutex_);
      if (!has_work) mutex_.Await(absl::Condition(this, &Engine::HasInboxOrStop));
      if (stopping_) break;
    }
    TakeInbox();
    SweepCancelledAndExpired();
    FlushUpdates();  // cancellations reach their callers before the step runs
    const SchedulePlan plan = scheduler_->Schedule();
    if (!plan.empty()) RunStep(plan);
    FlushUpdates();
    PublishStats();
    if (plan.empty() && !scheduler_->idle()) {
      // Nothing could run this step: wait for a change. When only paused streams remain,
      // only a resume (which wakes the loop) or a stall timeout can change anything.
      const bool only_paused = scheduler_->num_waiting() == 0 && scheduler_->num_paused() == scheduler_->num_running();
      absl::MutexLock lock(&mutex_);
      mutex_.AwaitWithTimeout(absl::Condition(this, &Engine::HasInboxOrStop),
                              only_paused ? absl::Milliseconds(100) : absl::Milliseconds(1));
    }
  }
  FailAll(absl::UnavailableError("server is shutting down"));
  FlushUpdates();
}

void Engine::TakeInbox() {
  std::deque<std::unique_ptr<Sequence>> arrivals;
  std::vector<uint64_t> cancels;
  std::vector<std::pair<uint64_t, bool>> pauses;
  {
    absl::MutexLock lock(&mutex_);
    arrivals.swap(inbox_);
    cancels.swap(cancels_);
    pauses.swap(pauses_);
  }
  for (std::unique_ptr<Sequence>& sequence : arrivals) {
    scheduler_->AddWaiting(sequence.get());
    const uint64_t id = sequence->id;
    sequences_.emplace(id, std::move(sequence));
  }
  for (uint64_t id : cancels) {
    auto it = sequences_.find(id);
    if (it != sequences_.end()) it->second->cancel_requested = true;
  }
  const absl::Time now = absl::Now();
  for (const auto& [id, pause] : pauses) {
    auto it = sequences_.find(id);
    if (it == sequences_.end()) continue;
    if (!pause) {
      it->second->paused_since.reset();
    } else if (!it->second->paused_since.has_value()) {
      it->second->paused_since = now;
    }
  }
}

void Engine::SweepCancelledAndExpired() {
  const absl::Time now = absl::Now();
  std::vector<Sequence*> done;
  std::vector<Sequence*> stalled;
  for (auto& [id, sequence] : sequences_) {
    if (sequence->cancel_requested || now >= sequence->request.deadline) {
      done.push_back(sequence.get());
    } else if (sequence->paused_since.has_value() && now - *sequence->paused_since > config_.stall_timeout) {
      stalled.push_back(sequence.get());
    }
  }
  for (Sequence* sequence : stalled) {
    Finish(*sequence, FinishReason::kCancelled,
           absl::CancelledError(absl::StrCat("stream stalled: its client read nothing for ",
                                             absl::FormatDuration(config_.stall_timeout))),
           GenerationUpdate{});
  }
  // A client whose deadline expires cancels the call (RST_STREAM), which can arrive just
  // before the server's copy of the deadline, taken when the request arrived: a cancel
  // that close to the deadline is the deadline.
  constexpr absl::Duration kDeadlineSlack = absl::Milliseconds(250);
  for (Sequence* sequence : done) {
    const bool expired = now + (sequence->cancel_requested ? kDeadlineSlack : absl::ZeroDuration()) >=
                         sequence->request.deadline;
    Finish(*sequence, FinishReason::kCancelled,
           expired ? absl::DeadlineExceededError("deadline exceeded before generation finished")
                   : absl::CancelledError("cancelled by the client"),
           GenerationUpdate{});
  }
}

void Engine::FailAll(const absl::Status& status) {
  std::vector<Sequence*> all;
  for (auto& [id, sequence] : sequences_) all.push_back(sequence.get());
  for (Sequence* sequence : all) Finish(*sequence, FinishReason::kCancelled, status, GenerationUpdate{});
  std::deque<std::unique_ptr<Sequence>> never_started;
  {
    absl::MutexLock lock(&mutex_);
    never_started.swap(inbox_);
  }
  LeftQueue(static_cast<int>(never_started.size()));
  for (auto& sequence : never_started) {
    GenerationUpdate update;
    update.finished = true;
    update.finish_reason = FinishReason::kCancelled;
    update.status = status;
    Deliver(*sequence, std::move(update));
  }
}

void Engine::LeftQueue(int count) {
  if (count == 0) return;
  absl::MutexLock lock(&mutex_);
  unscheduled_ -= count;
}

void Engine::PublishStats() {
  const BlockAllocator& allocator = model_->kv_cache().allocator();
  const double delivery_busy_seconds = delivery_->busy_seconds();
  absl::MutexLock lock(&mutex_);
  stats_.running = scheduler_->num_running();
  stats_.waiting = scheduler_->num_waiting();
  stats_.kv_blocks_used = allocator.num_used_blocks();
  stats_.kv_blocks_total = allocator.num_blocks();
  stats_.prefix_cache_hit_tokens = scheduler_->prefix_cache_hit_tokens();
  stats_.preemptions = scheduler_->num_preemptions();
  stats_.preempted_waiting = scheduler_->num_preempted_waiting();
  stats_.paused = scheduler_->num_paused();
  stats_.step_seconds = step_seconds_;
  stats_.forward_seconds = forward_seconds_;
  stats_.sampling_seconds = sampling_seconds_;
  stats_.delivery_seconds = delivery_busy_seconds;
  stats_.metrics_seconds = metrics_seconds_;
  idle_ = scheduler_->idle() && inbox_.empty();
}

}  // namespace mf
