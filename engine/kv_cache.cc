#include "engine/kv_cache.h"

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace mf {

BlockAllocator::BlockAllocator(int num_blocks) : ref_counts_(static_cast<size_t>(num_blocks), 0) {
  free_blocks_.reserve(static_cast<size_t>(num_blocks));
  for (int block = num_blocks - 1; block >= 0; --block) free_blocks_.push_back(block);
}

absl::StatusOr<std::vector<int32_t>> BlockAllocator::Allocate(int count) {
  if (count > num_free_blocks()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache: ", count, " blocks requested, ", num_free_blocks(), " free"));
  }
  std::vector<int32_t> blocks(free_blocks_.end() - count, free_blocks_.end());
  free_blocks_.resize(free_blocks_.size() - static_cast<size_t>(count));
  for (int32_t block : blocks) ref_counts_[static_cast<size_t>(block)] = 1;
  return blocks;
}

void BlockAllocator::AddReference(int32_t block) { ++ref_counts_[static_cast<size_t>(block)]; }

void BlockAllocator::Release(const std::vector<int32_t>& blocks) {
  for (int32_t block : blocks) {
    int32_t& count = ref_counts_[static_cast<size_t>(block)];
    if (count > 0 && --count == 0) free_blocks_.push_back(block);
  }
}

absl::StatusOr<KvCache> KvCache::Create(Backend& backend, const ModelConfig& config, const KvCacheOptions& options) {
  if (options.block_size <= 0) return absl::InvalidArgumentError("KV cache: block_size must be positive");
  const int64_t row_width = config.kv_width();
  const int64_t bytes_per_block = static_cast<int64_t>(options.block_size) * row_width *
                                  static_cast<int64_t>(DTypeSize(backend.activation_dtype())) * config.n_layer;
  int num_blocks = options.num_blocks;
  if (num_blocks <= 0) num_blocks = static_cast<int>(options.memory_bytes / bytes_per_block);
  if (num_blocks <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache: ", options.memory_bytes,
                                                   " bytes hold no block (one block needs ", bytes_per_block, ")"));
  }
  KvCache cache(options.block_size, row_width, num_blocks);
  for (int64_t layer = 0; layer < config.n_layer; ++layer) {
    MF_ASSIGN_OR_RETURN(Tensor tensor, backend.Allocate(backend.activation_dtype(),
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
