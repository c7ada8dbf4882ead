// What one forward step keeps outside its layers: the inputs it uploads, the device
// buffers it reads and writes, and the key under which alike steps replay recorded work.
// Private to the Model's source files.
#pragma once

#include <array>
#include <optional>
#include <vector>

#include "engine/model.h"

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

struct Model::StepInputs {
  StepLayout layout;  // sizes and host vectors; its device tensors belong to the buffers
  int num_logit_rows = 0;
  bool argmax = false;  // some chunk takes its rows' argmax only
  bool sample = false;  // some chunk samples on the device
  bool record_routing = false;
  // Token ids, sequences, positions, cache rows ([T] each), block tables ([S, max blocks]),
  // new tokens per sequence ([S]), the rows whose logits are computed ([R]) and, when
  // sampling on the device, each row's SampleRowParams ([R, 16]), in one array: one
  // upload per step.
  std::vector<int32_t> packed;
  // Set when every host-side decision of the step's device work follows from it (decode
  // steps), so the work recorded for one such step replays for the next.
  std::optional<uint64_t> replay_key;
};

struct Model::StepBuffers {
  Tensor packed;          // the device copy of StepInputs::packed
  StepLayout layout;      // views of `packed`
  Tensor logit_rows;      // [R], a view of `packed`
  Tensor logits;          // [R, vocab]
  Tensor argmax;          // [R] int32, when asked for
  Tensor sample_params;   // [R, kSampleParamsWords], a view of `packed`, when sampling
  Tensor samples;         // [R, kSampleResultWords] int32, when sampling
  Tensor routing_experts;  // every layer's decisions, when recorded: [Σ T·k] int32
  Tensor routing_gates;    // [Σ T·k] f32
  std::vector<int64_t> routing_offsets;  // [layer * 2 + mixture]: where its decisions start
  std::unique_ptr<RecordedWork> record;  // the replayable work, when recorded
  // Every router's logits, when the batch asks for them: [layer][mixture], filled by the
  // step's deferred downloads.
  bool record_router_logits = false;
  std::vector<std::array<std::vector<float>, 2>> router_logits;
};

}  // namespace mf
