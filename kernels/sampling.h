// Token selection on the GPU: the greedy argmax, and the full sampler (penalties,
// temperature, top-k / min-p / top-p, a seeded draw, log-probabilities), so a step
// downloads a few words per sequence instead of a vocabulary-sized row of logits.
// The host sampler (engine/sampling/) is the reference these kernels are tested against.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mf::kernels {

// tokens[r] = the index of the largest of logits[r, 0..width), the lowest among ties (as
// std::max_element picks on the host). Up to kMaxSplitArgmaxRows rows, given a workspace of
// ArgmaxChunks(rows, width) * rows * 8 bytes and `rows` zeroed counter words (left zeroed),
// each row is split across blocks (a row per block leaves most of the GPU idle).
inline constexpr int kMaxSplitArgmaxRows = 64;
int ArgmaxChunks(int num_rows, int width);
cudaError_t ArgmaxRows(const float* logits, int num_rows, int width, int32_t* tokens, cudaStream_t stream,
                       void* workspace = nullptr, uint32_t* counters = nullptr);

inline constexpr int kMaxSampleLogprobs = 20;
// A sequence's penalty counts: one word per vocabulary entry, bit 31 set when the token
// occurs in the prompt, bits 0-30 the times it was generated.
inline constexpr uint32_t kPromptTokenBit = 0x80000000u;

// One row's request, packed by the host into the step's upload (16 words; engine/backend.h
// has the same layout, checked by the CUDA backend).
struct SampleRowParams {
  float temperature;         // below 1e-5: greedy (the argmax of the penalised logits)
  float top_p;               // 1: off
  float min_p_offset;        // temperature * log(min_p): logits below max + this are dropped; -inf: off
  float repetition_penalty;  // 1: off (already clamped)
  float presence_penalty;
  float frequency_penalty;
  int32_t top_k;             // <= 0 or >= the vocabulary: off
  int32_t num_top_logprobs;  // 0 to kMaxSampleLogprobs
  int32_t want_logprob;      // the chosen token's log-probability (implied by num_top_logprobs > 0)
  int32_t penalty_slot;      // this sequence's row of penalty counts; -1: no penalties
  uint32_t seed_low, seed_high;
  uint32_t draw_index;       // the sequence's draw counter: the same seed and index give the same draw
  int32_t enabled;           // 0: the row is skipped (its result is left as it was)
  int32_t reserved[2];
};
static_assert(sizeof(SampleRowParams) == 16 * sizeof(int32_t));

// What comes back per row (44 words). Log-probabilities are of the raw logits (the
// model's distribution, before penalties and temperature), as on the host.
struct SampleRowResult {
  int32_t token;      // -1 when a logit is not finite
  float logprob;
  int32_t bad_token;  // >= 0: the lowest id whose raw logit is NaN or infinite
  float bad_value;
  int32_t top_tokens[kMaxSampleLogprobs];  // most likely first, ties to the lower id
  float top_logprobs[kMaxSampleLogprobs];
};
static_assert(sizeof(SampleRowResult) == 44 * sizeof(int32_t));

// Samples one token per row of logits [num_rows, vocab] (fp32). `penalty_counts` holds
// [slots, vocab] words (see kPromptTokenBit) and may be null when no row has a slot; each
// drawn token's count is incremented there. `scratch` holds num_rows * vocab floats (the
// penalised logits). `support`, when not null, receives [num_rows, vocab] bytes: 1 for
// each token the draw could have picked (for tests). Deterministic: the same logits,
// parameters and counts give the same result whatever the other rows.
cudaError_t SampleRows(const float* logits, int num_rows, int vocab, const SampleRowParams* params,
                       uint32_t* penalty_counts, float* scratch, SampleRowResult* results, uint8_t* support,
                       cudaStream_t stream);

// Sets a slot's penalty counts from a history: zeroes `counts` [vocab], marks the prompt's
// tokens and counts the generated ones (ids outside the vocabulary are ignored).
cudaError_t SetPenaltyHistory(uint32_t* counts, int vocab, const int32_t* prompt, int num_prompt,
                              const int32_t* generated, int num_generated, cudaStream_t stream);

}  // namespace mf::kernels
