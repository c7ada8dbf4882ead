// One generation request as the engine tracks it: what was asked, the tokens so
// far, its block table, and what has been streamed back.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/sampling/sampler.h"
#include "engine/text/detokenizer.h"

namespace mf {

enum class FinishReason { kNone, kLength, kStop, kEos, kCancelled };
const char* FinishReasonName(FinishReason reason);

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int max_new_tokens = 16;
  SamplingParams sampling;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;         // needs a tokenizer
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int priority = 0;                      // lower runs first
  bool return_routing = false;
  bool skip_special_tokens = true;
  absl::Time deadline = absl::InfiniteFuture();
  std::string stats_tag;  // expert statistics can be filtered by this tag
  // Log-probabilities of the prompt's tokens (each given those before it), with this many
  // alternatives each; none when unset. Such a request's prompt is computed in full, never
  // taken from the prefix cache (cached positions have no logits).
  std::optional<int> prompt_logprobs;
};

// Experts chosen at the position that predicted one generated token.
struct TokenRouting {
  std::vector<std::vector<int32_t>> experts[2];  // [mixture][layer][k]
  std::vector<std::vector<float>> gates[2];
};

struct GenerationUpdate {
  std::vector<int32_t> tokens;  // newly generated ids
  std::string text;             // newly released text (complete characters, stop strings removed)
  std::vector<SampleResult> logprobs;
  std::vector<SampleResult> prompt_logprobs;  // prompt tokens 1.., in the update of the first new token
  std::vector<TokenRouting> routing;
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  absl::Status status;  // non-OK: the request failed (deadline, engine error)
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_prompt_tokens = 0;
  double queue_seconds = 0;
  double time_to_first_token_seconds = 0;
  double total_seconds = 0;
};

// Called on the engine's delivery thread (one thread, a request's updates in order, the
// final one last); it must not block.
using UpdateCallback = std::function<void(GenerationUpdate&&)>;

struct Sequence {
  uint64_t id = 0;
  GenerationRequest request;
  std::shared_ptr<const UpdateCallback> on_update;  // shared with its updates still being delivered
  absl::Time arrival_time;
  std::optional<absl::Time> first_scheduled_time, first_token_time, last_token_time;

  std::vector<int32_t> tokens;  // prompt, then generated
  size_t prompt_length = 0;
  std::vector<SampleResult> prompt_logprobs;  // by position - 1, when the request asks for them
  bool prompt_logprobs_sent = false;
  int num_cached = 0;           // leading tokens whose K/V are in the cache
  std::vector<int32_t> block_table;
  int num_committed_blocks = 0;  // full blocks offered to the prefix cache
  uint64_t last_block_hash = 0;
  int cached_prompt_tokens = 0;  // reused from the prefix cache at first admission
  int num_preemptions = 0;
  bool cancel_requested = false;
  // A stream whose client stopped reading: not scheduled (its KV stays, it still counts
  // as running) until resumed, and cancelled after EngineConfig::stall_timeout.
  std::optional<absl::Time> paused_since;

  TokenHistory history;
  std::mt19937_64 rng;        // the host sampler's generator
  uint64_t sampling_seed = 0;  // the device sampler's: the request's seed, or a random one
  int penalty_slot = -1;       // the device's penalty counts for this sequence, when it holds a slot
  std::unique_ptr<IncrementalDecoder> decoder;  // null without a tokenizer
  std::unique_ptr<StopMatcher> stop_matcher;

  int num_generated() const { return static_cast<int>(tokens.size() - prompt_length); }
  int num_pending() const { return static_cast<int>(tokens.size()) - num_cached; }
  bool in_prefill() const { return num_pending() > 1; }
};

}  // namespace mf
