#include "engine/base/serial_executor.h"

#include <gtest/gtest.h>

#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"

namespace mf {
namespace {

struct Recorder {
  absl::Mutex mutex;
  std::vector<int> values;
  std::vector<std::thread::id> threads;

  void Add(int value) {
    absl::MutexLock lock(&mutex);
    values.push_back(value);
    threads.push_back(std::this_thread::get_id());
  }
};

TEST(SerialExecutorTest, RunsTasksInOrderOnItsOwnThread) {
  Recorder recorder;
  SerialExecutor executor;
  for (int value = 1; value <= 5; ++value) executor.Post([&recorder, value] { recorder.Add(value); });
  ASSERT_TRUE(executor.WaitUntilIdle(absl::Seconds(10)));
  EXPECT_GT(executor.busy_seconds(), 0);
  absl::MutexLock lock(&recorder.mutex);
  EXPECT_EQ(recorder.values, (std::vector<int>{1, 2, 3, 4, 5}));
  for (const std::thread::id thread : recorder.threads) EXPECT_NE(thread, std::this_thread::get_id());
}

TEST(SerialExecutorTest, WaitUntilIdleWaitsForARunningTask) {
  absl::Notification entered, release;
  SerialExecutor executor;
  executor.Post([&] {
    entered.Notify();
    release.WaitForNotification();
  });
  entered.WaitForNotification();
  EXPECT_FALSE(executor.WaitUntilIdle(absl::Milliseconds(50)));
  release.Notify();
  EXPECT_TRUE(executor.WaitUntilIdle(absl::Seconds(10)));
}

TEST(SerialExecutorTest, DestructionRunsWhatWasPosted) {
  Recorder recorder;
  {
    SerialExecutor executor;
    for (int value = 7; value <= 9; ++value) executor.Post([&recorder, value] { recorder.Add(value); });
  }
  absl::MutexLock lock(&recorder.mutex);
  EXPECT_EQ(recorder.values, (std::vector<int>{7, 8, 9}));
}

// The engine drops a finished request's Sequence at once; its queued updates keep the
// callback alive until they ran, and the last reference dies off the posting thread.
TEST(SerialExecutorTest, TasksOwnWhatTheyCaptureUntilTheyRan) {
  Recorder recorder;
  SerialExecutor executor;
  auto callback = std::make_shared<const std::function<void(int)>>([&recorder](int value) { recorder.Add(value); });
  std::weak_ptr<const std::function<void(int)>> watch = callback;
  executor.Post([callback] { (*callback)(1); });
  executor.Post([callback] { (*callback)(2); });
  callback.reset();
  ASSERT_TRUE(executor.WaitUntilIdle(absl::Seconds(10)));
  EXPECT_TRUE(watch.expired());
  absl::MutexLock lock(&recorder.mutex);
  EXPECT_EQ(recorder.values, (std::vector<int>{1, 2}));
}

}  // namespace
}  // namespace mf
