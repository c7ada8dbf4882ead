// The paged KV cache: fixed-size blocks of token rows per layer, and the
// allocator that hands blocks to sequences. One vector per token per layer when
// K = V (every MoLM checkpoint); key then value otherwise.
#pragma once

#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/backend.h"
#include "engine/checkpoint/config.h"

namespace mf {

// Owns block ids: reference counts, a free list, and the prefix cache. A full
// block is keyed by a hash chain over every token up to its end, so a later
// sequence with the same prefix can share it (the model has no positional
// encoding, so equal prefixes have equal keys and values). Blocks nobody uses but
// whose contents are cached wait in an LRU list and are evicted only when needed.
class BlockAllocator {
 public:
  explicit BlockAllocator(int num_blocks, int block_size = 16);

  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  int block_size() const { return block_size_; }
  // Blocks an allocation can take now: never-used or freed ones plus evictable cached ones.
  int num_free_blocks() const { return static_cast<int>(free_blocks_.size() + evictable_.size()); }
  int num_used_blocks() const { return num_blocks() - num_free_blocks(); }
  int num_cached_blocks() const { return static_cast<int>(cached_.size()); }

  // `count` blocks with reference count 1, or ResourceExhausted (nothing taken).
  absl::StatusOr<std::vector<int32_t>> Allocate(int count);
  void AddReference(int32_t block);
  // Drops one reference to each block; unreferenced blocks become free (or evictable if cached).
  void Release(absl::Span<const int32_t> blocks);
  int ref_count(int32_t block) const { return blocks_[static_cast<size_t>(block)].ref_count; }

  // Hash of a full block's tokens chained to the hash of everything before it.
  static uint64_t ChainHash(uint64_t parent_hash, absl::Span<const int32_t> block_tokens);
  // Takes a reference to each cached block that continues the prefix of `tokens`,
  // up to `max_blocks`; returns them in order, and the chain hash of the last one.
  std::vector<int32_t> MatchPrefix(absl::Span<const int32_t> tokens, int max_blocks, uint64_t* last_hash);
  // Offers a just-filled block to the prefix cache. Returns its chain hash.
  uint64_t CommitFullBlock(int32_t block, uint64_t parent_hash, absl::Span<const int32_t> block_tokens);

 private:
  struct BlockInfo {
    int32_t ref_count = 0;
    bool cached = false;
    uint64_t hash = 0;
    std::vector<int32_t> tokens;  // cached blocks keep their tokens: a hash match is verified, never trusted
    std::list<int32_t>::iterator lru_position;
    bool evictable = false;
  };

  void Evict(int32_t block);

  int block_size_;
  std::vector<BlockInfo> blocks_;
  std::vector<int32_t> free_blocks_;  // a stack: recently freed blocks are reused first
  std::list<int32_t> evictable_;      // cached, unreferenced; least recently used first
  std::unordered_map<uint64_t, int32_t> cached_;
};

struct KvCacheOptions {
  int block_size = 16;
  int num_blocks = 0;            // > 0: exactly this many blocks; else
  double memory_fraction = 0;    // > 0: this fraction of the backend's free memory (after the weights); else
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
      : block_size_(block_size), row_width_(row_width), allocator_(num_blocks, block_size) {}

  int block_size_;
  int64_t row_width_;
  std::vector<Tensor> layers_;  // [num_blocks * block_size, row_width] each
  BlockAllocator allocator_;
};

}  // namespace mf
