// The offsets of recorded steps' scratch: first fit, reuse after a free, coalescing, and
// the refusal when nothing fits (the backend then allocates as usual). No GPU needed.
#include "engine/cuda/capture_arena.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace mf {
namespace {

TEST(CaptureArenaTest, TakesFirstFitAlignedAndReusesFreedRanges) {
  CaptureArena arena(4096);
  EXPECT_EQ(arena.capacity(), 4096u);
  EXPECT_EQ(arena.Take(100), 0u);
  EXPECT_EQ(arena.Take(256), 256u);
  EXPECT_EQ(arena.Take(1), 512u);
  EXPECT_EQ(arena.in_use(), 768u);
  arena.Give(256, 256);
  EXPECT_EQ(arena.Take(200), 256u);  // the freed range, first
  EXPECT_EQ(arena.Take(300), 768u);  // too big for any hole: after the last
  EXPECT_EQ(arena.peak(), 1280u);
}

TEST(CaptureArenaTest, CoalescesNeighboursAndRefusesWhatDoesNotFit) {
  CaptureArena arena(1024);
  ASSERT_EQ(arena.Take(256), 0u);
  ASSERT_EQ(arena.Take(256), 256u);
  ASSERT_EQ(arena.Take(256), 512u);
  ASSERT_EQ(arena.Take(256), 768u);
  EXPECT_FALSE(arena.Take(1).has_value());
  arena.Give(256, 256);
  arena.Give(768, 256);
  EXPECT_FALSE(arena.Take(512).has_value());  // two holes of 256, not touching
  arena.Give(512, 256);                       // joins both
  EXPECT_EQ(arena.Take(768), 256u);
  arena.Give(0, 256);
  arena.Give(256, 768);
  EXPECT_EQ(arena.in_use(), 0u);
  EXPECT_EQ(arena.Take(1024), 0u);  // one range again
}

// Random takes and gives never hand out overlapping ranges and always end whole.
TEST(CaptureArenaTest, RandomTakesAndGivesNeverOverlap) {
  CaptureArena arena(1 << 20);
  std::mt19937 rng(5);
  struct Held {
    size_t offset, bytes;
  };
  std::vector<Held> held;
  for (int step = 0; step < 5000; ++step) {
    if (!held.empty() && (rng() % 2 == 0 || held.size() > 40)) {
      const size_t index = rng() % held.size();
      arena.Give(held[index].offset, held[index].bytes);
      held.erase(held.begin() + static_cast<std::ptrdiff_t>(index));
      continue;
    }
    const size_t bytes = 1 + rng() % 60000;
    const std::optional<size_t> offset = arena.Take(bytes);
    if (!offset.has_value()) continue;
    EXPECT_EQ(*offset % CaptureArena::kAlignment, 0u);
    EXPECT_LE(*offset + bytes, arena.capacity());
    for (const Held& other : held) {
      EXPECT_TRUE(*offset + bytes <= other.offset || other.offset + other.bytes <= *offset);
    }
    held.push_back({*offset, bytes});
  }
  for (const Held& h : held) arena.Give(h.offset, h.bytes);
  EXPECT_EQ(arena.in_use(), 0u);
  EXPECT_EQ(arena.Take(arena.capacity()), 0u);
}

}  // namespace
}  // namespace mf
