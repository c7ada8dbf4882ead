#include "engine/model.h"

#include <algorithm>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace mf {

struct Model::DeviceMixture {
  int num_experts = 0;
  int top_k = 0;
  int64_t expert_hidden = 0;
  Tensor router_w1, router_b1, router_w2, experts_in, experts_out;
};

struct Model::DeviceLayer {
  Tensor ln1_weight, ln1_bias, ln2_weight, ln2_bias;
  Tensor k_weight, k_bias, v_weight, v_bias;
  DeviceMixture attention, mlp;
};

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

absl::StatusOr<std::unique_ptr<Model>> Model::Create(const ModelWeights& weights, std::unique_ptr<Backend> backend,
                                                     const KvCacheOptions& cache_options) {
  std::unique_ptr<Model> model(new Model());
  model->config_ = weights.config;
  model->backend_ = std::move(backend);
  MF_RETURN_IF_ERROR(model->Upload(weights));
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
  // Every exit, errors included, completes the deferred routing downloads while `output`
  // (their destination) still exists.
  absl::Cleanup finish_downloads = [this] { backend_->FinishDeferredCopies(); };
  output.vocab_size = config_.vocab_size;
  std::vector<int32_t> logit_rows;
  MF_ASSIGN_OR_RETURN(StepLayout layout, BuildLayout(batch, &logit_rows, &output));
  if (batch.record_routing) output.routing.resize(layers_.size());

  const int64_t d = config_.n_embd;
  MF_ASSIGN_OR_RETURN(Tensor hidden, Empty({layout.num_tokens, d}));
  backend_->Embed(wte_, layout.token_ids, hidden);
  for (int layer = 0; layer < static_cast<int>(layers_.size()); ++layer) {
    MF_RETURN_IF_ERROR(RunAttention(layer, layout, hidden, batch.record_routing ? &output : nullptr));
    MF_RETURN_IF_ERROR(RunMlp(layer, hidden, batch.record_routing ? &output : nullptr));
  }

  const int64_t num_rows = static_cast<int64_t>(logit_rows.size());
  MF_ASSIGN_OR_RETURN(Tensor rows, backend_->Allocate(DType::kI32, {num_rows}));
  backend_->CopyFromHost(logit_rows.data(), rows);
  MF_ASSIGN_OR_RETURN(Tensor selected, Empty({num_rows, d}));
  backend_->GatherRows(hidden, rows, selected);
  MF_ASSIGN_OR_RETURN(Tensor normed, Empty({num_rows, d}));
  backend_->LayerNorm(selected, ln_f_weight_, ln_f_bias_, static_cast<float>(config_.layer_norm_epsilon), normed);
  MF_ASSIGN_OR_RETURN(Tensor logits, Empty({num_rows, config_.vocab_size}));
  backend_->Linear(normed, lm_head_, nullptr, logits);
  MF_RETURN_IF_ERROR(ReadLogits(batch, logits, &output));
  std::move(finish_downloads).Invoke();  // the routing of every layer (RecordRouting)
  MF_RETURN_IF_ERROR(backend_->status());
  return output;
}

absl::Status Model::RunAttention(int layer, const StepLayout& layout, Tensor& hidden, ForwardOutput* output) {
  const DeviceLayer& weights = layers_[static_cast<size_t>(layer)];
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

  MF_ASSIGN_OR_RETURN(RoutingPlan plan, RouteMixture(weights.attention, normed));
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
  if (output != nullptr) RecordRouting(plan, &output->routing[static_cast<size_t>(layer)][0]);
  return absl::OkStatus();
}

absl::Status Model::RunMlp(int layer, Tensor& hidden, ForwardOutput* output) {
  const DeviceLayer& weights = layers_[static_cast<size_t>(layer)];
  MF_ASSIGN_OR_RETURN(Tensor normed, Empty(hidden.shape));
  backend_->LayerNorm(hidden, weights.ln2_weight, weights.ln2_bias, static_cast<float>(config_.layer_norm_epsilon),
                      normed);
  MF_ASSIGN_OR_RETURN(RoutingPlan plan, RouteMixture(weights.mlp, normed));
  const int64_t num_slots = static_cast<int64_t>(plan.num_tokens) * plan.top_k;
  MF_ASSIGN_OR_RETURN(Tensor inner, Empty({num_slots, weights.mlp.expert_hidden}));
  backend_->ExpertGemm(normed, plan, /*gather_by_token=*/true, weights.mlp.experts_in, ExpertActivation::kGeluNew,
                       inner);
  MF_ASSIGN_OR_RETURN(Tensor expert_out, Empty({num_slots, config_.n_embd}));
  backend_->ExpertGemm(inner, plan, /*gather_by_token=*/false, weights.mlp.experts_out, ExpertActivation::kNone,
                       expert_out);
  backend_->CombineExperts(expert_out, plan, hidden);
  if (output != nullptr) RecordRouting(plan, &output->routing[static_cast<size_t>(layer)][1]);
  return absl::OkStatus();
}

absl::StatusOr<RoutingPlan> Model::RouteMixture(const DeviceMixture& mixture, const Tensor& normed) {
  MF_ASSIGN_OR_RETURN(Tensor gate_hidden, Empty({normed.rows(), config_.gating_size}));
  backend_->Linear(normed, mixture.router_w1, &mixture.router_b1, gate_hidden);
  backend_->GeluExact(gate_hidden);
  MF_ASSIGN_OR_RETURN(Tensor router_logits, Empty({normed.rows(), mixture.num_experts}));
  backend_->Linear(gate_hidden, mixture.router_w2, nullptr, router_logits);
  RoutingPlan plan;
  MF_RETURN_IF_ERROR(backend_->Route(router_logits, mixture.top_k, plan));
  return plan;
}

absl::Status Model::ReadLogits(const ForwardBatch& batch, const Tensor& logits, ForwardOutput* output) {
  const int64_t num_rows = logits.rows();
  const bool any_argmax_only = std::any_of(batch.sequences.begin(), batch.sequences.end(),
                                           [](const SequenceChunk& chunk) { return !chunk.full_logits; });
  if (any_argmax_only) {
    MF_ASSIGN_OR_RETURN(Tensor argmax, backend_->Allocate(DType::kI32, {num_rows}));
    backend_->ArgmaxRows(logits, argmax);
    output->argmax.resize(static_cast<size_t>(num_rows));
    backend_->CopyToHostDeferred(argmax, output->argmax.data());
  }
  std::vector<int32_t> full_rows;
  output->full_row.assign(static_cast<size_t>(num_rows), -1);
  for (size_t s = 0; s < batch.sequences.size(); ++s) {
    if (!batch.sequences[s].full_logits) continue;
    for (int row = output->logit_row_offsets[s]; row < output->logit_row_offsets[s + 1]; ++row) {
      output->full_row[static_cast<size_t>(row)] = static_cast<int>(full_rows.size());
      full_rows.push_back(row);
    }
  }
  if (full_rows.empty()) return absl::OkStatus();
  output->logits.resize(full_rows.size() * static_cast<size_t>(config_.vocab_size));
  if (static_cast<int64_t>(full_rows.size()) == num_rows) {
    backend_->ToFloat(logits, output->logits.data());
    return absl::OkStatus();
  }
  MF_ASSIGN_OR_RETURN(Tensor rows, backend_->Allocate(DType::kI32, {static_cast<int64_t>(full_rows.size())}));
  backend_->CopyFromHost(full_rows.data(), rows);
  MF_ASSIGN_OR_RETURN(Tensor selected, Empty({static_cast<int64_t>(full_rows.size()), config_.vocab_size}));
  backend_->GatherRows(logits, rows, selected);
  backend_->ToFloat(selected, output->logits.data());
  return absl::OkStatus();
}

void Model::RecordRouting(const RoutingPlan& plan, MixtureRouting* routing) {
  routing->top_k = plan.top_k;
  routing->num_experts = plan.num_experts;
  routing->experts.resize(static_cast<size_t>(plan.token_experts.num_elements()));
  routing->gates.resize(static_cast<size_t>(plan.token_gates.num_elements()));
  backend_->CopyToHostDeferred(plan.token_experts, routing->experts.data());
  backend_->CopyToHostDeferred(plan.token_gates, routing->gates.data());
}

}  // namespace mf
