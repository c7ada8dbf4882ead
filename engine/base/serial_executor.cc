#include "engine/base/serial_executor.h"

#include <utility>

#include "absl/time/clock.h"

namespace mf {

SerialExecutor::SerialExecutor() : thread_([this] { Loop(); }) {}

SerialExecutor::~SerialExecutor() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  thread_.join();
}

void SerialExecutor::Post(absl::AnyInvocable<void() &&> task) {
  absl::MutexLock lock(&mutex_);
  queue_.push_back(std::move(task));
  ++num_posted_;
}

bool SerialExecutor::WaitUntilIdle(absl::Duration timeout) {
  absl::MutexLock lock(&mutex_);
  return mutex_.AwaitWithTimeout(absl::Condition(this, &SerialExecutor::AllRun), timeout);
}

double SerialExecutor::busy_seconds() const {
  absl::MutexLock lock(&mutex_);
  return busy_seconds_;
}

void SerialExecutor::Loop() {
  while (true) {
    std::deque<absl::AnyInvocable<void() &&>> tasks;
    {
      absl::MutexLock lock(&mutex_);
      mutex_.Await(absl::Condition(this, &SerialExecutor::HasWorkOrStop));
      if (queue_.empty()) return;  // stopping, and everything has run
      tasks.swap(queue_);
    }
    const absl::Time start = absl::Now();
    const uint64_t num_tasks = tasks.size();
    for (auto& task : tasks) std::move(task)();
    tasks.clear();  // what the tasks captured dies here, off the posting thread
    const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
    absl::MutexLock lock(&mutex_);
    num_run_ += num_tasks;
    busy_seconds_ += seconds;
  }
}

}  // namespace mf
