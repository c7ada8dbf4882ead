// The forward pass over a ragged batch: several sequences, each adding any number
// of new tokens on top of its cached history. Written against engine/backend.h only.
#pragma once

#include <array>
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/backend.h"
#include "engine/checkpoint/weights.h"
#include "engine/kv_cache.h"
#include "engine/sampling/sampler.h"

namespace mf {

enum class Mixture { kAttention = 0, kMlp = 1 };
inline const char* MixtureName(Mixture mixture) { return mixture == Mixture::kAttention ? "attention" : "mlp"; }

struct SequenceChunk {
  absl::Span<const int32_t> new_tokens;
  int num_cached = 0;                     // tokens of this sequence already in the cache
  absl::Span<const int32_t> block_table;  // must cover num_cached + new_tokens.size() tokens
  bool all_logits = false;                // logits for every new token; else for the last only
  // Whether the caller needs these rows' full logits. When not (greedy decoding without
  // penalties or log-probabilities), only each row's argmax comes back, sparing the
  // transfer of a vocabulary-sized row per sequence.
  bool full_logits = true;
  // When set (and the backend samples: Model::SamplesOnDevice), the chunk's last row is
  // sampled on the device and only its SampleRowResult comes back.
  std::optional<SampleRowParams> device_sample = std::nullopt;
};

// The device sampler's row for a request's sampling parameters: its seed, the draw (the
// sequence's count of generated tokens: the same seed and draw give the same token) and its
// penalty slot (-1: none; needed when Penalised(sampling)).
SampleRowParams PackSampleRow(const SamplingParams& sampling, uint64_t seed, uint32_t draw_index, int penalty_slot);

struct ForwardBatch {
  std::vector<SequenceChunk> sequences;
  bool record_routing = false;
  // Every router's logits for every token (for measuring routing margins; such steps are
  // never replayed).
  bool record_router_logits = false;
};

// One mixture's decisions for every token of the batch, [T, k] in batch order.
struct MixtureRouting {
  int top_k = 0;
  int num_experts = 0;
  std::vector<int32_t> experts;  // by falling probability
  std::vector<float> gates;
};

struct ForwardOutput {
  int64_t vocab_size = 0;
  std::vector<float> logits;            // [full rows, vocab]: the rows of chunks with full_logits
  std::vector<int> full_row;            // per row: its index in `logits`, or -1
  std::vector<int32_t> argmax;          // per row, when some chunk is argmax-only: the most likely token
  std::vector<SampleRowResult> samples;  // per row, when some chunk samples on the device
  std::vector<char> sampled;            // per row, when `samples` is set: whether the row was sampled
  std::vector<int> logit_row_offsets;   // sequence s owns rows [offsets[s], offsets[s+1])
  std::vector<int> token_offsets;       // sequence s owns batch tokens [offsets[s], offsets[s+1])
  std::vector<std::array<MixtureRouting, 2>> routing;  // per layer, indexed by Mixture; when recorded
  std::vector<std::array<std::vector<float>, 2>> router_logits;  // per layer and Mixture, [T, E]; when recorded

  bool has_full_logits(int row) const { return full_row[static_cast<size_t>(row)] >= 0; }
  bool has_device_sample(int row) const { return !sampled.empty() && sampled[static_cast<size_t>(row)] != 0; }
  const float* logits_row(int row) const {
    return logits.data() + static_cast<int64_t>(full_row[static_cast<size_t>(row)]) * vocab_size;
  }
};

class Model {
 public:
  static absl::StatusOr<std::unique_ptr<Model>> Create(const ModelWeights& weights, std::unique_ptr<Backend> backend,
                                                       const KvCacheOptions& cache_options);
  ~Model();

  // Runs one step. Checks token ids and block tables; writes the new tokens' K/V.
  absl::StatusOr<ForwardOutput> Forward(const ForwardBatch& batch);

  const ModelConfig& config() const { return config_; }
  Backend& backend() { return *backend_; }
  KvCache& kv_cache() { return *kv_cache_; }
  const KvCache& kv_cache() const { return *kv_cache_; }
  int num_experts(int layer, Mixture mixture) const;
  int64_t weight_bytes() const { return weight_bytes_; }  // device memory held by the weights

  // Device sampling: whether the backend samples, and the per-sequence penalty counts it
  // keeps (kPenaltySlots sequences at a time; others sample on the host). A slot starts
  // from the sequence's history and counts each token the device draws for it.
  static constexpr int kPenaltySlots = 256;
  bool SamplesOnDevice() const { return backend_->SupportsSampling(); }
  absl::StatusOr<int> AcquirePenaltySlot(absl::Span<const int32_t> prompt, absl::Span<const int32_t> generated);
  void ReleasePenaltySlot(int slot);
  int num_free_penalty_slots() const { return static_cast<int>(free_penalty_slots_.size()); }

 private:
  struct DeviceMixture;
  struct DeviceLayer;
  struct StepInputs;
  struct StepBuffers;

  Model() = default;
  static absl::StatusOr<DeviceMixture> UploadMixture(Backend& backend, const MixtureWeights& host);
  absl::Status Upload(const ModelWeights& weights);
  absl::Status Validate(const ForwardBatch& batch) const;
  // The step's layout on the host, packed for one upload (engine/model_layout.cc).
  StepInputs BuildInputs(const ForwardBatch& batch, ForwardOutput* output) const;
  // The device buffers of a step shaped like `inputs`: kept, with their recorded work,
  // for steps that can replay one (engine/model_step.cc); fresh otherwise.
  absl::StatusOr<std::shared_ptr<StepBuffers>> BuffersFor(const StepInputs& inputs);
  absl::StatusOr<std::shared_ptr<StepBuffers>> AllocateBuffers(const StepInputs& inputs);
  // Embedding to logits (and their argmax): the device work of a step, replayable.
  absl::Status RunNetwork(StepBuffers& step);
  absl::Status RunAttention(int layer, StepBuffers& step, Tensor& hidden);
  absl::Status RunMlp(int layer, StepBuffers& step, Tensor& hidden);
  // Routes `normed`; the decisions land in the step's routing record when it keeps one.
  absl::StatusOr<RoutingPlan> RouteMixture(int layer, Mixture mixture, StepBuffers& step, const Tensor& normed);
  // Downloads every row's argmax, the full rows the batch asks for, and the routing.
  absl::Status ReadOutputs(const ForwardBatch& batch, const StepBuffers& step, ForwardOutput* output);
  absl::Status ReadLogits(const ForwardBatch& batch, const StepBuffers& step, ForwardOutput* output);
  // Fills output->routing from the downloaded routing record.
  void SplitRouting(const StepBuffers& step, ForwardOutput* output) const;
  absl::StatusOr<Tensor> Empty(std::vector<int64_t> shape);

  ModelConfig config_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<KvCache> kv_cache_;
  Tensor wte_, ln_f_weight_, ln_f_bias_, lm_head_;
  std::vector<DeviceLayer> layers_;
  int64_t weight_bytes_ = 0;
  // Buffers of replayable steps by key, most recently used first.
  std::list<std::pair<uint64_t, std::shared_ptr<StepBuffers>>> replay_buffers_;
  Tensor penalty_counts_;                 // [kPenaltySlots, vocab] uint32, when the backend samples
  std::vector<int> free_penalty_slots_;
  std::vector<int32_t> routing_experts_;  // the routing record's download, before SplitRouting
  std::vector<float> routing_gates_;
};

}  // namespace mf
