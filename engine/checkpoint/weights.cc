#include "engine/checkpoint/weights.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"
#include "engine/checkpoint/checkpoint.h"

namespace mf {
namespace {

// Reads tensors of one checkpoint into HostTensors that keep the mapping alive.
class WeightReader {
 public:
  explicit WeightReader(std::shared_ptr<const Checkpoint> checkpoint) : checkpoint_(std::move(checkpoint)) {}

  absl::StatusOr<HostTensor> Read(const std::string& name, const std::vector<int64_t>& shape) const {
    MF_ASSIGN_OR_RETURN(const TensorView* view, checkpoint_->FindWeight(name, shape));
    return HostTensor{name, view->dtype, view->shape, view->data, checkpoint_};
  }

  // The leading dimension of a tensor whose other dimensions are known.
  absl::StatusOr<int64_t> ExpertCount(const std::string& name) const {
    MF_ASSIGN_OR_RETURN(const TensorView* view, checkpoint_->Find(name));
    if (view->shape.size() != 3 || view->shape[0] <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(view->file, ": tensor '", name, "' has shape ",
                                                     ShapeToString(view->shape), ", expected [experts, in, out]"));
    }
    return view->shape[0];
  }

  const ModelConfig& config() const { return checkpoint_->config(); }

 private:
  std::shared_ptr<const Checkpoint> checkpoint_;
};

absl::StatusOr<MixtureWeights> ReadMixture(const WeightReader& reader, const std::string& prefix,
                                           const std::string& experts_prefix, int64_t hidden, int64_t top_k) {
  const ModelConfig& config = reader.config();
  MixtureWeights mixture;
  const std::string experts_name = absl::StrCat(experts_prefix, "experts.weight");
  MF_ASSIGN_OR_RETURN(mixture.num_experts, reader.ExpertCount(experts_name));
  const int64_t experts = mixture.num_experts;
  if (top_k > experts) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", experts_name,
                                                   "' has ", experts, " experts, fewer than top-k = ", top_k));
  }
  mixture.top_k = top_k;
  mixture.expert_hidden = hidden;
  const int64_t d = config.n_embd;
  MF_ASSIGN_OR_RETURN(mixture.experts_in, reader.Read(experts_name, {experts, d, hidden}));
  MF_ASSIGN_OR_RETURN(mixture.experts_out,
                      reader.Read(absl::StrCat(experts_prefix, "output_experts.weight"), {experts, hidden, d}));
  MF_ASSIGN_OR_RETURN(mixture.router_w1,
                      reader.Read(absl::StrCat(prefix, "gate.w_gate.0.weight"), {config.gating_size, d}));
  MF_ASSIGN_OR_RETURN(mixture.router_b1, reader.Read(absl::StrCat(prefix, "gate.w_gate.0.bias"), {config.gating_size}));
  MF_ASSIGN_OR_RETURN(mixture.router_w2,
                      reader.Read(absl::StrCat(prefix, "gate.w_gate.3.weight"), {experts, config.gating_size}));
  return mixture;
}

absl::StatusOr<LayerWeights> ReadLayer(const WeightReader& reader, int64_t layer) {
  const ModelConfig& config = reader.config();
  const std::string prefix = absl::StrCat("transformer.h.", layer, ".");
  const int64_t d = config.n_embd;
  LayerWeights weights;
  MF_ASSIGN_OR_RETURN(weights.ln1_weight, reader.Read(prefix + "ln_1.weight", {d}));
  MF_ASSIGN_OR_RETURN(weights.ln1_bias, reader.Read(prefix + "ln_1.bias", {d}));
  MF_ASSIGN_OR_RETURN(weights.ln2_weight, reader.Read(prefix + "ln_2.weight", {d}));
  MF_ASSIGN_OR_RETURN(weights.ln2_bias, reader.Read(prefix + "ln_2.bias", {d}));
  MF_ASSIGN_OR_RETURN(weights.attention, ReadMixture(reader, prefix + "attn.q_proj.", prefix + "attn.q_proj.",
                                                     config.att_hidden, config.k_att));
  MF_ASSIGN_OR_RETURN(weights.mlp,
                      ReadMixture(reader, prefix + "mlpf.", prefix + "mlpf.", config.ffd_hidden, config.k_mlp));
  if (!config.kv_is_identity()) {
    MF_ASSIGN_OR_RETURN(weights.k_weight, reader.Read(prefix + "attn.k_proj.weight", {config.att_hidden, d}));
    MF_ASSIGN_OR_RETURN(weights.k_bias, reader.Read(prefix + "attn.k_proj.bias", {config.att_hidden}));
    MF_ASSIGN_OR_RETURN(weights.v_weight, reader.Read(prefix + "attn.v_proj.weight", {config.att_hidden, d}));
    MF_ASSIGN_OR_RETURN(weights.v_bias, reader.Read(prefix + "attn.v_proj.bias", {config.att_hidden}));
  }
  return weights;
}

}  // namespace

int64_t HostTensor::num_elements() const {
  int64_t count = 1;
  for (int64_t dim : shape) count *= dim;
  return count;
}

absl::StatusOr<ModelWeights> LoadWeights(std::shared_ptr<const Checkpoint> checkpoint) {
  WeightReader reader(checkpoint);
  const ModelConfig& config = checkpoint->config();
  ModelWeights weights;
  weights.config = config;
  const std::vector<int64_t> embedding_shape = {config.vocab_size, config.n_embd};
  MF_ASSIGN_OR_RETURN(weights.wte, reader.Read("transformer.wte.weight", embedding_shape));
  MF_ASSIGN_OR_RETURN(weights.ln_f_weight, reader.Read("transformer.ln_f.weight", {config.n_embd}));
  MF_ASSIGN_OR_RETURN(weights.ln_f_bias, reader.Read("transformer.ln_f.bias", {config.n_embd}));
  if (config.tie_word_embeddings && !checkpoint->Has("lm_head.weight")) {
    weights.lm_head = weights.wte;
  } else {
    MF_ASSIGN_OR_RETURN(weights.lm_head, reader.Read("lm_head.weight", embedding_shape));
  }
  for (int64_t layer = 0; layer < config.n_layer; ++layer) {
    MF_ASSIGN_OR_RETURN(LayerWeights layer_weights, ReadLayer(reader, layer));
    weights.layers.push_back(std::move(layer_weights));
  }
  return weights;
}

absl::StatusOr<ModelWeights> LoadWeights(const std::string& checkpoint_dir) {
  MF_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(checkpoint_dir));
  return LoadWeights(std::shared_ptr<const Checkpoint>(std::move(checkpoint)));
}

namespace {

// Calls `visit` on every tensor the weights hold, in checkpoint order.
template <typename Visit>
void ForEachTensor(const ModelWeights& weights, Visit visit) {
  visit(weights.wte);
  for (const LayerWeights& layer : weights.layers) {
    for (const HostTensor* tensor : {&layer.ln1_weight, &layer.ln1_bias, &layer.ln2_weight, &layer.ln2_bias,
                                     &layer.k_weight, &layer.k_bias, &layer.v_weight, &layer.v_bias}) {
      visit(*tensor);
    }
    for (const MixtureWeights* mixture : {&layer.attention, &layer.mlp}) {
      for (const HostTensor* tensor : {&mixture->router_w1, &mixture->router_b1, &mixture->router_w2,
                                       &mixture->experts_in, &mixture->experts_out}) {
        visit(*tensor);
      }
    }
  }
  visit(weights.ln_f_weight);
  visit(weights.ln_f_bias);
  visit(weights.lm_head);
}

// Index of the first element whose exponent bits are all ones (infinity or NaN), or
// `count`. Scans in blocks with a branch-free test, so the common all-finite case runs
// at memory speed.
template <typename Bits>
int64_t FirstNonFinite(const void* data, int64_t count, Bits exponent_mask) {
  const Bits* values = static_cast<const Bits*>(data);
  constexpr int64_t kBlock = 4096;
  for (int64_t begin = 0; begin < count; begin += kBlock) {
    const int64_t end = std::min(count, begin + kBlock);
    bool any = false;
    for (int64_t i = begin; i < end; ++i) any |= (values[i] & exponent_mask) == exponent_mask;
    if (!any) continue;
    for (int64_t i = begin; i < end; ++i) {
      if ((values[i] & exponent_mask) == exponent_mask) return i;
    }
  }
  return count;
}

int64_t FirstNonFinite(const HostTensor& tensor) {
  switch (tensor.dtype) {
    case DType::kF32: return FirstNonFinite<uint32_t>(tensor.data, tensor.num_elements(), 0x7f800000u);
    case DType::kBF16: return FirstNonFinite<uint16_t>(tensor.data, tensor.num_elements(), 0x7f80);
    case DType::kF16: return FirstNonFinite<uint16_t>(tensor.data, tensor.num_elements(), 0x7c00);
    default: return tensor.num_elements();  // not a floating type: nothing to check
  }
}

}  // namespace

absl::Status CheckWeightsFinite(const ModelWeights& weights) {
  absl::Status status;
  ForEachTensor(weights, [&](const HostTensor& tensor) {
    if (!status.ok() || tensor.empty()) return;
    const int64_t bad = FirstNonFinite(tensor);
    if (bad == tensor.num_elements()) return;
    float value = 0;
    ConvertToFloat(tensor.dtype, static_cast<const char*>(tensor.data) + bad * static_cast<int64_t>(DTypeSize(tensor.dtype)), 1,
                   &value);
    status = absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "': element ", bad, " of ",
                                                     tensor.num_elements(), " is ", value,
                                                     " (non-finite weights; --check-weights=false loads them anyway)"));
  });
  return status;
}

size_t TotalWeightBytes(const ModelWeights& weights) {
  size_t bytes = 0;
  ForEachTensor(weights, [&](const HostTensor& tensor) { bytes += tensor.empty() ? 0 : tensor.num_bytes(); });
  return bytes;
}

}  // namespace mf
