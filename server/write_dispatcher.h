// One thread that starts gRPC stream writes on behalf of the engine loop. Starting a
// write (StartWrite, Finish) runs the transport's work inline on the calling thread,
// ~10 us a call: at 256 streams that is milliseconds of every engine step. The engine's
// update callbacks queue the stream instead and return at once.
#pragma once

#include <deque>
#include <thread>

#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"

namespace mf::server {

class WriteDispatcher {
 public:
  // The process's dispatcher. It is never destroyed: calls still finish on it while the
  // server shuts down.
  static WriteDispatcher& Get();

  // Runs `task` on the dispatcher thread, in the order posted.
  void Post(absl::AnyInvocable<void() &&> task);

 private:
  WriteDispatcher();
  void Loop();
  bool HasTasks() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return !tasks_.empty(); }

  absl::Mutex mutex_;
  std::deque<absl::AnyInvocable<void() &&>> tasks_ ABSL_GUARDED_BY(mutex_);
  std::thread thread_;
};

}  // namespace mf::server
