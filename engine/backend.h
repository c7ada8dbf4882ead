// The operations the forward pass is made of, on tensors in a backend's memory.
// engine/model.cc is written only against this interface; the CPU backend is the
// exact reference and the CUDA backend implements the same contracts.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/checkpoint/weights.h"
#include "engine/tensor.h"

namespace mf {

// Where each token of a ragged batch sits: its sequence, its position in that
// sequence, and the cache row that holds its key/value. Device-resident.
struct StepLayout {
  int num_tokens = 0;
  int num_sequences = 0;
  int block_size = 0;
  int max_blocks_per_sequence = 0;
  Tensor token_ids;     // [T] int32
  Tensor token_seq;     // [T] int32: index of the token's sequence in the batch
  Tensor token_pos;     // [T] int32: position within its sequence (0-based)
  Tensor cache_rows;    // [T] int32: block * block_size + offset, where its K/V are written
  Tensor block_tables;  // [num_sequences, max_blocks_per_sequence] int32
  Tensor seq_new_tokens;  // [num_sequences] int32: tokens each sequence adds this step
  // The same on the host, where backends plan work by sequence: sequence s owns batch
  // tokens [seq_token_begin[s], seq_token_begin[s + 1]) and has seq_cached[s] tokens cached.
  std::vector<int32_t> seq_token_begin;
  std::vector<int32_t> seq_cached;
};

// A routing decision for one mixture of one layer, in the layout of
// engine/routing.h's ExpertGrouping. Device-resident.
struct RoutingPlan {
  int num_tokens = 0;
  int top_k = 0;
  int num_experts = 0;
  Tensor token_experts;   // [T, k] int32, by falling probability
  Tensor token_gates;     // [T, k] f32
  Tensor expert_offsets;  // [E + 1] int32
  Tensor slot_tokens;     // [T * k] int32
  Tensor token_slots;     // [T, k] int32
};

struct AttentionShape {
  int num_heads = 1;
  int head_dim = 0;
  // When true, one cache vector per token is both key and value; otherwise the
  // row holds the key (att_hidden values) followed by the value.
  bool kv_identity = true;
};

// An activation applied to an expert product's output (backends may fuse it).
enum class ExpertActivation { kNone, kGeluNew };

// Sampling on the device, for backends that can (Backend::SupportsSampling). One row's
// request, packed by the model into its step upload; the layout is the CUDA kernels'
// (kernels/sampling.h, checked there). The host sampler (engine/sampling/) is the
// reference: the same support, distribution and log-probabilities, its own generator.
struct SampleRowParams {
  float temperature;         // below kMinTemperature: greedy (the argmax of the penalised logits)
  float top_p;               // 1: off
  float min_p_offset;        // temperature * log(min_p): logits below the top one + this are dropped; -inf: off
  float repetition_penalty;  // 1: off (already clamped)
  float presence_penalty;
  float frequency_penalty;
  int32_t top_k;             // <= 0 or >= the vocabulary: off
  int32_t num_top_logprobs;  // 0 to kMaxSampleLogprobs
  int32_t want_logprob;      // the chosen token's log-probability
  int32_t penalty_slot;      // the sequence's row of penalty counts; -1: none
  uint32_t seed_low, seed_high;
  uint32_t draw_index;       // the sequence's draw counter: same seed and index, same draw
  int32_t enabled;           // 0: the row is not sampled (its result is left as it was)
  int32_t reserved[2];
};
inline constexpr int kMaxSampleLogprobs = 20;
// Bit 31 of a penalty count: the token occurs in the prompt; bits 0-30: times generated.
inline constexpr uint32_t kPromptTokenBit = 0x80000000u;
// Log-probabilities are of the raw logits (the model's distribution), as on the host.
struct SampleRowResult {
  int32_t token;      // -1 when a logit is not finite
  float logprob;
  int32_t bad_token;  // >= 0: the lowest id whose raw logit is NaN or infinite
  float bad_value;
  int32_t top_tokens[kMaxSampleLogprobs];  // most likely first, ties to the lower id
  float top_logprobs[kMaxSampleLogprobs];
};
inline constexpr int kSampleParamsWords = sizeof(SampleRowParams) / 4;
inline constexpr int kSampleResultWords = sizeof(SampleRowResult) / 4;
static_assert(kSampleParamsWords == 16 && kSampleResultWords == 44);

// Device work a backend recorded for replay (a CUDA graph, say); owned by the caller,
// next to the buffers that work reads and writes.
class RecordedWork {
 public:
  virtual ~RecordedWork() = default;
};

// What a weight is used for: backends may store each kind differently (the CUDA
// backend keeps routers and vectors in fp32 so routing decisions stay exact, and
// stores expert, embedding and head matrices in bf16).
enum class WeightUse { kVector, kRouter, kMatrix };

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Element type of activations, and of the KV cache.
  virtual DType activation_dtype() const = 0;
  virtual DType kv_cache_dtype() const { return activation_dtype(); }
  // The type of a mixture's hidden activations ([num_slots, hidden]: the first expert
  // product's output and the second's input). A backend whose second product reads them
  // in a narrower type anyway may keep them so: the activation and the narrowing then
  // happen in one pass and the second product reads them as they are.
  virtual DType expert_hidden_dtype(int64_t num_slots) const {
    (void)num_slots;
    return activation_dtype();
  }
  // Memory the backend could still allocate (device memory, or host RAM for the CPU).
  virtual absl::StatusOr<int64_t> FreeMemoryBytes() const = 0;
  // The first failure of an asynchronous operation, if any (sticky).
  virtual absl::Status status() const { return absl::OkStatus(); }

  // Memory.
  virtual absl::StatusOr<Tensor> UploadWeight(const HostTensor& host, WeightUse use) = 0;
  // Bytes UploadWeight stores per element of a weight of this use (for sizing a model
  // against FreeMemoryBytes before uploading it).
  virtual int64_t StoredBytesPerWeight(WeightUse) const { return 4; }
  virtual absl::StatusOr<Tensor> Allocate(DType dtype, std::vector<int64_t> shape) = 0;
  virtual void CopyFromHost(const void* host, Tensor& dst) = 0;    // whole tensor
  virtual void CopyToHost(const Tensor& src, void* host) = 0;      // whole tensor; synchronises
  // Whole tensor; `host` is written by the next FinishDeferredCopies() (one synchronisation
  // for many small downloads, such as a step's routing). `host` must stay valid until then.
  virtual void CopyToHostDeferred(const Tensor& src, void* host) { CopyToHost(src, host); }
  virtual void FinishDeferredCopies() {}
  virtual void ToFloat(const Tensor& src, float* host) = 0;        // whole tensor, widened to f32

  // out[t] = table[ids[t]]
  virtual void Embed(const Tensor& table, const Tensor& token_ids, Tensor& out) = 0;
  virtual void LayerNorm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, Tensor& out) = 0;
  // out = x · weightᵀ (+ bias): nn.Linear layout, weight [out, in].
  virtual void Linear(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& out) = 0;
  virtual void GeluExact(Tensor& x) = 0;
  virtual void GeluNew(Tensor& x) = 0;
  // A mixture's gate: logits [T, E] = gelu_exact(x · w1ᵀ + b1) · w2ᵀ (w1 [G, D], w2 [E, G]).
  // By default composed of Linear and GeluExact (engine/backend.cc).
  virtual absl::Status RouterLogits(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                                    Tensor& logits);
  // Softmax + top-k of router logits [T, E], then the grouping of slots by expert. When the
  // caller sets plan.token_experts and plan.token_gates ([T, k] each; views into a step-wide
  // record, say), the decisions go there; every other tensor of the plan is allocated here.
  virtual absl::Status Route(const Tensor& router_logits, int top_k, RoutingPlan& plan) = 0;
  // For each expert e, out[slot] = in_row(slot) · experts[e] over e's slots, where
  // in_row is x[slot_tokens[slot]] when gather_by_token, else x[slot]. experts: [E, in, out].
  // `activation` applies to every output value (as GeluNew would, after).
  virtual void ExpertGemm(const Tensor& x, const RoutingPlan& plan, bool gather_by_token, const Tensor& experts,
                          ExpertActivation activation, Tensor& out) = 0;
  // residual[t] += Σ_r gate[t, r] · slot_out[token_slots[t, r]], summed in rank order.
  virtual void CombineExperts(const Tensor& slot_out, const RoutingPlan& plan, Tensor& residual) = 0;
  // Writes each token's cache row: key (and value unless `value` is null) [T, width].
  virtual void WriteKv(const Tensor& key, const Tensor* value, const StepLayout& layout, Tensor& layer_cache) = 0;
  // Stick-breaking attention of every slot's query [S, att_hidden] over its
  // sequence's cached keys/values at positions <= its own.
  virtual void StickBreakingAttention(const Tensor& queries, const RoutingPlan& plan, const StepLayout& layout,
                                      const Tensor& layer_cache, const AttentionShape& shape, Tensor& out) = 0;
  // out[i] = x[rows[i]]
  virtual void GatherRows(const Tensor& x, const Tensor& rows, Tensor& out) = 0;
  // tokens[r] = the index of row r's largest value (the lowest such index among ties).
  virtual void ArgmaxRows(const Tensor& logits, Tensor& tokens) = 0;

  // Sampling on the device (see SampleRowParams). logits [R, vocab] in the activation type,
  // params [R, kSampleParamsWords] and results [R, kSampleResultWords] int32 words;
  // penalty_counts [slots, vocab] uint32 words (null when no row has a slot) gets each
  // drawn token counted.
  virtual bool SupportsSampling() const { return false; }
  virtual void SampleRows(const Tensor& logits, const Tensor& params, Tensor* penalty_counts, Tensor& results) {
    (void)logits, (void)params, (void)penalty_counts, (void)results;
  }
  // Sets `counts` (one slot's [vocab] words) from a sequence's history.
  virtual absl::Status SetPenaltyHistory(Tensor& counts, absl::Span<const int32_t> prompt,
                                         absl::Span<const int32_t> generated) {
    (void)counts, (void)prompt, (void)generated;
    return absl::UnimplementedError(name() + " backend: no device sampling");
  }

  // Runs the device work `body` issues. A backend may record that work into `*record` the
  // first time (when *record is null) and replay the record later without calling `body`
  // (skipping the host side of every launch). The caller guarantees that the work depends on
  // nothing but what it keyed `record` on and on device memory that outlives `record` at
  // fixed addresses, and that `body` frees whatever it allocates. By default, runs `body`.
  virtual absl::Status RunRecorded(std::unique_ptr<RecordedWork>* record, absl::FunctionRef<absl::Status()> body) {
    (void)record;
    return body();
  }
  // Kernel launches in the work RunRecorded recorded last (0 when the backend records none).
  virtual int64_t last_recorded_kernels() const { return 0; }
};

// The exact CPU reference backend (fp32, OpenBLAS).
std::unique_ptr<Backend> MakeCpuBackend();

}  // namespace mf
