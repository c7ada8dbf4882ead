// Deterministic random weights of a config's exact shape (no checkpoint needed).
#include <cmath>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/checkpoint/weights.h"

namespace mf {
namespace {

// FNV-1a: stable across compilers and standard libraries, unlike std::hash.
uint64_t HashName(const std::string& name) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char c : name) hash = (hash ^ c) * 0x100000001b3ull;
  return hash;
}

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The tensor's name and the seed pick its stream, so any one tensor can be
// regenerated alone and adding tensors never shifts the others.
HostTensor MakeTensor(const std::string& name, std::vector<int64_t> shape, uint64_t seed, float stddev,
                      float constant) {
  HostTensor tensor{name, DType::kBF16, std::move(shape), nullptr, nullptr};
  auto storage = std::make_shared<std::vector<uint16_t>>(static_cast<size_t>(tensor.num_elements()));
  uint64_t state = seed ^ HashName(name);
  // Uniform on [-a, a] has standard deviation a / sqrt(3).
  const float half_width = stddev * std::sqrt(3.0f);
  for (uint16_t& value : *storage) {
    float sample = constant;
    if (stddev > 0) {
      const double unit = static_cast<double>(SplitMix64(state) >> 11) * 0x1.0p-53;
      sample += static_cast<float>((2.0 * unit - 1.0) * half_width);
    }
    value = FloatToBf16(sample);
  }
  tensor.data = storage->data();
  tensor.keep_alive = storage;
  return tensor;
}

MixtureWeights MakeMixture(const ModelConfig& config, const std::string& prefix, int64_t experts, int64_t hidden,
                           int64_t top_k, uint64_t seed) {
  const int64_t d = config.n_embd;
  constexpr float kStd = 0.02f;
  MixtureWeights mixture;
  mixture.num_experts = experts;
  mixture.top_k = top_k;
  mixture.expert_hidden = hidden;
  mixture.router_w1 = MakeTensor(prefix + "gate.w_gate.0.weight", {config.gating_size, d}, seed, kStd, 0);
  mixture.router_b1 = MakeTensor(prefix + "gate.w_gate.0.bias", {config.gating_size}, seed, kStd, 0);
  // A wider last router layer gives a spread of routing decisions, as trained routers do.
  mixture.router_w2 = MakeTensor(prefix + "gate.w_gate.3.weight", {experts, config.gating_size}, seed, 1.0f, 0);
  mixture.experts_in = MakeTensor(prefix + "experts.weight", {experts, d, hidden}, seed, kStd, 0);
  mixture.experts_out = MakeTensor(prefix + "output_experts.weight", {experts, hidden, d}, seed, kStd, 0);
  return mixture;
}

LayerWeights MakeLayer(const ModelConfig& config, int64_t layer, uint64_t seed) {
  const std::string prefix = absl::StrCat("transformer.h.", layer, ".");
  const int64_t d = config.n_embd;
  LayerWeights weights;
  weights.ln1_weight = MakeTensor(prefix + "ln_1.weight", {d}, seed, 0, 1);
  weights.ln1_bias = MakeTensor(prefix + "ln_1.bias", {d}, seed, 0, 0);
  weights.ln2_weight = MakeTensor(prefix + "ln_2.weight", {d}, seed, 0, 1);
  weights.ln2_bias = MakeTensor(prefix + "ln_2.bias", {d}, seed, 0, 0);
  weights.attention = MakeMixture(config, prefix + "attn.q_proj.", config.n_att_experts, config.att_hidden,
                                  config.k_att, seed);
  weights.mlp = MakeMixture(config, prefix + "mlpf.", config.n_mlp_experts, config.ffd_hidden, config.k_mlp, seed);
  if (!config.kv_is_identity()) {
    weights.k_weight = MakeTensor(prefix + "attn.k_proj.weight", {config.att_hidden, d}, seed, 0.02f, 0);
    weights.k_bias = MakeTensor(prefix + "attn.k_proj.bias", {config.att_hidden}, seed, 0.02f, 0);
    weights.v_weight = MakeTensor(prefix + "attn.v_proj.weight", {config.att_hidden, d}, seed, 0.02f, 0);
    weights.v_bias = MakeTensor(prefix + "attn.v_proj.bias", {config.att_hidden}, seed, 0.02f, 0);
  }
  return weights;
}

}  // namespace

ModelWeights RandomWeights(const ModelConfig& config, uint64_t seed) {
  ModelWeights weights;
  weights.config = config;
  const int64_t d = config.n_embd;
  weights.wte = MakeTensor("transformer.wte.weight", {config.vocab_size, d}, seed, 0.02f, 0);
  weights.ln_f_weight = MakeTensor("transformer.ln_f.weight", {d}, seed, 0, 1);
  weights.ln_f_bias = MakeTensor("transformer.ln_f.bias", {d}, seed, 0, 0);
  weights.lm_head = MakeTensor("lm_head.weight", {config.vocab_size, d}, seed, 0.02f, 0);
  weights.layers.resize(static_cast<size_t>(config.n_layer));
  // Layers are independent streams, so they fill in parallel (billions of values).
  const unsigned num_threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> workers;
  for (unsigned worker = 0; worker < num_threads; ++worker) {
    workers.emplace_back([&, worker] {
      for (int64_t layer = worker; layer < config.n_layer; layer += num_threads) {
        weights.layers[static_cast<size_t>(layer)] = MakeLayer(config, layer, seed);
      }
    });
  }
  for (std::thread& thread : workers) thread.join();
  return weights;
}

}  // namespace mf
