// The sampler on the GPU: one block per row. Every selection (top-k, top-p, the top-n
// log-probabilities) is a radix select over a 64-bit key that orders tokens as the host
// sampler does (larger logit first, ties to the lower id), so no row is ever sorted.
// Probability mass is summed in 42-bit fixed point: integer sums do not depend on the
// order of the additions, so a row's draw is the same whatever the batch around it.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <curand_kernel.h>

#include <cfloat>

#include "kernels/sampling.h"

namespace mf::kernels {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;
constexpr float kMinTemperature = 1e-5f;  // engine/sampling/sampler.h's
constexpr double kWeightScale = 0x1p42;   // weights <= 1; sums over 2^21 tokens fit 64 bits

// Logit bits as an unsigned int that orders like the value; -0 counts as +0, as float
// comparisons do.
__device__ uint32_t OrderedBits(float logit) {
  const uint32_t bits = __float_as_uint(logit == 0.0f ? 0.0f : logit);
  return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
}

// Larger key: more likely; equal logits order by the lower id. Unique per token.
__device__ uint64_t Key(float logit, int token) {
  return (static_cast<uint64_t>(OrderedBits(logit)) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(token));
}

__device__ int KeyToken(uint64_t key) { return static_cast<int>(0xFFFFFFFFu - static_cast<uint32_t>(key)); }

// A penalised logit stays finite (the host's Finite): selection subtracts the top logit.
__device__ float Finite(float logit) { return fminf(fmaxf(logit, -FLT_MAX), FLT_MAX); }

struct MaxKey {
  __device__ uint64_t operator()(uint64_t a, uint64_t b) const { return a > b ? a : b; }
};
struct MinInt {
  __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};

// Which tokens of a row take part in a selection, and their weights.
struct Candidates {
  const float* logits;
  int vocab;
  float max_logit;
  float inverse_temperature;
  float floor = -INFINITY;  // min-p
  uint64_t lowest_key = 0;  // top-k (then top-p)
  bool weighted = false;    // drop tokens whose weight underflows; amounts are weights
  bool clamp = false;       // no top-k or min-p: exponents clamped at -100, as the host's ScaledExp

  __device__ float Weight(float logit) const {
    float exponent = (logit - max_logit) * inverse_temperature;
    if (clamp) exponent = fmaxf(exponent, -100.0f);
    return expf(exponent);
  }
  // The token's amount in a selection (0: not a candidate), by count or fixed-point weight.
  __device__ uint64_t Amount(float logit, uint64_t key) const {
    if (key < lowest_key || !(logit >= floor)) return 0;
    if (!weighted) return 1;
    return static_cast<uint64_t>(static_cast<double>(Weight(logit)) * kWeightScale);
  }
  __device__ bool InSupport(float logit, uint64_t key) const {
    return key >= lowest_key && logit >= floor && (!weighted || Weight(logit) > 0.0f);
  }
};

struct Shared {
  union {
    cub::BlockReduce<uint64_t, kThreads>::TempStorage reduce_key;
    cub::BlockReduce<int, kThreads>::TempStorage reduce_int;
    cub::BlockReduce<double, kThreads>::TempStorage reduce_double;
    cub::BlockScan<uint64_t, kThreads>::TempStorage scan;
  } cub;
  uint64_t histogram[kWarps][kBins];  // one per warp: a row's logits crowd a few top bins
  uint64_t bin_total[kBins];
  uint64_t value;  // broadcasts
  int digit;
  uint64_t digit_above;
  int drawn;
  int num_top;
  uint64_t top_keys[kMaxSampleLogprobs];
};

__device__ uint64_t BroadcastKey(Shared& shared, uint64_t value) {
  if (threadIdx.x == 0) shared.value = value;
  __syncthreads();
  const uint64_t result = shared.value;
  __syncthreads();
  return result;
}

// Warp 0 finds the highest bin at which the amount of candidates above it plus the bin
// reaches `need`, given `above` for everything above bin 255.
__device__ void FindDigit(Shared& shared, uint64_t above, uint64_t need) {
  if (threadIdx.x >= 32) return;
  const int lane = static_cast<int>(threadIdx.x);
  uint64_t lane_total = 0;
  for (int bin = lane * 8; bin < lane * 8 + 8; ++bin) lane_total += shared.bin_total[bin];
  uint64_t suffix = lane_total;  // this lane's bins and every higher lane's
  for (int offset = 1; offset < 32; offset *= 2) {
    const uint64_t higher = __shfl_down_sync(0xFFFFFFFFu, suffix, offset);
    if (lane + offset < 32) suffix += higher;
  }
  if (lane == 0) {  // defaults, should no bin reach `need`: keep the whole range
    shared.digit = 0;
    shared.digit_above = above;
  }
  __syncwarp();
  uint64_t accumulated = above + suffix - lane_total;
  if (accumulated < need && accumulated + lane_total >= need) {
    for (int bin = lane * 8 + 7; bin >= lane * 8; --bin) {
      if (accumulated + shared.bin_total[bin] >= need) {
        shared.digit = bin;
        shared.digit_above = accumulated;
        break;
      }
      accumulated += shared.bin_total[bin];
    }
  }
}

// The largest key K such that the candidates with keys >= K amount to at least `need`.
__device__ uint64_t SelectKey(const Candidates& candidates, uint64_t need, Shared& shared) {
  const int warp = static_cast<int>(threadIdx.x) / 32;
  uint64_t prefix = 0, above = 0;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int bin = static_cast<int>(threadIdx.x); bin < kWarps * kBins; bin += kThreads) {
      shared.histogram[bin / kBins][bin % kBins] = 0;
    }
    __syncthreads();
    const uint64_t decided = shift == 56 ? 0 : ~uint64_t{0} << (shift + 8);
    for (int token = static_cast<int>(threadIdx.x); token < candidates.vocab; token += kThreads) {
      const float logit = candidates.logits[token];
      const uint64_t key = Key(logit, token);
      if ((key & decided) != (prefix & decided)) continue;
      const uint64_t amount = candidates.Amount(logit, key);
      if (amount != 0) atomicAdd(reinterpret_cast<unsigned long long*>(&shared.histogram[warp][(key >> shift) & 255]),
                                 static_cast<unsigned long long>(amount));
    }
    __syncthreads();
    for (int bin = static_cast<int>(threadIdx.x); bin < kBins; bin += kThreads) {
      uint64_t total = 0;
      for (int w = 0; w < kWarps; ++w) total += shared.histogram[w][bin];
      shared.bin_total[bin] = total;
    }
    __syncthreads();
    FindDigit(shared, above, need);
    __syncthreads();
    prefix |= static_cast<uint64_t>(shared.digit) << shift;
    above = shared.digit_above;
    __syncthreads();
  }
  return prefix;
}

// Sum of the candidates' fixed-point weights, the same in every thread.
__device__ uint64_t TotalWeight(const Candidates& candidates, Shared& shared) {
  uint64_t sum = 0;
  for (int token = static_cast<int>(threadIdx.x); token < candidates.vocab; token += kThreads) {
    const float logit = candidates.logits[token];
    sum += candidates.Amount(logit, Key(logit, token));
  }
  const uint64_t total = cub::BlockReduce<uint64_t, kThreads>(shared.cub.reduce_key).Sum(sum);
  return BroadcastKey(shared, total);
}

// Each thread walks its own run of tokens, so the running sum follows token order.
__device__ int Draw(const Candidates& candidates, double uniform, Shared& shared) {
  const int run = (candidates.vocab + kThreads - 1) / kThreads;
  const int begin = min(candidates.vocab, static_cast<int>(threadIdx.x) * run);
  const int end = min(candidates.vocab, begin + run);
  uint64_t sum = 0;
  for (int token = begin; token < end; ++token) {
    const float logit = candidates.logits[token];
    sum += candidates.Amount(logit, Key(logit, token));
  }
  uint64_t before = 0, total = 0;
  cub::BlockScan<uint64_t, kThreads>(shared.cub.scan).ExclusiveSum(sum, before, total);
  if (threadIdx.x == 0) shared.drawn = -1;
  __syncthreads();
  const uint64_t point = min(static_cast<uint64_t>(uniform * static_cast<double>(total)), total - 1);
  if (before <= point && point < before + sum) {
    uint64_t cumulative = before;
    for (int token = begin; token < end; ++token) {
      const float logit = candidates.logits[token];
      cumulative += candidates.Amount(logit, Key(logit, token));
      if (point < cumulative) {
        shared.drawn = token;
        break;
      }
    }
  }
  __syncthreads();
  return shared.drawn;
}

// 53 uniform bits in [0, 1) from the request's seed and the sequence's draw counter.
__device__ double Uniform(const SampleRowParams& params) {
  curandStatePhilox4_32_10_t state;
  const uint64_t seed = (static_cast<uint64_t>(params.seed_high) << 32) | params.seed_low;
  curand_init(seed, params.draw_index, 0, &state);
  const uint4 bits = curand4(&state);
  const uint64_t word = (static_cast<uint64_t>(bits.x) << 32) | bits.y;
  return static_cast<double>(word >> 11) * 0x1p-53;
}

// log Σ exp(raw logits), as the host's FillLogprobs sums it (exponents clamped at -100).
__device__ double LogTotal(const float* raw, int vocab, float raw_max, Shared& shared) {
  double sum = 0;
  for (int token = static_cast<int>(threadIdx.x); token < vocab; token += kThreads) {
    sum += expf(fmaxf(raw[token] - raw_max, -100.0f));
  }
  const double total = cub::BlockReduce<double, kThreads>(shared.cub.reduce_double).Sum(sum);
  if (threadIdx.x == 0) shared.value = __double_as_longlong(log(total) + raw_max);
  __syncthreads();
  const double result = __longlong_as_double(static_cast<long long>(shared.value));
  __syncthreads();
  return result;
}

// The n most likely raw logits, most likely first.
__device__ void TopLogprobs(const float* raw, int vocab, int count, double log_total, Shared& shared,
                            SampleRowResult& result) {
  Candidates all{raw, vocab, 0.0f, 1.0f};
  const uint64_t lowest = SelectKey(all, static_cast<uint64_t>(count), shared);
  if (threadIdx.x == 0) shared.num_top = 0;
  __syncthreads();
  for (int token = static_cast<int>(threadIdx.x); token < vocab; token += kThreads) {
    const uint64_t key = Key(raw[token], token);
    if (key < lowest) continue;
    const int slot = atomicAdd(&shared.num_top, 1);
    if (slot < kMaxSampleLogprobs) shared.top_keys[slot] = key;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  const int found = min(min(shared.num_top, count), kMaxSampleLogprobs);
  for (int i = 1; i < found; ++i) {  // insertion sort of at most 20, most likely first
    const uint64_t key = shared.top_keys[i];
    int j = i;
    for (; j > 0 && shared.top_keys[j - 1] < key; --j) shared.top_keys[j] = shared.top_keys[j - 1];
    shared.top_keys[j] = key;
  }
  for (int i = 0; i < found; ++i) {
    const int token = KeyToken(shared.top_keys[i]);
    result.top_tokens[i] = token;
    result.top_logprobs[i] = static_cast<float>(raw[token] - log_total);
  }
}

__global__ void __launch_bounds__(kThreads) SampleRowsKernel(const float* __restrict__ logits, int vocab,
                                                             const SampleRowParams* __restrict__ all_params,
                                                             uint32_t* __restrict__ penalty_counts,
                                                             float* __restrict__ scratch,
                                                             SampleRowResult* __restrict__ results,
                                                             uint8_t* __restrict__ support) {
  __shared__ Shared shared;
  const int row = static_cast<int>(blockIdx.x);
  const SampleRowParams params = all_params[row];
  if (params.enabled == 0) return;
  const float* raw = logits + static_cast<int64_t>(row) * vocab;
  uint32_t* counts = params.penalty_slot >= 0 && penalty_counts != nullptr
                         ? penalty_counts + static_cast<int64_t>(params.penalty_slot) * vocab
                         : nullptr;
  float* penalised = scratch + static_cast<int64_t>(row) * vocab;
  const float repetition = params.repetition_penalty;

  // Pass 1: the finite check, penalties, and the raw and penalised maxima.
  int bad = vocab;
  uint64_t raw_best = 0, best = 0;
  for (int token = static_cast<int>(threadIdx.x); token < vocab; token += kThreads) {
    const float logit = raw[token];
    if (!isfinite(logit)) {
      bad = min(bad, token);
      continue;
    }
    raw_best = max(raw_best, Key(logit, token));
    float value = logit;
    if (counts != nullptr) {
      const uint32_t count = counts[token];
      const uint32_t generated = count & ~kPromptTokenBit;
      if (count != 0 && repetition != 1.0f) value = Finite(value > 0 ? value / repetition : value * repetition);
      if (generated != 0) {  // rounded as the host rounds it (no fused multiply-add)
        const float penalty = __fadd_rn(params.presence_penalty,
                                        __fmul_rn(params.frequency_penalty, static_cast<float>(generated)));
        value = Finite(__fsub_rn(value, penalty));
      }
      penalised[token] = value;
    }
    best = max(best, Key(value, token));
  }
  bad = cub::BlockReduce<int, kThreads>(shared.cub.reduce_int).Reduce(bad, MinInt());
  __syncthreads();
  raw_best = BroadcastKey(shared, cub::BlockReduce<uint64_t, kThreads>(shared.cub.reduce_key).Reduce(raw_best, MaxKey()));
  best = BroadcastKey(shared, cub::BlockReduce<uint64_t, kThreads>(shared.cub.reduce_key).Reduce(best, MaxKey()));
  if (threadIdx.x == 0) shared.value = static_cast<uint64_t>(bad);
  __syncthreads();
  bad = static_cast<int>(shared.value);
  SampleRowResult& result = results[row];
  if (bad < vocab) {
    if (threadIdx.x == 0) {
      result.token = -1;
      result.bad_token = bad;
      result.bad_value = raw[bad];
    }
    return;
  }
  const float* working = counts != nullptr ? penalised : raw;
  int token = KeyToken(best);
  const bool greedy = !(params.temperature >= kMinTemperature);
  if (!greedy) {
    Candidates candidates{working, vocab, working[token], 1.0f / params.temperature};
    const bool top_k = params.top_k > 0 && params.top_k < vocab;
    const bool min_p = params.min_p_offset > -INFINITY;
    if (top_k) candidates.lowest_key = SelectKey(candidates, static_cast<uint64_t>(params.top_k), shared);
    if (min_p) candidates.floor = candidates.max_logit + params.min_p_offset;
    candidates.clamp = !top_k && !min_p;
    candidates.weighted = true;
    if (params.top_p < 1.0f) {
      const uint64_t total = TotalWeight(candidates, shared);
      const double target = ceil(static_cast<double>(params.top_p) * static_cast<double>(total));
      const uint64_t need = min(total, max(uint64_t{1}, static_cast<uint64_t>(target)));
      candidates.lowest_key = max(candidates.lowest_key, SelectKey(candidates, need, shared));
    }
    token = Draw(candidates, Uniform(params), shared);
    if (support != nullptr) {
      uint8_t* mask = support + static_cast<int64_t>(row) * vocab;
      for (int t = static_cast<int>(threadIdx.x); t < vocab; t += kThreads) {
        mask[t] = candidates.InSupport(working[t], Key(working[t], t)) ? 1 : 0;
      }
    }
  } else if (support != nullptr) {
    uint8_t* mask = support + static_cast<int64_t>(row) * vocab;
    for (int t = static_cast<int>(threadIdx.x); t < vocab; t += kThreads) mask[t] = t == token ? 1 : 0;
  }
  const int num_top = min(max(params.num_top_logprobs, 0), kMaxSampleLogprobs);
  if (params.want_logprob != 0 || num_top > 0) {
    const float raw_max = raw[KeyToken(raw_best)];
    const double log_total = LogTotal(raw, vocab, raw_max, shared);
    if (threadIdx.x == 0) result.logprob = static_cast<float>(raw[token] - log_total);
    if (num_top > 0) TopLogprobs(raw, vocab, num_top, log_total, shared, result);
  }
  if (threadIdx.x == 0) {
    result.token = token;
    result.bad_token = -1;
    if (counts != nullptr) counts[token] += 1;  // one row per slot in a step
  }
}

__global__ void MarkHistoryKernel(uint32_t* counts, int vocab, const int32_t* prompt, int num_prompt,
                                  const int32_t* generated, int num_generated) {
  const int index = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (index < num_prompt) {
    const int token = prompt[index];
    if (token >= 0 && token < vocab) atomicOr(&counts[token], kPromptTokenBit);
  } else if (index < num_prompt + num_generated) {
    const int token = generated[index - num_prompt];
    if (token >= 0 && token < vocab) atomicAdd(&counts[token], 1u);
  }
}

}  // namespace

cudaError_t SampleRows(const float* logits, int num_rows, int vocab, const SampleRowParams* params,
                       uint32_t* penalty_counts, float* scratch, SampleRowResult* results, uint8_t* support,
                       cudaStream_t stream) {
  if (num_rows > 0 && vocab > 0) {
    SampleRowsKernel<<<num_rows, kThreads, 0, stream>>>(logits, vocab, params, penalty_counts, scratch, results,
                                                        support);
  }
  return cudaGetLastError();
}

cudaError_t SetPenaltyHistory(uint32_t* counts, int vocab, const int32_t* prompt, int num_prompt,
                              const int32_t* generated, int num_generated, cudaStream_t stream) {
  cudaError_t error = cudaMemsetAsync(counts, 0, static_cast<size_t>(vocab) * sizeof(uint32_t), stream);
  if (error != cudaSuccess) return error;
  const int total = num_prompt + num_generated;
  if (total > 0) {
    MarkHistoryKernel<<<(total + 255) / 256, 256, 0, stream>>>(counts, vocab, prompt, num_prompt, generated,
                                                                num_generated);
  }
  return cudaGetLastError();
}

}  // namespace mf::kernels
