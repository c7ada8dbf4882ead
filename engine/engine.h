// The serving engine: one loop thread owns the model, the scheduler and every
// sequence. Other threads talk to it only through Submit/Cancel (a locked inbox)
// and receive results through each request's callback, which the loop hands with the
// step's other updates to a delivery thread.
// One step is schedule -> forward pass -> postprocess (sample, detokenize, stop).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/base/serial_executor.h"
#include "engine/base/worker_pool.h"
#include "engine/expert_stats.h"
#include "engine/model.h"
#include "engine/observer.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "engine/text/tokenizer.h"

namespace mf {

struct EngineConfig {
  SchedulerConfig scheduler;
  int max_waiting = 1024;      // queued requests before RESOURCE_EXHAUSTED
  int max_context = 4096;      // prompt + generated tokens per sequence
  int sampling_threads = 0;    // helpers sampling rows of large batches alongside the loop thread
  // Sample on the device when the backend can (only tokens and asked log-probabilities
  // come back); else every sampled row's logits are downloaded and sampled on the host.
  bool device_sampling = true;
  absl::Duration stall_timeout = absl::Seconds(60);  // a paused request longer than this is cancelled
  EngineObserver* observer = nullptr;  // not owned; outlives the engine
};

// Counters readable from any thread.
struct EngineStats {
  int running = 0;
  int waiting = 0;
  int kv_blocks_used = 0;
  int kv_blocks_total = 0;
  int64_t prefix_cache_hit_tokens = 0;
  int64_t preemptions = 0;
  int64_t steps = 0;
  int preempted_waiting = 0;      // waiting to be recomputed after a preemption
  int paused = 0;                 // running requests paused by their consumer (Pause)
  double step_seconds = 0;        // total time in engine steps
  double forward_seconds = 0;     // of which the forward pass
  double sampling_seconds = 0;    // of which choosing the next tokens from the logits
  double metrics_seconds = 0;     // of which recording statistics and metrics (expert counts: delivery_seconds)
  double delivery_seconds = 0;    // on the delivery thread (update callbacks, expert counts); not in step_seconds
  bool draining = false;
};

class Engine {
 public:
  // `tokenizer` may be null: requests then carry token ids and get no text back.
  Engine(std::unique_ptr<Model> model, std::shared_ptr<const Tokenizer> tokenizer, const EngineConfig& config);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. InvalidArgument for a request the model cannot run,
  // ResourceExhausted when the queue is full, Unavailable while draining.
  absl::StatusOr<uint64_t> Submit(GenerationRequest request, UpdateCallback on_update);
  // The request finishes with FinishReason::kCancelled within one step (no-op if already done).
  void Cancel(uint64_t id);
  // Flow control for consumers that fall behind (a stream whose client stopped reading):
  // a paused request keeps its place and KV blocks but generates nothing until resumed,
  // and is cancelled once paused for longer than EngineConfig::stall_timeout.
  void Pause(uint64_t id);
  void Resume(uint64_t id);
  // Refuses new requests from now on; running ones continue.
  void StopAccepting();
  // Reports draining (GetLoad, metrics) while still accepting work: the grace period in
  // which load balancers stop routing here.
  void MarkDraining();
  bool WaitUntilIdle(absl::Duration timeout);

  EngineStats stats() const;
  const ModelConfig& model_config() const { return model_->config(); }
  const Model& model() const { return *model_; }
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }
  const EngineConfig& config() const { return config_; }
  ExpertStats& expert_stats() { return *expert_stats_; }
  int max_sequence_tokens() const;

 private:
  void Loop();
  void TakeInbox();
  void SweepCancelledAndExpired();
  void RunStep(const SchedulePlan& plan);
  void ScorePromptRows(const SchedulePlan& plan, const ForwardOutput& output);
  void Postprocess(const SchedulePlan& plan, const ForwardOutput& output);
  // The next token of `sequence` from row `row` of the step's output; safe to call for
  // different sequences at once.
  static absl::StatusOr<SampleResult> SampleRow(Sequence& sequence, const ForwardOutput& output, int row);
  // The device sampler's parameters for a chunk that ends at a new token, or nothing when
  // the row is sampled on the host (or is plain greedy). Takes a penalty slot if needed.
  std::optional<SampleRowParams> DeviceSampleParams(Sequence& sequence);
  // Step metrics now; expert counts on the delivery thread (takes the output's routing).
  // `chunk_tags`: each chunk's request stats tag, in plan order.
  void RecordStatistics(std::vector<std::string> chunk_tags, ForwardOutput& output, absl::Time step_start);
  bool AppendToken(Sequence& sequence, const SampleResult& sample, GenerationUpdate& update);
  // Queues an update for its request's callback; FlushUpdates hands the queue over.
  void Deliver(Sequence& sequence, GenerationUpdate&& update);
  void FlushUpdates();
  void Finish(Sequence& sequence, FinishReason reason, absl::Status status, GenerationUpdate update);
  void FailAll(const absl::Status& status);
  void PublishStats();
  void LeftQueue(int count);  // `count` unscheduled requests were scheduled or finished
  bool HasInboxOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return stopping_ || !inbox_.empty() || !cancels_.empty() || !pauses_.empty();
  }
  bool IsIdle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return idle_ && inbox_.empty(); }

  std::unique_ptr<Model> model_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  EngineConfig config_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<ExpertStats> expert_stats_;
  std::unique_ptr<WorkerPool> sampling_pool_;
  // Loop thread only; published in stats_.
  double step_seconds_ = 0, forward_seconds_ = 0, sampling_seconds_ = 0, metrics_seconds_ = 0;
  // The work after a step that does not decide the next one: update callbacks (a message
  // serialized and a write queued, ~2 us an update) and expert counting (~0.2 ms a step at
  // 256 tokens): at 256 streams ~0.8 ms a step that on the loop delayed the next forward
  // pass by as much. Runs in the order posted, so a request's final update comes last.
  std::unique_ptr<SerialExecutor> delivery_;
  // This iteration's updates, not yet handed over (loop thread only). Each shares its
  // request's callback, so a finished sequence can be dropped while its updates wait.
  std::vector<std::pair<std::shared_ptr<const UpdateCallback>, GenerationUpdate>> outgoing_;
  std::unordered_map<uint64_t, std::unique_ptr<Sequence>> sequences_;  // loop thread only

  mutable absl::Mutex mutex_;
  std::deque<std::unique_ptr<Sequence>> inbox_ ABSL_GUARDED_BY(mutex_);
  std::vector<uint64_t> cancels_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::pair<uint64_t, bool>> pauses_ ABSL_GUARDED_BY(mutex_);  // (id, pause or resume), in order
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  bool accepting_ ABSL_GUARDED_BY(mutex_) = true;
  bool idle_ ABSL_GUARDED_BY(mutex_) = true;
  EngineStats stats_ ABSL_GUARDED_BY(mutex_);
  uint64_t next_id_ ABSL_GUARDED_BY(mutex_) = 1;
  // Accepted requests never scheduled yet (in the inbox or waiting): what --max-queued
  // bounds, counted exactly (the published stats_.waiting lags by a step).
  int unscheduled_ ABSL_GUARDED_BY(mutex_) = 0;
  std::thread thread_;
};

}  // namespace mf
