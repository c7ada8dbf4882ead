#include "engine/scheduler.h"

#include <algorithm>

namespace mf {
namespace {

// Lower priority value first, then earlier arrival, then lower id.
bool RunsBefore(const Sequence* a, const Sequence* b) {
  if (a->request.priority != b->request.priority) return a->request.priority < b->request.priority;
  if (a->arrival_time != b->arrival_time) return a->arrival_time < b->arrival_time;
  return a->id < b->id;
}

bool Contains(const SchedulePlan& plan, const Sequence* sequence) {
  return std::any_of(plan.chunks.begin(), plan.chunks.end(),
                     [&](const ScheduledChunk& chunk) { return chunk.sequence == sequence; });
}

}  // namespace

void Scheduler::AddWaiting(Sequence* sequence) {
  waiting_.insert(std::upper_bound(waiting_.begin(), waiting_.end(), sequence, RunsBefore), sequence);
}

bool Scheduler::EnsureBlocks(Sequence* sequence, int total_tokens) {
  const int block_size = allocator_.block_size();
  const int needed = (total_tokens + block_size - 1) / block_size - static_cast<int>(sequence->block_table.size());
  if (needed <= 0) return true;
  auto blocks = allocator_.Allocate(needed);
  if (!blocks.ok()) return false;
  sequence->block_table.insert(sequence->block_table.end(), blocks->begin(), blocks->end());
  return true;
}

Sequence* Scheduler::PreemptionVictim(const SchedulePlan& plan) const {
  Sequence* victim = nullptr;
  for (Sequence* candidate : running_) {
    if (Contains(plan, candidate)) continue;
    if (victim == nullptr || RunsBefore(victim, candidate)) victim = candidate;
  }
  return victim;
}

void Scheduler::Preempt(Sequence* sequence, SchedulePlan* plan) {
  allocator_.Release(sequence->block_table);
  sequence->block_table.clear();
  sequence->num_cached = 0;
  sequence->num_committed_blocks = 0;
  sequence->last_block_hash = 0;
  ++sequence->num_preemptions;
  ++num_preemptions_;
  running_.erase(std::find(running_.begin(), running_.end(), sequence));
  AddWaiting(sequence);
  plan->preempted.push_back(sequence);
}

// Reuses cached prefix blocks on first admission, then reserves blocks for the
// first chunk. On failure nothing is kept and the sequence stays waiting.
bool Scheduler::Admit(Sequence* sequence, int budget, SchedulePlan* plan) {
  const int block_size = allocator_.block_size();
  if (sequence->block_table.empty()) {
    // At least one token must run to produce logits, so the last token is never reused.
    // A request scoring its prompt needs logits at every prompt position: nothing is reused.
    const bool scores_prompt = sequence->request.prompt_logprobs.has_value() && !sequence->prompt_logprobs_sent;
    const int reusable_blocks = scores_prompt ? 0 : (static_cast<int>(sequence->tokens.size()) - 1) / block_size;
    uint64_t last_hash = 0;
    sequence->block_table = allocator_.MatchPrefix(sequence->tokens, reusable_blocks, &last_hash);
    sequence->num_committed_blocks = static_cast<int>(sequence->block_table.size());
    sequence->last_block_hash = last_hash;
    sequence->num_cached = sequence->num_committed_blocks * block_size;
  }
  const int num_tokens = std::min(sequence->num_pending(), budget);
  if (!EnsureBlocks(sequence, sequence->num_cached + num_tokens)) {
    allocator_.Release(sequence->block_table);
    sequence->block_table.clear();
    sequence->num_cached = sequence->num_committed_blocks = 0;
    sequence->last_block_hash = 0;
    return false;
  }
  if (!sequence->first_scheduled_time.has_value()) {
    sequence->cached_prompt_tokens = sequence->num_cached;
    prefix_cache_hit_tokens_ += sequence->num_cached;
  }
  running_.push_back(sequence);
  plan->chunks.push_back({sequence, num_tokens});
  plan->num_tokens += num_tokens;
  return true;
}

int Scheduler::AdmissionReserve() const {
  if (static_cast<int>(running_.size()) >= config_.max_running) return 0;
  auto head = std::find_if(waiting_.begin(), waiting_.end(), [](const Sequence* s) { return !s->paused_since; });
  return head == waiting_.end() ? 0 : std::min(config_.max_batch_tokens / 2, (*head)->num_pending());
}

SchedulePlan Scheduler::Schedule() {
  SchedulePlan plan;
  int budget = config_.max_batch_tokens;
  const int reserve = AdmissionReserve();
  // Decodes first so long prompts never stall token streams; then prefills in progress.
  std::vector<Sequence*> order = running_;
  std::stable_sort(order.begin(), order.end(), [](const Sequence* a, const Sequence* b) {
    if (a->in_prefill() != b->in_prefill()) return !a->in_prefill();
    return RunsBefore(a, b);
  });
  for (Sequence* sequence : order) {
    if (budget == 0) break;
    if (std::find(running_.begin(), running_.end(), sequence) == running_.end()) continue;  // preempted meanwhile
    if (sequence->paused_since.has_value()) continue;  // its consumer is behind
    const int available = sequence->in_prefill() ? budget - reserve : budget;
    if (available <= 0) continue;
    const int num_tokens = std::min(sequence->num_pending(), available);
    bool preempted_self = false;
    while (!EnsureBlocks(sequence, sequence->num_cached + num_tokens)) {
      Sequence* victim = PreemptionVictim(plan);
      if (victim == nullptr || RunsBefore(victim, sequence) || victim == sequence) {
        Preempt(sequence, &plan);
        preempted_self = true;
        break;
      }
      Preempt(victim, &plan);
    }
    if (preempted_self) continue;
    plan.chunks.push_back({sequence, num_tokens});
    plan.num_tokens += num_tokens;
    budget -= num_tokens;
  }
  // Admissions: strictly in order, so a large request at the head is not starved (a
  // paused one, preempted while its consumer is behind, waits without holding the queue).
  auto head = waiting_.begin();
  while (budget > 0 && static_cast<int>(running_.size()) < config_.max_running) {
    head = std::find_if(head, waiting_.end(), [](const Sequence* s) { return !s->paused_since; });
    if (head == waiting_.end()) break;
    if (std::find(plan.preempted.begin(), plan.preempted.end(), *head) != plan.preempted.end()) break;
    if (!Admit(*head, budget, &plan)) break;
    head = waiting_.erase(head);
    budget -= plan.chunks.back().num_tokens;
  }
  return plan;
}

void Scheduler::CompleteStep(const SchedulePlan& plan) {
  const int block_size = allocator_.block_size();
  for (const ScheduledChunk& chunk : plan.chunks) {
    Sequence* sequence = chunk.sequence;
    sequence->num_cached += chunk.num_tokens;
    while ((sequence->num_committed_blocks + 1) * block_size <= sequence->num_cached) {
      const int index = sequence->num_committed_blocks;
      const absl::Span<const int32_t> block_tokens(sequence->tokens.data() + static_cast<size_t>(index) * block_size,
                                                   static_cast<size_t>(block_size));
      sequence->last_block_hash = allocator_.CommitFullBlock(sequence->block_table[static_cast<size_t>(index)],
                                                             sequence->last_block_hash, block_tokens);
      ++sequence->num_committed_blocks;
    }
  }
}

int Scheduler::num_preempted_waiting() const {
  return static_cast<int>(std::count_if(waiting_.begin(), waiting_.end(),
                                        [](const Sequence* sequence) { return sequence->num_preemptions > 0; }));
}

int Scheduler::num_paused() const {
  return static_cast<int>(std::count_if(running_.begin(), running_.end(),
                                        [](const Sequence* sequence) { return sequence->paused_since.has_value(); }));
}

void Scheduler::Remove(Sequence* sequence) {
  allocator_.Release(sequence->block_table);
  sequence->block_table.clear();
  running_.erase(std::remove(running_.begin(), running_.end(), sequence), running_.end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), sequence), waiting_.end());
}

}  // namespace mf
