// One OpenAI API call in flight: its engine requests (one per choice), the updates the
// engine thread hands to the HTTP thread serving the call, back-pressure for a slow
// stream reader, cancellation, and the call's metrics and request-log line.
#pragma once

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "server/metrics.h"
#include "server/request_log.h"

namespace mf::server {

class OpenAiCallState : public std::enable_shared_from_this<OpenAiCallState> {
 public:
  // A choice whose client is this many updates behind is paused; resumed at kResumeAt.
  static constexpr size_t kPauseAt = 32;
  static constexpr size_t kResumeAt = 8;

  OpenAiCallState(Engine& engine, std::string rpc, std::string peer, ServerMetrics* metrics, RequestLog* log);

  // Submits every choice; when one is refused, cancels those already submitted.
  absl::Status Submit(std::vector<GenerationRequest> choices);
  uint64_t first_id() const { return first_id_; }
  int num_choices() const { return num_choices_; }

  // The next (choice, update), or nothing after `timeout`.
  std::optional<std::pair<int, GenerationUpdate>> Next(absl::Duration timeout);
  void CancelAll();

  // Counts the call in metrics and writes its request-log line, once; `final_updates` may
  // be empty (the call failed before the engine saw it).
  void Finish(absl::StatusCode code, const std::string& error, const std::vector<GenerationUpdate>& final_updates,
              const std::string& stats_tag);

 private:
  void OnUpdate(int choice, GenerationUpdate&& update);

  Engine& engine_;
  const std::string rpc_, peer_;
  ServerMetrics* metrics_;
  RequestLog* log_;
  uint64_t first_id_ = 0;
  int num_choices_ = 0;
  bool finished_ = false;  // HTTP thread only

  absl::Mutex mutex_;
  std::vector<uint64_t> ids_ ABSL_GUARDED_BY(mutex_);
  std::vector<bool> paused_ ABSL_GUARDED_BY(mutex_);
  std::deque<std::pair<int, GenerationUpdate>> updates_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace mf::server
