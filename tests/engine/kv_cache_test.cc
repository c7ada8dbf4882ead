#include "engine/kv_cache.h"

#include <gtest/gtest.h>

#include <set>

#include "engine/cpu/cpu_backend.h"
#include "tests/test_util.h"

namespace mf {
namespace {

TEST(BlockAllocatorTest, AllocatesDistinctBlocksUntilExhausted) {
  BlockAllocator allocator(5);
  auto first = allocator.Allocate(3);
  ASSERT_TRUE(first.ok());
  auto second = allocator.Allocate(2);
  ASSERT_TRUE(second.ok());
  std::set<int32_t> all(first->begin(), first->end());
  all.insert(second->begin(), second->end());
  EXPECT_EQ(all.size(), 5u);
  EXPECT_EQ(allocator.num_free_blocks(), 0);
  auto third = allocator.Allocate(1);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  allocator.Release(*first);
  EXPECT_EQ(allocator.num_free_blocks(), 3);
  EXPECT_EQ(allocator.num_used_blocks(), 2);
}

TEST(BlockAllocatorTest, FailedAllocationTakesNothing) {
  BlockAllocator allocator(4);
  ASSERT_TRUE(allocator.Allocate(3).ok());
  EXPECT_FALSE(allocator.Allocate(2).ok());
  EXPECT_EQ(allocator.num_free_blocks(), 1);
}

TEST(BlockAllocatorTest, SharedBlocksFreeOnLastRelease) {
  BlockAllocator allocator(2);
  auto blocks = allocator.Allocate(1);
  ASSERT_TRUE(blocks.ok());
  allocator.AddReference(blocks->front());
  EXPECT_EQ(allocator.ref_count(blocks->front()), 2);
  allocator.Release(*blocks);
  EXPECT_EQ(allocator.num_free_blocks(), 1);
  allocator.Release(*blocks);
  EXPECT_EQ(allocator.num_free_blocks(), 2);
  allocator.Release(*blocks);  // a stray extra release must not duplicate the block
  EXPECT_EQ(allocator.num_free_blocks(), 2);
}

TEST(KvCacheTest, SizedFromBytesWithOneVectorPerTokenWhenKEqualsV) {
  auto config = LoadModelConfig(testing::ReferenceDir("molm-tiny") + "/config.json");
  ASSERT_TRUE(config.ok());
  auto backend = MakeCpuBackend();
  KvCacheOptions options;
  options.block_size = 16;
  options.memory_bytes = 1 << 20;
  auto cache = KvCache::Create(*backend, *config, options);
  ASSERT_TRUE(cache.ok()) << cache.status();
  // 2 layers x 16 tokens x 64 floats x 4 bytes = 8 KiB per block.
  EXPECT_EQ(cache->allocator().num_blocks(), 128);
  EXPECT_EQ(cache->row_width(), 64);
  EXPECT_EQ(cache->memory_bytes(), 1 << 20);
  EXPECT_EQ(cache->BlocksFor(33), 3);
  options.memory_bytes = 100;
  EXPECT_EQ(KvCache::Create(*backend, *config, options).status().code(), absl::StatusCode::kInvalidArgument);
  // A fraction of free memory: a tiny fraction of this machine's RAM still holds many blocks.
  options.memory_fraction = 1e-4;
  auto by_fraction = KvCache::Create(*backend, *config, options);
  ASSERT_TRUE(by_fraction.ok()) << by_fraction.status();
  const int64_t expected_bytes = static_cast<int64_t>(1e-4 * static_cast<double>(*backend->FreeMemoryBytes()));
  EXPECT_NEAR(static_cast<double>(by_fraction->memory_bytes()), static_cast<double>(expected_bytes), 0.05 * expected_bytes + 8192);
  options.memory_fraction = 1.5;
  EXPECT_EQ(KvCache::Create(*backend, *config, options).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mf
