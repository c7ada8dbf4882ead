#include "engine/cuda/capture_arena.h"

#include <algorithm>
#include <iterator>

namespace mf {

CaptureArena::CaptureArena(size_t bytes) : capacity_(bytes / kAlignment * kAlignment) {
  if (capacity_ > 0) free_.emplace(0, capacity_);
}

std::optional<size_t> CaptureArena::Take(size_t bytes) {
  const size_t length = Rounded(std::max<size_t>(bytes, 1));
  for (auto range = free_.begin(); range != free_.end(); ++range) {
    if (range->second < length) continue;
    const size_t offset = range->first, left = range->second - length;
    free_.erase(range);
    if (left > 0) free_.emplace(offset + length, left);
    in_use_ += length;
    peak_ = std::max(peak_, in_use_);
    return offset;
  }
  return std::nullopt;
}

void CaptureArena::Give(size_t offset, size_t bytes) {
  size_t length = Rounded(std::max<size_t>(bytes, 1));
  in_use_ -= length;
  auto next = free_.lower_bound(offset);
  if (next != free_.end() && offset + length == next->first) {  // merge with the range after
    length += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {  // and with the range before
    auto previous = std::prev(next);
    if (previous->first + previous->second == offset) {
      previous->second += length;
      return;
    }
  }
  free_.emplace(offset, length);
}

}  // namespace mf
