#include "engine/update_delivery.h"

#include <gtest/gtest.h>

#include <thread>

#include "absl/synchronization/notification.h"

namespace mf {
namespace {

struct Recorder {
  absl::Mutex mutex;
  std::vector<int> tokens;
  std::vector<std::thread::id> threads;

  std::shared_ptr<const UpdateCallback> Callback() {
    return std::make_shared<const UpdateCallback>([this](GenerationUpdate&& update) {
      absl::MutexLock lock(&mutex);
      tokens.insert(tokens.end(), update.tokens.begin(), update.tokens.end());
      threads.push_back(std::this_thread::get_id());
    });
  }
};

std::vector<PendingUpdate> Batch(const std::shared_ptr<const UpdateCallback>& callback, std::vector<int32_t> tokens) {
  std::vector<PendingUpdate> batch;
  for (int32_t token : tokens) {
    GenerationUpdate update;
    update.tokens = {token};
    batch.push_back({callback, std::move(update)});
  }
  return batch;
}

TEST(UpdateDeliveryTest, RunsBatchesAndTasksInOrderOnItsOwnThread) {
  Recorder recorder;
  UpdateDelivery delivery;
  const auto callback = recorder.Callback();
  delivery.Post(Batch(callback, {1, 2, 3}));
  delivery.Post({});  // an empty batch is no batch
  delivery.Run([&] {
    absl::MutexLock lock(&recorder.mutex);
    recorder.tokens.push_back(-1);  // a task runs between the batches posted around it
  });
  delivery.Post(Batch(callback, {4, 5}));
  ASSERT_TRUE(delivery.WaitUntilDelivered(absl::Seconds(10)));
  EXPECT_GT(delivery.busy_seconds(), 0);
  absl::MutexLock lock(&recorder.mutex);
  EXPECT_EQ(recorder.tokens, (std::vector<int>{1, 2, 3, -1, 4, 5}));
  for (const std::thread::id thread : recorder.threads) EXPECT_NE(thread, std::this_thread::get_id());
}

TEST(UpdateDeliveryTest, WaitUntilDeliveredWaitsForARunningCallback) {
  absl::Notification entered, release;
  UpdateDelivery delivery;
  std::vector<PendingUpdate> batch;
  batch.push_back({std::make_shared<const UpdateCallback>([&](GenerationUpdate&&) {
                     entered.Notify();
                     release.WaitForNotification();
                   }),
                   GenerationUpdate{}});
  delivery.Post(std::move(batch));
  entered.WaitForNotification();
  EXPECT_FALSE(delivery.WaitUntilDelivered(absl::Milliseconds(50)));
  release.Notify();
  EXPECT_TRUE(delivery.WaitUntilDelivered(absl::Seconds(10)));
}

TEST(UpdateDeliveryTest, DestructionDeliversWhatWasPosted) {
  Recorder recorder;
  {
    UpdateDelivery delivery;
    delivery.Post(Batch(recorder.Callback(), {7, 8, 9}));
  }
  absl::MutexLock lock(&recorder.mutex);
  EXPECT_EQ(recorder.tokens, (std::vector<int>{7, 8, 9}));
}

// The engine drops a finished request's Sequence at once; its pending updates keep the
// callback alive until the last one ran, and the last reference dies off the caller.
TEST(UpdateDeliveryTest, PendingUpdatesOwnTheirCallback) {
  Recorder recorder;
  UpdateDelivery delivery;
  auto callback = recorder.Callback();
  std::weak_ptr<const UpdateCallback> watch = callback;
  delivery.Post(Batch(callback, {1, 2}));
  callback.reset();
  ASSERT_TRUE(delivery.WaitUntilDelivered(absl::Seconds(10)));
  EXPECT_TRUE(watch.expired());
  absl::MutexLock lock(&recorder.mutex);
  EXPECT_EQ(recorder.tokens, (std::vector<int>{1, 2}));
}

}  // namespace
}  // namespace mf
