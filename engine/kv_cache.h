// The paged KV cache: fixed-size blocks of token rows per layer, and the
// allocator that hands blocks to sequences. One vector per token per layer when
// K = V (every MoLM checkpoint); key then value otherwise.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/config.h"

namespace mf {

// Owns block ids: a free list plus a reference count per block (blocks may be
// shared by sequences with a common prefix).
class BlockAllocator {
 public:
  explicit BlockAllocator(int num_blocks);

  int num_blocks() const { return static_cast<int>(ref_counts_.size()); }
  int num_free_blocks() const { return static_cast<int>(free_blocks_.size()); }
  int num_used_blocks() const { return num_blocks() - num_free_blocks(); }

  // `count` fresh blocks with reference count 1, or ResourceExhausted (nothing taken).
  absl::StatusOr<std::vector<int32_t>> Allocate(int count);
  void AddReference(int32_t block);
  // Drops one reference to each block; blocks reaching zero return to the free list.
  void Release(const std::vector<int32_t>& blocks);
  int ref_count(int32_t block) const { return ref_counts_[static_cast<size_t>(block)]; }

 private:
  std::vector<int32_t> free_blocks_;  // a stack: recently freed blocks are reused first
  std::vector<int32_t> ref_counts_;
};

struct KvCacheOptions {
  int block_size = 16;
  int num_blocks = 0;  // 0: derive from `memory_bytes`
  int64_t memory_bytes = 64ll << 20;
};

class KvCache {
 public:
  static absl::StatusOr<KvCache> Create(Backend& backend, const ModelConfig& config, const KvCacheOptions& options);

  int block_size() const { return block_size_; }
  int64_t row_width() const { return row_width_; }
  int64_t memory_bytes() const;
  Tensor& layer(int index) { return layers_[static_cast<size_t>(index)]; }
  BlockAllocator& allocator() { return allocator_; }
  const BlockAllocator& allocator() const { return allocator_; }
  // Blocks needed to hold `num_tokens` tokens.
  int BlocksFor(int64_t num_tokens) const { return static_cast<int>((num_tokens + block_size_ - 1) / block_size_); }

 private:
  KvCache(int block_size, int64_t row_width, int num_blocks)
      : block_size_(block_size), row_width_(row_width), allocator_(num_blocks) {}

  int block_size_;
  int64_t row_width_;
  std::vector<Tensor> layers_;  // [num_blocks * block_size, row_width] each
  BlockAllocator allocator_;
};

}  // namespace mf
