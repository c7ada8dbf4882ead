#include "engine/update_delivery.h"

#include <utility>

#include "absl/time/clock.h"

namespace mf {

UpdateDelivery::UpdateDelivery() : thread_([this] { Loop(); }) {}

UpdateDelivery::~UpdateDelivery() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  thread_.join();
}

void UpdateDelivery::Post(std::vector<PendingUpdate> batch) {
  if (batch.empty()) return;
  absl::MutexLock lock(&mutex_);
  queue_.push_back(std::move(batch));
  ++posted_;
}

bool UpdateDelivery::WaitUntilDelivered(absl::Duration timeout) {
  absl::MutexLock lock(&mutex_);
  return mutex_.AwaitWithTimeout(absl::Condition(this, &UpdateDelivery::AllDelivered), timeout);
}

double UpdateDelivery::callback_seconds() const {
  absl::MutexLock lock(&mutex_);
  return callback_seconds_;
}

void UpdateDelivery::Loop() {
  while (true) {
    std::deque<std::vector<PendingUpdate>> batches;
    {
      absl::MutexLock lock(&mutex_);
      mutex_.Await(absl::Condition(this, &UpdateDelivery::HasWorkOrStop));
      if (queue_.empty()) return;  // stopping, and everything is delivered
      batches.swap(queue_);
    }
    const absl::Time start = absl::Now();
    const uint64_t num_batches = batches.size();
    for (std::vector<PendingUpdate>& batch : batches) {
      for (PendingUpdate& pending : batch) (*pending.callback)(std::move(pending.update));
    }
    // Dropping the batches here (the last references to finished requests' callbacks)
    // keeps their destruction off the loop thread too.
    batches.clear();
    const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
    absl::MutexLock lock(&mutex_);
    delivered_ += num_batches;
    callback_seconds_ += seconds;
  }
}

}  // namespace mf
