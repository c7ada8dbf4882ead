// The work after a step that does not decide the next one, on a thread of its own, in
// the order the engine loop posts it: requests' update callbacks and the expert
// statistics. A callback serializes a message and queues its stream's write, ~2 us an
// update, and counting a step's routed slots takes ~0.2 ms: at 256 streams, ~0.8 ms of
// every step that on the loop thread delayed the next forward pass by as much.
#pragma once

#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/sequence.h"

namespace mf {

// One update on its way to its request's callback. The callback is shared with the
// request's Sequence: the engine may finish and drop a sequence while earlier updates
// still wait here.
struct PendingUpdate {
  std::shared_ptr<const UpdateCallback> callback;
  GenerationUpdate update;
};

class UpdateDelivery {
 public:
  UpdateDelivery();
  // Delivers everything posted, then stops the thread.
  ~UpdateDelivery();
  UpdateDelivery(const UpdateDelivery&) = delete;
  UpdateDelivery& operator=(const UpdateDelivery&) = delete;

  // Queues a batch of updates; they run after everything posted before them.
  void Post(std::vector<PendingUpdate> batch);
  // Queues a task likewise.
  void Run(absl::AnyInvocable<void() &&> task);
  // Waits until everything posted so far has run. False on timeout.
  bool WaitUntilDelivered(absl::Duration timeout);
  // Time spent running callbacks and tasks.
  double busy_seconds() const;

 private:
  // A batch of updates, or a task.
  struct Job {
    std::vector<PendingUpdate> updates;
    absl::AnyInvocable<void() &&> task;
  };
  void Enqueue(Job job);
  void Loop();
  bool HasWorkOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return stopping_ || !queue_.empty(); }
  bool AllDelivered() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return delivered_ == posted_; }

  mutable absl::Mutex mutex_;
  std::deque<Job> queue_ ABSL_GUARDED_BY(mutex_);
  uint64_t posted_ ABSL_GUARDED_BY(mutex_) = 0;     // jobs
  uint64_t delivered_ ABSL_GUARDED_BY(mutex_) = 0;  // jobs that have run to the end
  double busy_seconds_ ABSL_GUARDED_BY(mutex_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread thread_;
};

}  // namespace mf
