#include "engine/kv_cache.h"

#include <algorithm>
#include <climits>

#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"

namespace mf {

BlockAllocator::BlockAllocator(int num_blocks, int block_size)
    : block_size_(block_size), blocks_(static_cast<size_t>(num_blocks)) {
  free_blocks_.reserve(static_cast<size_t>(num_blocks));
  for (int block = num_blocks - 1; block >= 0; --block) free_blocks_.push_back(block);
}

absl::StatusOr<std::vector<int32_t>> BlockAllocator::Allocate(int count) {
  if (count > num_free_blocks()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache: ", count, " blocks requested, ", num_free_blocks(), " free"));
  }
  std::vector<int32_t> blocks;
  blocks.reserve(static_cast<size_t>(count));
  while (static_cast<int>(blocks.size()) < count) {
    int32_t block;
    if (!free_blocks_.empty()) {
      block = free_blocks_.back();
      free_blocks_.pop_back();
    } else {
      block = evictable_.front();  // least recently used cached block
      Evict(block);
    }
    blocks_[static_cast<size_t>(block)].ref_count = 1;
    blocks.push_back(block);
  }
  return blocks;
}

void BlockAllocator::Evict(int32_t block) {
  BlockInfo& info = blocks_[static_cast<size_t>(block)];
  evictable_.erase(info.lru_position);
  info.evictable = false;
  cached_.erase(info.hash);
  info.cached = false;
  info.tokens.clear();
}

void BlockAllocator::AddReference(int32_t block) {
  BlockInfo& info = blocks_[static_cast<size_t>(block)];
  if (info.evictable) {
    evictable_.erase(info.lru_position);
    info.evictable = false;
  }
  ++info.ref_count;
}

void BlockAllocator::Release(absl::Span<const int32_t> blocks) {
  for (int32_t block : blocks) {
    BlockInfo& info = blocks_[static_cast<size_t>(block)];
    if (info.ref_count == 0 || --info.ref_count > 0) continue;
    if (info.cached) {
      info.lru_position = evictable_.insert(evictable_.end(), block);
      info.evictable = true;
    } else {
      free_blocks_.push_back(block);
    }
  }
}

uint64_t BlockAllocator::ChainHash(uint64_t parent_hash, absl::Span<const int32_t> block_tokens) {
  uint64_t hash = parent_hash ^ 0x9e3779b97f4a7c15ull;
  for (int32_t token : block_tokens) {
    hash ^= static_cast<uint32_t>(token);
    hash *= 0x100000001b3ull;
    hash ^= hash >> 29;
  }
  return hash;
}

std::vector<int32_t> BlockAllocator::MatchPrefix(absl::Span<const int32_t> tokens, int max_blocks,
                                                 uint64_t* last_hash) {
  std::vector<int32_t> matched;
  uint64_t hash = 0;
  for (int index = 0; index < max_blocks; ++index) {
    const size_t begin = static_cast<size_t>(index) * static_cast<size_t>(block_size_);
    if (begin + static_cast<size_t>(block_size_) > tokens.size()) break;
    const absl::Span<const int32_t> block_tokens = tokens.subspan(begin, static_cast<size_t>(block_size_));
    hash = ChainHash(hash, block_tokens);
    auto it = cached_.find(hash);
    if (it == cached_.end()) break;
    const BlockInfo& info = blocks_[static_cast<size_t>(it->second)];
    // The chain is verified through its tokens: blocks match only if every earlier block did.
    if (!std::equal(info.tokens.begin(), info.tokens.end(), block_tokens.begin(), block_tokens.end())) break;
    AddReference(it->second);
    matched.push_back(it->second);
    *last_hash = hash;
  }
  return matched;
}

uint64_t BlockAllocator::CommitFullBlock(int32_t block, uint64_t parent_hash, absl::Span<const int32_t> block_tokens) {
  const uint64_t hash = ChainHash(parent_hash, block_tokens);
  BlockInfo& info = blocks_[static_cast<size_t>(block)];
  if (!info.cached && cached_.find(hash) == cached_.end()) {
    cached_.emplace(hash, block);
    info.cached = true;
    info.hash = hash;
    info.tokens.assign(block_tokens.begin(), block_tokens.end());
  }
  return hash;
}

absl::StatusOr<KvCache> KvCache::Create(Backend& backend, const ModelConfig& config, const KvCacheOptions& options) {
  if (options.block_size <= 0) return absl::InvalidArgumentError("KV cache: block_size must be positive");
  const int64_t row_width = config.kv_width();
  const int64_t bytes_per_block = static_cast<int64_t>(options.block_size) * row_width *
                                  static_cast<int64_t>(DTypeSize(backend.kv_cache_dtype())) * config.n_layer;
  int num_blocks = options.num_blocks;
  int64_t memory_bytes = options.memory_bytes;
  if (num_blocks <= 0 && options.memory_fraction > 0) {
    if (options.memory_fraction > 1) return absl::InvalidArgumentError("KV cache: memory fraction must be in (0, 1]");
    MF_ASSIGN_OR_RETURN(const int64_t free_now, backend.FreeMemoryBytes());
    memory_bytes = static_cast<int64_t>(options.memory_fraction * static_cast<double>(free_now));
  }
  if (num_blocks <= 0) num_blocks = static_cast<int>(std::min<int64_t>(memory_bytes / bytes_per_block, INT32_MAX));
  if (num_blocks <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache: ", memory_bytes,
                                                   " bytes hold no block (one block needs ", bytes_per_block, ")"));
  }
  MF_ASSIGN_OR_RETURN(const int64_t free_bytes, backend.FreeMemoryBytes());
  if (static_cast<double>(num_blocks) * static_cast<double>(bytes_per_block) > static_cast<double>(free_bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache: ", num_blocks, " blocks need ",
                                                     static_cast<int64_t>(num_blocks) * bytes_per_block, " bytes; the ",
                                                     backend.name(), " backend has ", free_bytes, " free"));
  }
  KvCache cache(options.block_size, row_width, num_blocks);
  for (int64_t layer = 0; layer < config.n_layer; ++layer) {
    MF_ASSIGN_OR_RETURN(Tensor tensor, backend.Allocate(backend.kv_cache_dtype(),
                                                        {static_cast<int64_t>(num_blocks) * options.block_size, row_width}));
    cache.layers_.push_back(std::move(tensor));
  }
  return cache;
}

int64_t KvCache::memory_bytes() const {
  int64_t total = 0;
  for (const Tensor& layer : layers_) total += static_cast<int64_t>(layer.num_bytes());
  return total;
}

}  // namespace mf
