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
  if (!batch.empty()) Enqueue(Job{std::move(batch), nullptr});
}

void UpdateDelivery::Run(absl::AnyInvocable<void() &&> task) { Enqueue(Job{{}, std::move(task)}); }

void UpdateDelivery::Enqueue(Job job) {
  absl::MutexLock lock(&mutex_);
  queue_.push_back(std::move(job));
  ++posted_;
}

bool UpdateDelivery::WaitUntilDelivered(absl::Duration timeout) {
  absl::MutexLock lock(&mutex_);
  return mutex_.AwaitWithTimeout(absl::Condition(this, &UpdateDelivery::AllDelivered), timeout);
}

double UpdateDelivery::busy_seconds() const {
  absl::MutexLock lock(&mutex_);
  return busy_seconds_;
}

void UpdateDelivery::Loop() {
  while (true) {
    std::deque<Job> jobs;
    {
      absl::MutexLock lock(&mutex_);
      mutex_.Await(absl::Condition(this, &UpdateDelivery::HasWorkOrStop));
      if (queue_.empty()) return;  // stopping, and everything has run
      jobs.swap(queue_);
    }
    const absl::Time start = absl::Now();
    const uint64_t num_jobs = jobs.size();
    for (Job& job : jobs) {
      for (PendingUpdate& pending : job.updates) (*pending.callback)(std::move(pending.update));
      if (job.task) std::move(job.task)();
    }
    // Dropping the jobs here (the last references to finished requests' callbacks)
    // keeps their destruction off the loop thread too.
    jobs.clear();
    const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
    absl::MutexLock lock(&mutex_);
    delivered_ += num_jobs;
    busy_seconds_ += seconds;
  }
}

}  // namespace mf
