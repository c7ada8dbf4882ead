// Runs requests' update callbacks on a thread of their own, in the order the engine loop
// produced the updates. A callback serializes a message and queues its stream's write,
// ~2 us an update: at 256 streams that is ~0.6 ms of every step, which on the loop
// thread delayed the next forward pass by as much. The loop now hands each step's updates
// over in one batch and goes on scheduling.
#pragma once

#include <deque>
#include <memory>
#include <thread>
#include <vector>

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

  // Queues a batch; its updates run after every batch posted before it.
  void Post(std::vector<PendingUpdate> batch);
  // Waits until every update posted so far has been delivered. False on timeout.
  bool WaitUntilDelivered(absl::Duration timeout);
  // Time spent inside callbacks.
  double callback_seconds() const;

 private:
  void Loop();
  bool HasWorkOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return stopping_ || !queue_.empty(); }
  bool AllDelivered() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return delivered_ == posted_; }

  mutable absl::Mutex mutex_;
  std::deque<std::vector<PendingUpdate>> queue_ ABSL_GUARDED_BY(mutex_);
  uint64_t posted_ ABSL_GUARDED_BY(mutex_) = 0;     // batches
  uint64_t delivered_ ABSL_GUARDED_BY(mutex_) = 0;  // batches whose callbacks have all returned
  double callback_seconds_ ABSL_GUARDED_BY(mutex_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread thread_;
};

}  // namespace mf
