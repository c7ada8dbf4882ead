// The model's weights on the host, as stored (bf16/f16/f32), per layer and mixture.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/checkpoint/config.h"
#include "engine/checkpoint/dtype.h"

namespace mf {

class Checkpoint;

// A host tensor: either a view into a mapped checkpoint or an owned buffer;
// `keep_alive` holds whichever backs `data`.
struct HostTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  std::shared_ptr<const void> keep_alive;

  int64_t num_elements() const;
  size_t num_bytes() const { return static_cast<size_t>(num_elements()) * DTypeSize(dtype); }
  bool empty() const { return data == nullptr; }
};

// One sparse mixture (attention or MLP): its router and its experts.
struct MixtureWeights {
  int64_t num_experts = 0;  // from tensor shapes: pruned checkpoints differ per layer
  int64_t top_k = 0;
  int64_t expert_hidden = 0;  // att_hidden or ffd_hidden
  HostTensor router_w1;       // [gating_size, d], nn.Linear layout
  HostTensor router_b1;       // [gating_size]
  HostTensor router_w2;       // [E, gating_size]
  HostTensor experts_in;      // [E, d, hidden]  ([in, out] layout)
  HostTensor experts_out;     // [E, hidden, d]
};

struct LayerWeights {
  HostTensor ln1_weight, ln1_bias, ln2_weight, ln2_bias;
  MixtureWeights attention;
  MixtureWeights mlp;
  // Present only when K/V are projected (config.kv_is_identity() is false).
  HostTensor k_weight, k_bias, v_weight, v_bias;  // [att_hidden, d], [att_hidden]
};

struct ModelWeights {
  ModelConfig config;
  HostTensor wte;      // [vocab, d]
  HostTensor ln_f_weight, ln_f_bias;
  HostTensor lm_head;  // [vocab, d]
  std::vector<LayerWeights> layers;
};

// Reads every tensor the forward pass needs from an open checkpoint, checking
// names, shapes and dtypes; the checkpoint stays mapped as long as the weights live.
absl::StatusOr<ModelWeights> LoadWeights(std::shared_ptr<const Checkpoint> checkpoint);
absl::StatusOr<ModelWeights> LoadWeights(const std::string& checkpoint_dir);

// Every float tensor's values are finite; else an error naming the first tensor with a
// NaN or infinity and where in it. Reads all of the weights (about a second per 2 GB).
absl::Status CheckWeightsFinite(const ModelWeights& weights);

// Bytes of every tensor, as stored.
size_t TotalWeightBytes(const ModelWeights& weights);

// A model of the config's exact shape with deterministic pseudo-random bf16 weights,
// for benchmarks and tests that need no checkpoint.
ModelWeights RandomWeights(const ModelConfig& config, uint64_t seed);

}  // namespace mf
