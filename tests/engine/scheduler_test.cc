#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include <numeric>

namespace mf {
namespace {

class SchedulerTest : public ::testing::Test {
 protected:
  Sequence* Add(int prompt_length, int priority = 0) {
    auto sequence = std::make_unique<Sequence>();
    sequence->id = sequences_.size() + 1;
    sequence->arrival_time = absl::UnixEpoch() + absl::Seconds(static_cast<double>(sequences_.size()));
    sequence->tokens.resize(static_cast<size_t>(prompt_length));
    std::iota(sequence->tokens.begin(), sequence->tokens.end(), static_cast<int32_t>(100 * sequences_.size()));
    sequence->prompt_length = sequence->tokens.size();
    sequence->request.priority = priority;
    sequences_.push_back(std::move(sequence));
    scheduler_->AddWaiting(sequences_.back().get());
    return sequences_.back().get();
  }

  // Runs a step as the engine would: every sequence that finished its pending tokens samples one more.
  SchedulePlan Step() {
    SchedulePlan plan = scheduler_->Schedule();
    scheduler_->CompleteStep(plan);
    for (const ScheduledChunk& chunk : plan.chunks) {
      if (chunk.sequence->num_pending() == 0) chunk.sequence->tokens.push_back(7);
    }
    return plan;
  }

  int TokensFor(const SchedulePlan& plan, const Sequence* sequence) {
    for (const ScheduledChunk& chunk : plan.chunks) {
      if (chunk.sequence == sequence) return chunk.num_tokens;
    }
    return 0;
  }

  void Configure(int num_blocks, int max_batch_tokens, int block_size = 4) {
    allocator_ = std::make_unique<BlockAllocator>(num_blocks, block_size);
    scheduler_ = std::make_unique<Scheduler>(SchedulerConfig{max_batch_tokens, 256}, *allocator_);
  }

  std::unique_ptr<BlockAllocator> allocator_;
  std::unique_ptr<Scheduler> scheduler_;
  std::vector<std::unique_ptr<Sequence>> sequences_;
};

TEST_F(SchedulerTest, ChunksLongPromptsWhileOthersDecode) {
  Configure(64, 8);
  Sequence* short_prompt = Add(3);
  SchedulePlan first = Step();
  EXPECT_EQ(TokensFor(first, short_prompt), 3);
  Sequence* long_prompt = Add(20);
  SchedulePlan second = Step();
  EXPECT_EQ(TokensFor(second, short_prompt), 1);  // the decode goes first
  EXPECT_EQ(TokensFor(second, long_prompt), 7);   // the prompt takes what is left of the budget
  SchedulePlan third = Step();
  EXPECT_EQ(TokensFor(third, short_prompt), 1);
  EXPECT_EQ(TokensFor(third, long_prompt), 7);
  SchedulePlan fourth = Step();
  EXPECT_EQ(TokensFor(fourth, long_prompt), 6);
  EXPECT_EQ(long_prompt->num_generated(), 1);
}

// A newcomer beside a long prompt starts in the next step, not after the prompt's last chunk.
TEST_F(SchedulerTest, LongPromptsLeaveRoomForWaitingRequests) {
  Configure(256, 16);
  Sequence* long_prompt = Add(200);
  EXPECT_EQ(TokensFor(Step(), long_prompt), 16);  // nobody waits: the whole budget
  Sequence* short_prompt = Add(3);
  SchedulePlan second = Step();
  EXPECT_EQ(TokensFor(second, short_prompt), 3);
  EXPECT_EQ(TokensFor(second, long_prompt), 13);
  EXPECT_EQ(short_prompt->num_generated(), 1);  // its first token after one step
  Sequence* another_long = Add(100);
  SchedulePlan third = Step();
  EXPECT_EQ(TokensFor(third, short_prompt), 1);     // the decode first
  EXPECT_EQ(TokensFor(third, long_prompt), 7);      // leaves half the budget
  EXPECT_EQ(TokensFor(third, another_long), 8);     // to the waiting head
  SchedulePlan fourth = Step();                     // nobody waits any more
  EXPECT_EQ(TokensFor(fourth, short_prompt), 1);
  EXPECT_EQ(TokensFor(fourth, long_prompt) + TokensFor(fourth, another_long), 15);
}

TEST_F(SchedulerTest, AdmitsByPriorityThenArrival) {
  Configure(64, 4);
  Sequence* late_low = Add(4, /*priority=*/5);
  Sequence* urgent = Add(4, /*priority=*/-1);
  Sequence* normal = Add(4, /*priority=*/0);
  EXPECT_EQ(TokensFor(Step(), urgent), 4);
  SchedulePlan second = Step();
  EXPECT_EQ(TokensFor(second, urgent), 1);
  EXPECT_EQ(TokensFor(second, normal), 3);
  EXPECT_EQ(TokensFor(second, late_low), 0);
}

TEST_F(SchedulerTest, PreemptsTheLowestPriorityLatestWhenBlocksRunOut) {
  Configure(/*num_blocks=*/4, 64);  // 16 token slots
  Sequence* first = Add(7);
  Sequence* second = Add(7);
  Step();  // both prefill: 2 blocks each, all blocks used
  EXPECT_EQ(allocator_->num_free_blocks(), 0);
  // Both decode 1 token: 8 tokens each still fit in 2 blocks.
  Step();
  // The next decode needs a third block for `first`: `second` (later) is preempted.
  SchedulePlan plan = Step();
  ASSERT_EQ(plan.preempted.size(), 1u);
  EXPECT_EQ(plan.preempted[0], second);
  EXPECT_EQ(second->num_cached, 0);
  EXPECT_TRUE(second->block_table.empty());
  EXPECT_EQ(TokensFor(plan, first), 1);
  EXPECT_EQ(scheduler_->num_waiting(), 1);
  scheduler_->Remove(first);
  // With `first` gone, `second` is recomputed: all its tokens (prompt and generated) run again.
  SchedulePlan again = Step();
  EXPECT_EQ(TokensFor(again, second), 9);
  scheduler_->Remove(second);
  EXPECT_EQ(allocator_->num_used_blocks(), 0);
}

TEST_F(SchedulerTest, ReusesCachedPrefixBlocks) {
  Configure(32, 64);
  Sequence* first = Add(10);
  Step();
  scheduler_->Remove(first);  // its 2 full blocks stay in the prefix cache
  EXPECT_EQ(allocator_->num_cached_blocks(), 2);
  Sequence* second = Add(0);
  second->tokens = std::vector<int32_t>(first->tokens.begin(), first->tokens.begin() + 10);
  second->tokens.push_back(99);
  second->prompt_length = second->tokens.size();
  SchedulePlan plan = Step();
  EXPECT_EQ(TokensFor(plan, second), 3);  // 8 of 11 prompt tokens come from the cache
  EXPECT_EQ(second->cached_prompt_tokens, 8);
  EXPECT_EQ(scheduler_->prefix_cache_hit_tokens(), 8);
}

TEST(BlockAllocatorPrefixTest, CachedBlocksAreEvictedLeastRecentlyUsedFirst) {
  BlockAllocator allocator(3, 2);
  const std::vector<int32_t> tokens_a = {1, 2}, tokens_b = {3, 4};
  auto blocks = *allocator.Allocate(2);
  allocator.CommitFullBlock(blocks[0], 0, tokens_a);
  allocator.CommitFullBlock(blocks[1], 0, tokens_b);
  allocator.Release({blocks[0]});
  allocator.Release({blocks[1]});
  EXPECT_EQ(allocator.num_free_blocks(), 3);  // cached blocks still count as available
  EXPECT_EQ(allocator.num_cached_blocks(), 2);
  ASSERT_TRUE(allocator.Allocate(2).ok());   // the never-used block, then the LRU cached one (A)
  uint64_t hash = 0;
  EXPECT_TRUE(allocator.MatchPrefix(tokens_a, 1, &hash).empty());
  EXPECT_EQ(allocator.MatchPrefix(tokens_b, 1, &hash), std::vector<int32_t>{blocks[1]});
  EXPECT_EQ(allocator.ref_count(blocks[1]), 1);
}

}  // namespace
}  // namespace mf
