#include "engine/base/worker_pool.h"

namespace mf {

WorkerPool::WorkerPool(int num_threads) {
  for (int i = 0; i < num_threads; ++i) threads_.emplace_back([this] { HelperLoop(); });
}

WorkerPool::~WorkerPool() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  for (std::thread& thread : threads_) thread.join();
}

void WorkerPool::ParallelFor(int count, absl::FunctionRef<void(int)> body) {
  if (threads_.empty() || count <= 1) {
    for (int i = 0; i < count; ++i) body(i);
    return;
  }
  {
    absl::MutexLock lock(&mutex_);
    body_ = &body;
    count_ = count;
    next_index_.store(0);
    helpers_done_ = 0;
    ++generation_;
  }
  RunItems(body, count);
  absl::MutexLock lock(&mutex_);
  const int helpers = num_threads();
  auto all_done = [this, helpers]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return helpers_done_ == helpers; };
  mutex_.Await(absl::Condition(&all_done));
  body_ = nullptr;
}

void WorkerPool::RunItems(absl::FunctionRef<void(int)> body, int count) {
  for (int i = next_index_.fetch_add(1); i < count; i = next_index_.fetch_add(1)) body(i);
}

void WorkerPool::HelperLoop() {
  uint64_t seen = 0;
  while (true) {
    const absl::FunctionRef<void(int)>* body = nullptr;
    int count = 0;
    {
      absl::MutexLock lock(&mutex_);
      auto has_job = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return stopping_ || generation_ != seen; };
      mutex_.Await(absl::Condition(&has_job));
      if (stopping_) return;
      seen = generation_;
      body = body_;
      count = count_;
    }
    RunItems(*body, count);
    absl::MutexLock lock(&mutex_);
    ++helpers_done_;
  }
}

}  // namespace mf
