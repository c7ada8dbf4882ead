// One thread that runs posted tasks one at a time, in the order posted: work handed off
// a thread that must not wait for it (the engine loop's update callbacks, the server's
// stream writes) while keeping its order.
#pragma once

#include <cstdint>
#include <deque>
#include <thread>

#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace mf {

class SerialExecutor {
 public:
  SerialExecutor();
  // Runs every task posted, then stops the thread.
  ~SerialExecutor();
  SerialExecutor(const SerialExecutor&) = delete;
  SerialExecutor& operator=(const SerialExecutor&) = delete;

  // Queues `task`; it runs after every task posted before it, and is destroyed on the
  // executor's thread once it has run.
  void Post(absl::AnyInvocable<void() &&> task);
  // Waits until every task posted so far has run. False on timeout.
  bool WaitUntilIdle(absl::Duration timeout);
  // Time spent running tasks.
  double busy_seconds() const;

 private:
  void Loop();
  bool HasWorkOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return stopping_ || !queue_.empty(); }
  bool AllRun() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return num_run_ == num_posted_; }

  mutable absl::Mutex mutex_;
  std::deque<absl::AnyInvocable<void() &&>> queue_ ABSL_GUARDED_BY(mutex_);
  uint64_t num_posted_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t num_run_ ABSL_GUARDED_BY(mutex_) = 0;
  double busy_seconds_ ABSL_GUARDED_BY(mutex_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread thread_;
};

}  // namespace mf
