#include "server/write_dispatcher.h"

#include <utility>

namespace mf::server {

WriteDispatcher& WriteDispatcher::Get() {
  static WriteDispatcher* dispatcher = new WriteDispatcher();
  return *dispatcher;
}

WriteDispatcher::WriteDispatcher() : thread_([this] { Loop(); }) { thread_.detach(); }

void WriteDispatcher::Post(absl::AnyInvocable<void() &&> task) {
  absl::MutexLock lock(&mutex_);
  tasks_.push_back(std::move(task));
}

void WriteDispatcher::Loop() {
  while (true) {
    std::deque<absl::AnyInvocable<void() &&>> batch;
    {
      absl::MutexLock lock(&mutex_);
      mutex_.Await(absl::Condition(this, &WriteDispatcher::HasTasks));
      batch.swap(tasks_);
    }
    for (auto& task : batch) std::move(task)();
  }
}

}  // namespace mf::server
