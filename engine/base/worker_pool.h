// A fixed set of threads that the engine loop hands independent per-row work to (host
// sampling of a large batch), then waits for: a parallel for, not a task queue. Each
// index is one row that no other index touches, so the rows need no locking.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

namespace mf {

class WorkerPool {
 public:
  // `num_threads` helpers besides the calling thread; 0 runs everything on the caller.
  explicit WorkerPool(int num_threads);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Calls body(i) for every i in [0, count), on the helpers and the calling thread, and
  // returns when all calls have returned. Calls from one thread at a time.
  void ParallelFor(int count, absl::FunctionRef<void(int)> body);

  int num_threads() const { return static_cast<int>(threads_.size()); }

 private:
  void HelperLoop();
  // Takes indices of the current job until none is left.
  void RunItems(absl::FunctionRef<void(int)> body, int count);

  absl::Mutex mutex_;
  // The current job: every helper checks in and out of each generation, so no helper can
  // still be on one job when the next begins.
  const absl::FunctionRef<void(int)>* body_ ABSL_GUARDED_BY(mutex_) = nullptr;
  int count_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t generation_ ABSL_GUARDED_BY(mutex_) = 0;
  int helpers_done_ ABSL_GUARDED_BY(mutex_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::atomic<int> next_index_{0};
  std::vector<std::thread> threads_;
};

}  // namespace mf
