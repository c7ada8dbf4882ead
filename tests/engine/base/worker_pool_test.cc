#include "engine/base/worker_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <random>
#include <set>
#include <thread>

namespace mf {
namespace {

TEST(WorkerPoolTest, EveryIndexRunsOnceInEveryJob) {
  WorkerPool pool(3);
  std::mt19937 rng(5);
  for (int job = 0; job < 2000; ++job) {
    const int count = static_cast<int>(rng() % 300);
    std::vector<std::atomic<int>> runs(static_cast<size_t>(count));
    pool.ParallelFor(count, [&](int i) { runs[static_cast<size_t>(i)].fetch_add(1); });
    for (int i = 0; i < count; ++i) ASSERT_EQ(runs[static_cast<size_t>(i)].load(), 1) << "job " << job << " index " << i;
  }
}

TEST(WorkerPoolTest, SpreadsWorkOverTheHelpers) {
  WorkerPool pool(3);
  std::mutex mutex;
  std::set<std::thread::id> threads;
  pool.ParallelFor(64, [&](int) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // long enough for every helper to wake
    std::lock_guard<std::mutex> lock(mutex);
    threads.insert(std::this_thread::get_id());
  });
  EXPECT_GE(threads.size(), 2u);
  EXPECT_LE(threads.size(), 4u);  // three helpers and the caller
}

TEST(WorkerPoolTest, WithoutHelpersRunsOnTheCaller) {
  WorkerPool pool(0);
  std::vector<std::thread::id> threads;
  pool.ParallelFor(5, [&](int) { threads.push_back(std::this_thread::get_id()); });
  ASSERT_EQ(threads.size(), 5u);
  for (const auto& id : threads) EXPECT_EQ(id, std::this_thread::get_id());
}

TEST(WorkerPoolTest, StopsWithIdleHelpers) {
  for (int i = 0; i < 50; ++i) {
    WorkerPool pool(4);
    if (i % 2 == 0) pool.ParallelFor(10, [](int) {});
  }  // each destructor joins its helpers; a hang fails the test by timeout
}

}  // namespace
}  // namespace mf
