// Decides who runs each step (iteration-level continuous batching): running
// decodes first, then unfinished prefills in chunks, then new admissions by
// priority and arrival, all within a token budget and the free KV blocks. While
// requests wait, prefills in progress leave room for the head of the queue, so a
// short request next to a long prompt starts at once instead of after its last chunk. When
// blocks run out, the lowest-priority, latest sequence is preempted: its blocks
// are freed and it is recomputed later (its full blocks may survive in the prefix cache).
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/sequence.h"

namespace mf {

struct SchedulerConfig {
  int max_batch_tokens = 2048;  // tokens per step, all sequences together
  int max_running = 256;        // sequences in the running set
};

struct ScheduledChunk {
  Sequence* sequence = nullptr;
  int num_tokens = 0;  // tokens[num_cached, num_cached + num_tokens) run this step
};

struct SchedulePlan {
  std::vector<ScheduledChunk> chunks;
  std::vector<Sequence*> preempted;
  int num_tokens = 0;
  bool empty() const { return chunks.empty(); }
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, BlockAllocator& allocator) : config_(config), allocator_(allocator) {}

  void AddWaiting(Sequence* sequence);
  SchedulePlan Schedule();
  // After the forward pass: advances num_cached and offers filled blocks to the prefix cache.
  void CompleteStep(const SchedulePlan& plan);
  // Drops a finished or cancelled sequence from the queues and frees its blocks.
  void Remove(Sequence* sequence);

  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  int num_running() const { return static_cast<int>(running_.size()); }
  int64_t prefix_cache_hit_tokens() const { return prefix_cache_hit_tokens_; }
  int64_t num_preemptions() const { return num_preemptions_; }
  int num_preempted_waiting() const;
  int num_paused() const;
  bool idle() const { return waiting_.empty() && running_.empty(); }

 private:
  bool EnsureBlocks(Sequence* sequence, int total_tokens);
  void Preempt(Sequence* sequence, SchedulePlan* plan);
  Sequence* PreemptionVictim(const SchedulePlan& plan) const;
  bool Admit(Sequence* sequence, int budget, SchedulePlan* plan);
  // Tokens of this step's budget that prefills in progress leave to the waiting head:
  // its whole prompt, up to half the budget.
  int AdmissionReserve() const;

  SchedulerConfig config_;
  BlockAllocator& allocator_;
  std::vector<Sequence*> waiting_;  // kept ordered by (priority, arrival)
  std::vector<Sequence*> running_;
  int64_t prefix_cache_hit_tokens_ = 0;
  int64_t num_preemptions_ = 0;
};

}  // namespace mf
