#include "server/openai_call.h"

#include <grpcpp/support/status.h>

namespace mf::server {

OpenAiCallState::OpenAiCallState(Engine& engine, std::string rpc, std::string peer, ServerMetrics* metrics,
                                 RequestLog* log)
    : engine_(engine), rpc_(std::move(rpc)), peer_(std::move(peer)), metrics_(metrics), log_(log) {}

absl::Status OpenAiCallState::Submit(std::vector<GenerationRequest> choices) {
  // Held while submitting: an update waits for the ids it may need to pause its request.
  absl::MutexLock lock(&mutex_);
  num_choices_ = static_cast<int>(choices.size());
  for (int choice = 0; choice < num_choices_; ++choice) {
    std::weak_ptr<OpenAiCallState> self = weak_from_this();
    absl::StatusOr<uint64_t> id =
        engine_.Submit(std::move(choices[static_cast<size_t>(choice)]), [self, choice](GenerationUpdate&& update) {
          if (auto state = self.lock()) state->OnUpdate(choice, std::move(update));
        });
    if (!id.ok()) {
      for (const uint64_t submitted : ids_) engine_.Cancel(submitted);
      return id.status();
    }
    ids_.push_back(*id);
    paused_.push_back(false);
  }
  first_id_ = ids_.front();
  return absl::OkStatus();
}

void OpenAiCallState::OnUpdate(int choice, GenerationUpdate&& update) {
  uint64_t pause_id = 0;
  {
    absl::MutexLock lock(&mutex_);
    const bool finished = update.finished;
    updates_.emplace_back(choice, std::move(update));
    if (!finished && updates_.size() >= kPauseAt && !paused_[static_cast<size_t>(choice)]) {
      paused_[static_cast<size_t>(choice)] = true;
      pause_id = ids_[static_cast<size_t>(choice)];
    }
  }
  if (pause_id != 0) engine_.Pause(pause_id);
}

std::optional<std::pair<int, GenerationUpdate>> OpenAiCallState::Next(absl::Duration timeout) {
  std::vector<uint64_t> resume;
  std::optional<std::pair<int, GenerationUpdate>> next;
  {
    absl::MutexLock lock(&mutex_);
    auto has_update = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return !updates_.empty(); };
    if (!mutex_.AwaitWithTimeout(absl::Condition(&has_update), timeout)) return std::nullopt;
    next = std::move(updates_.front());
    updates_.pop_front();
    if (updates_.size() <= kResumeAt) {
      for (size_t choice = 0; choice < paused_.size(); ++choice) {
        if (paused_[choice]) resume.push_back(ids_[choice]);
        paused_[choice] = false;
      }
    }
  }
  for (const uint64_t id : resume) engine_.Resume(id);
  return next;
}

void OpenAiCallState::CancelAll() {
  absl::MutexLock lock(&mutex_);
  for (const uint64_t id : ids_) engine_.Cancel(id);
}

void OpenAiCallState::Finish(absl::StatusCode code, const std::string& error,
                             const std::vector<GenerationUpdate>& final_updates, const std::string& stats_tag) {
  if (finished_) return;
  finished_ = true;
  if (metrics_ != nullptr) metrics_->CountRequest(rpc_.c_str(), static_cast<grpc::StatusCode>(code));
  if (log_ == nullptr) return;
  CallRecord record;
  record.rpc = rpc_;
  record.code = StatusCodeName(static_cast<int>(code));
  record.error = error;
  record.peer = peer_;
  record.stats_tag = stats_tag;
  for (size_t i = 0; i < final_updates.size(); ++i) {
    if (i == 0) {
      record.TakeFinal(final_updates[0]);  // timings and prompt of the first choice
    } else {
      record.completion_tokens += final_updates[i].completion_tokens;
    }
  }
  log_->Write(RequestLine(record));
}

}  // namespace mf::server
