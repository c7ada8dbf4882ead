#include "engine/model.h"

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/base/status_macros.h"
#include "engine/model_step.h"

namespace mf {

absl::StatusOr<Model::DeviceMixture> Model::UploadMixture(Backend& backend, const MixtureWeights& host) {
  DeviceMixture mixture;
  mixture.num_experts = static_cast<int>(host.num_experts);
  mixture.top_k = static_cast<int>(host.top_k);
  mixture.expert_hidden = host.expert_hidden;
  MF_ASSIGN_OR_RETURN(mixture.router_w1, backend.UploadWeight(host.router_w1, WeightUse::kRouter));
  MF_ASSIGN_OR_RETURN(mixture.router_b1, backend.UploadWeight(host.router_b1, WeightUse::kRouter));
  MF_ASSIGN_OR_RETURN(mixture.router_w2, backend.UploadWeight(host.router_w2, WeightUse::kRouter));
  MF_ASSIGN_OR_RETURN(mixture.experts_in, backend.UploadWeight(host.experts_in, WeightUse::kMatrix));
  MF_ASSIGN_OR_RETURN(mixture.experts_out, backend.UploadWeight(host.experts_out, WeightUse::kMatrix));
  return mixture;
}

Model::~Model() = default;

namespace {

// What Upload will store on `backend`, with the same use per tensor.
int64_t UploadBytes(const ModelWeights& weights, const Backend& backend) {
  int64_t bytes = 0;
  auto add = [&](const HostTensor& tensor, WeightUse use) {
    if (!tensor.empty()) bytes += tensor.num_elements() * backend.StoredBytesPerWeight(use);
  };
  add(weights.wte, WeightUse::kMatrix);
  add(weights.lm_head, WeightUse::kMatrix);
  add(weights.ln_f_weight, WeightUse::kVector);
  add(weights.ln_f_bias, WeightUse::kVector);
  for (const LayerWeights& layer : weights.layers) {
    for (const HostTensor* vector : {&layer.ln1_weight, &layer.ln1_bias, &layer.ln2_weight, &layer.ln2_bias,
                                     &layer.k_bias, &layer.v_bias}) {
      add(*vector, WeightUse::kVector);
    }
    add(layer.k_weight, WeightUse::kMatrix);
    add(layer.v_weight, WeightUse::kMatrix);
    for (const MixtureWeights* mixture : {&layer.attention, &layer.mlp}) {
      add(mixture->router_w1, WeightUse::kRouter);
      add(mixture->router_b1, WeightUse::kRouter);
      add(mixture->router_w2, WeightUse::kRouter);
      add(mixture->experts_in, WeightUse::kMatrix);
      add(mixture->experts_out, WeightUse::kMatrix);
    }
  }
  return bytes;
}

std::string GiB(int64_t bytes) { return absl::StrFormat("%.2f GiB", static_cast<double>(bytes) / (1 << 30)); }

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> Model::Create(const ModelWeights& weights, std::unique_ptr<Backend> backend,
                                                     const KvCacheOptions& cache_options) {
  // Checked before anything is allocated: an allocation that fails midway aborts or, with
  // overcommit, lets the kernel kill the process later.
  const int64_t needed = UploadBytes(weights, *backend);
  MF_ASSIGN_OR_RETURN(const int64_t free_bytes, backend->FreeMemoryBytes());
  if (needed > free_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("the model's weights need ", GiB(needed), " on the ",
                                                     backend->name(), " backend; ", GiB(free_bytes), " are free"));
  }
  std::unique_ptr<Model> model(new Model());
  model->config_ = weights.config;
  model->backend_ = std::move(backend);
  MF_RETURN_IF_ERROR(model->Upload(weights));
  if (model->backend_->SupportsSampling()) {
    // Before the cache, which may take a fraction of what is free.
    MF_ASSIGN_OR_RETURN(model->penalty_counts_,
                        model->backend_->Allocate(DType::kI32, {kPenaltySlots, model->config_.vocab_size}));
    for (int slot = kPenaltySlots - 1; slot >= 0; --slot) model->free_penalty_slots_.push_back(slot);
  }
  MF_ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(*model->backend_, model->config_, cache_options));
  model->kv_cache_ = std::make_unique<KvCache>(std::move(cache));
  return model;
}

absl::Status Model::Upload(const ModelWeights& weights) {
  Backend& backend = *backend_;
  MF_ASSIGN_OR_RETURN(wte_, backend.UploadWeight(weights.wte, WeightUse::kMatrix));
  MF_ASSIGN_OR_RETURN(ln_f_weight_, backend.UploadWeight(weights.ln_f_weight, WeightUse::kVector));
  MF_ASSIGN_OR_RETURN(ln_f_bias_, backend.UploadWeight(weights.ln_f_bias, WeightUse::kVector));
  MF_ASSIGN_OR_RETURN(lm_head_, backend.UploadWeight(weights.lm_head, WeightUse::kMatrix));
  for (const LayerWeights& host : weights.layers) {
    DeviceLayer layer;
    MF_ASSIGN_OR_RETURN(layer.ln1_weight, backend.UploadWeight(host.ln1_weight, WeightUse::kVector));
    MF_ASSIGN_OR_RETURN(layer.ln1_bias, backend.UploadWeight(host.ln1_bias, WeightUse::kVector));
    MF_ASSIGN_OR_RETURN(layer.ln2_weight, backend.UploadWeight(host.ln2_weight, WeightUse::kVector));
    MF_ASSIGN_OR_RETURN(layer.ln2_bias, backend.UploadWeight(host.ln2_bias, WeightUse::kVector));
    if (!config_.kv_is_identity()) {
      MF_ASSIGN_OR_RETURN(layer.k_weight, backend.UploadWeight(host.k_weight, WeightUse::kMatrix));
      MF_ASSIGN_OR_RETURN(layer.k_bias, backend.UploadWeight(host.k_bias, WeightUse::kVector));
      MF_ASSIGN_OR_RETURN(layer.v_weight, backend.UploadWeight(host.v_weight, WeightUse::kMatrix));
      MF_ASSIGN_OR_RETURN(layer.v_bias, backend.UploadWeight(host.v_bias, WeightUse::kVector));
    }
    MF_ASSIGN_OR_RETURN(layer.attention, UploadMixture(backend, host.attention));
    MF_ASSIGN_OR_RETURN(layer.mlp, UploadMixture(backend, host.mlp));
    layers_.push_back(std::move(layer));
  }
  weight_bytes_ = 0;
  auto add = [this](const Tensor* tensor) {
    if (!tensor->empty()) weight_bytes_ += static_cast<int64_t>(tensor->num_bytes());
  };
  for (const Tensor* tensor : {&wte_, &ln_f_weight_, &ln_f_bias_, &lm_head_}) add(tensor);
  for (const DeviceLayer& layer : layers_) {
    for (const Tensor* tensor : {&layer.ln1_weight, &layer.ln1_bias, &layer.ln2_weight, &layer.ln2_bias, &layer.k_weight,
                                 &layer.k_bias, &layer.v_weight, &layer.v_bias}) {
      add(tensor);
    }
    for (const DeviceMixture* mixture : {&layer.attention, &layer.mlp}) {
      for (const Tensor* tensor : {&mixture->router_w1, &mixture->router_b1, &mixture->router_w2, &mixture->experts_in,
                                   &mixture->experts_out}) {
        add(tensor);
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int> Model::AcquirePenaltySlot(absl::Span<const int32_t> prompt, absl::Span<const int32_t> generated) {
  if (free_penalty_slots_.empty()) {
    return absl::ResourceExhaustedError(absl::StrCat("all ", penalty_counts_.empty() ? 0 : kPenaltySlots,
                                                     " device penalty slots are in use"));
  }
  const int slot = free_penalty_slots_.back();
  Tensor counts = penalty_counts_.Slice(static_cast<int64_t>(slot) * config_.vocab_size, {config_.vocab_size});
  MF_RETURN_IF_ERROR(backend_->SetPenaltyHistory(counts, prompt, generated));
  free_penalty_slots_.pop_back();
  return slot;
}

void Model::ReleasePenaltySlot(int slot) {
  if (slot >= 0 && slot < kPenaltySlots) free_penalty_slots_.push_back(slot);
}

int Model::num_experts(int layer, Mixture mixture) const {
  const DeviceLayer& weights = layers_[static_cast<size_t>(layer)];
  return mixture == Mixture::kAttention ? weights.attention.num_experts : weights.mlp.num_experts;
}

absl::StatusOr<Tensor> Model::Empty(std::vector<int64_t> shape) {
  return backend_->Allocate(backend_->activation_dtype(), std::move(shape));
}

absl::StatusOr<ForwardOutput> Model::Forward(const ForwardBatch& batch) {
  MF_RETURN_IF_ERROR(Validate(batch));
  ForwardOutput output;
  output.vocab_size = config_.vocab_size;
  const StepInputs inputs = BuildInputs(batch, &output);
  MF_ASSIGN_OR_RETURN(std::shared_ptr<StepBuffers> step, BuffersFor(inputs));
  step->record_router_logits = batch.record_router_logits;
  step->router_logits.assign(batch.record_router_logits ? layers_.size() : 0, {});
  step->layout.seq_token_begin = inputs.layout.seq_token_begin;
  step->layout.seq_cached = inputs.layout.seq_cached;
  backend_->CopyFromHost(inputs.packed.data(), step->packed);
  MF_RETURN_IF_ERROR(backend_->RunRecorded(inputs.replay_key.has_value() ? &step->record : nullptr,
                                           [this, &step] { return RunNetwork(*step); }));
  {
    // Every exit, errors included, completes the deferred downloads while their
    // destinations still exist.
    absl::Cleanup finish_downloads = [this] { backend_->FinishDeferredCopies(); };
    MF_RETURN_IF_ERROR(ReadOutputs(batch, *step, &output));
  }
  SplitRouting(*step, &output);
  output.router_logits = std::move(step->router_logits);
  MF_RETURN_IF_ERROR(backend_->status());
  return output;
}

absl::Status Model::RunNetwork(StepBuffers& step) {
  const int64_t d = config_.n_embd, num_rows = step.logits.rows();
  MF_ASSIGN_OR_RETURN(Tensor hidden, Empty({step.layout.num_tokens, d}));
  backend_->Embed(wte_, step.layout.token_ids, hidden);
  for (int layer = 0; layer < static_cast<int>(layers_.size()); ++layer) {
    MF_RETURN_IF_ERROR(RunAttention(layer, step, hidden));
    MF_RETURN_IF_ERROR(RunMlp(layer, step, hidden));
  }
  // Logit rows are in token order, at most one per token: as many rows as tokens means all.
  Tensor final_hidden = hidden;
  if (num_rows != step.layout.num_tokens) {
    MF_ASSIGN_OR_RETURN(final_hidden, Empty({num_rows, d}));
    backend_->GatherRows(hidden, step.logit_rows, final_hidden);
  }
  MF_ASSIGN_OR_RETURN(Tensor normed, Empty({num_rows, d}));
  backend_->LayerNorm(final_hidden, ln_f_weight_, ln_f_bias_, static_cast<float>(config_.layer_norm_epsilon), normed);
  backend_->Linear(normed, lm_head_, nullptr, step.logits);
  if (!step.argmax.empty()) backend_->ArgmaxRows(step.logits, step.argmax);
  if (!step.samples.empty()) {
    backend_->SampleRows(step.logits, step.sample_params, penalty_counts_.empty() ? nullptr : &penalty_counts_,
                         step.samples);
  }
  return backend_->status();
}

absl::Status Model::RunAttention(int layer, StepBuffers& step, Tensor& hidden) {
  const DeviceLayer& weights = layers_[static_cast<size_t>(layer)];
  const StepLayout& layout = step.layout;
  const float eps = static_cast<float>(config_.layer_norm_epsilon);
  MF_ASSIGN_OR_RETURN(Tensor normed, Empty(hidden.shape));
  backend_->LayerNorm(hidden, weights.ln1_weight, weights.ln1_bias, eps, normed);

  Tensor& cache = kv_cache_->layer(layer);
  if (config_.kv_is_identity()) {
    backend_->WriteKv(normed, nullptr, layout, cache);
  } else {
    MF_ASSIGN_OR_RETURN(Tensor keys, Empty({layout.num_tokens, config_.att_hidden}));
    MF_ASSIGN_OR_RETURN(Tensor values, Empty({layout.num_tokens, config_.att_hidden}));
    backend_->Linear(normed, weights.k_weight, &weights.k_bias, keys);
    backend_->Linear(normed, weights.v_weight, &weights.v_bias, values);
    backend_->WriteKv(keys, &values, layout, cache);
  }

  MF_ASSIGN_OR_RETURN(RoutingPlan plan, RouteMixture(layer, Mixture::kAttention, step, normed));
  const int64_t num_slots = static_cast<int64_t>(plan.num_tokens) * plan.top_k;
  MF_ASSIGN_OR_RETURN(Tensor queries, Empty({num_slots, config_.att_hidden}));
  backend_->ExpertGemm(normed, plan, /*gather_by_token=*/true, weights.attention.experts_in, ExpertActivation::kNone,
                       queries);
  MF_ASSIGN_OR_RETURN(Tensor attended, Empty({num_slots, config_.att_hidden}));
  const AttentionShape shape{static_cast<int>(config_.n_head), static_cast<int>(config_.head_dim()),
                             config_.kv_is_identity()};
  backend_->StickBreakingAttention(queries, plan, layout, cache, shape, attended);
  MF_ASSIGN_OR_RETURN(Tensor projected, Empty({num_slots, config_.n_embd}));
  backend_->ExpertGemm(attended, plan, /*gather_by_token=*/false, weights.attention.experts_out,
                       ExpertActivation::kNone, projected);
  backend_->CombineExperts(projected, plan, hidden);
  return absl::OkStatus();
}

absl::Status Model::RunMlp(int layer, StepBuffers& step, Tensor& hidden) {
  const DeviceLayer& weights = layers_[static_cast<size_t>(layer)];
  MF_ASSIGN_OR_RETURN(Tensor normed, Empty(hidden.shape));
  backend_->LayerNorm(hidden, weights.ln2_weight, weights.ln2_bias, static_cast<float>(config_.layer_norm_epsilon),
                      normed);
  MF_ASSIGN_OR_RETURN(RoutingPlan plan, RouteMixture(layer, Mixture::kMlp, step, normed));
  const int64_t num_slots = static_cast<int64_t>(plan.num_tokens) * plan.top_k;
  MF_ASSIGN_OR_RETURN(Tensor inner, backend_->Allocate(backend_->expert_hidden_dtype(num_slots),
                                                       {num_slots, weights.mlp.expert_hidden}));
  backend_->ExpertGemm(normed, plan, /*gather_by_token=*/true, weights.mlp.experts_in, ExpertActivation::kGeluNew,
                       inner);
  MF_ASSIGN_OR_RETURN(Tensor expert_out, Empty({num_slots, config_.n_embd}));
  backend_->ExpertGemm(inner, plan, /*gather_by_token=*/false, weights.mlp.experts_out, ExpertActivation::kNone,
                       expert_out);
  backend_->CombineExperts(expert_out, plan, hidden);
  return absl::OkStatus();
}

absl::StatusOr<RoutingPlan> Model::RouteMixture(int layer, Mixture mixture, StepBuffers& step, const Tensor& normed) {
  const DeviceLayer& weights = layers_[static_cast<size_t>(layer)];
  const DeviceMixture& gate = mixture == Mixture::kAttention ? weights.attention : weights.mlp;
  MF_ASSIGN_OR_RETURN(Tensor router_logits, Empty({normed.rows(), gate.num_experts}));
  MF_RETURN_IF_ERROR(backend_->RouterLogits(normed, gate.router_w1, gate.router_b1, gate.router_w2, router_logits));
  if (step.record_router_logits) {
    std::vector<float>& host = step.router_logits[static_cast<size_t>(layer)][static_cast<size_t>(mixture)];
    host.resize(static_cast<size_t>(router_logits.num_elements()));
    backend_->CopyToHostDeferred(router_logits, host.data());
  }
  RoutingPlan plan;
  if (!step.routing_experts.empty()) {
    const int64_t offset = step.routing_offsets[static_cast<size_t>(layer) * 2 + static_cast<size_t>(mixture)];
    plan.token_experts = step.routing_experts.Slice(offset, {normed.rows(), gate.top_k});
    plan.token_gates = step.routing_gates.Slice(offset, {normed.rows(), gate.top_k});
  }
  MF_RETURN_IF_ERROR(backend_->Route(router_logits, gate.top_k, plan));
  return plan;
}

}  // namespace mf
