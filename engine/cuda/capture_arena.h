// Placement of the scratch tensors a recorded step allocates. Recorded steps (CUDA graphs)
// replay one at a time on the backend's stream, so they can all place their scratch in one
// block of device memory allocated up front, instead of through stream-ordered allocations:
// those become allocation and free nodes between the graph's kernels, and such nodes keep a
// kernel from starting under the previous one's tail (bench/launch_chain_bench measures it).
// This class only keeps the offsets (first fit, freed ranges coalesced); the backend owns
// the memory. Within one recording a range freed in program order can be taken again
// later: stream order puts every use of it before the next owner's.
#pragma once

#include <cstddef>
#include <map>
#include <optional>

namespace mf {

class CaptureArena {
 public:
  static constexpr size_t kAlignment = 256;

  explicit CaptureArena(size_t bytes);
  // The offset of `bytes` (rounded up to kAlignment) in the first free range that holds
  // them, or nothing when none does.
  std::optional<size_t> Take(size_t bytes);
  // Returns what Take(bytes) gave at `offset`.
  void Give(size_t offset, size_t bytes);

  size_t capacity() const { return capacity_; }
  size_t in_use() const { return in_use_; }
  size_t peak() const { return peak_; }

 private:
  static size_t Rounded(size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

  size_t capacity_;
  size_t in_use_ = 0, peak_ = 0;
  std::map<size_t, size_t> free_;  // offset -> length; no two ranges touch
};

}  // namespace mf
