// Engine-level step benchmark on a model of a published shape with random weights:
// prefill throughput and decode step time at a given batch and context, plus the
// device's measured limits (copy bandwidth, bf16 GEMM rate) for the ratios.
#include <algorithm>
#include <chrono>
#include <random>
#include <cstdio>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/step_work.h"
#include "engine/base/worker_pool.h"
#include "engine/model_loader.h"
#include "engine/sampling/sampler.h"
#include "server/command_line.h"
#include "server/model_flags.h"
#ifdef MF_WITH_CUDA
#include <cuda_profiler_api.h>

#include "bench/roofline.h"
#endif

ABSL_FLAG(std::string, decode_batches, "1,256", "Decode batch sizes");
ABSL_FLAG(int32_t, context, 512, "Tokens already in each sequence's cache when decoding");
ABSL_FLAG(int32_t, steps, 20, "Decode steps timed per batch size");
ABSL_FLAG(int32_t, prefill_prompts, 32, "Prompts in the prefill measurement");
ABSL_FLAG(int32_t, prefill_length, 512, "Tokens per prompt in the prefill measurement");
ABSL_FLAG(std::string, prefill_shapes, "",
          "More prefill measurements, as PROMPTSxLENGTH,... (e.g. 2x1024,8x1024: the step sizes a server's "
          "--max-batch-tokens allows)");
ABSL_FLAG(int32_t, prefill_runs, 5, "Prefill batches timed (the median is reported)");
ABSL_FLAG(int32_t, mixed_decodes, 0,
          "Also time each prefill shape with this many decoding sequences (at --context) in the same step, as a "
          "server's steps mix prompt chunks with running requests");
ABSL_FLAG(bool, record_routing, true, "Download every layer's routing, as the engine does for expert statistics");
ABSL_FLAG(bool, full_logits, false,
          "Download every sequence's row of logits, as the engine does for sampled requests (greedy ones take the "
          "argmax on the device)");
ABSL_FLAG(bool, sample, false,
          "Also time each decode batch with every row sampled (temperature 0.8, top-p 0.95) as the engine samples "
          "it: on the device when the backend can, else downloaded and sampled on the host; printed beside the "
          "greedy step of the same run");
ABSL_FLAG(bool, host_sampling, false,
          "With --sample: download every row and sample on the host (the loop thread and --sampling-threads "
          "helpers), as the engine does without device sampling");
ABSL_FLAG(int32_t, sampling_threads, 0, "Helpers for --sample --host-sampling");
ABSL_FLAG(bool, profile_decode, false,
          "Bracket the timed decode steps with cudaProfilerStart/Stop, for `ncu --profile-from-start off`");
ABSL_FLAG(bool, profile_prefill, false, "Bracket the timed prefill batches likewise");

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

struct Batch {
  std::vector<std::vector<int32_t>> tokens, tables;
  std::vector<int> cached;
};

// `count` sequences of `length` random tokens with blocks for `length + extra` tokens.
Batch MakeBatch(mf::Model& model, int count, int length, int extra) {
  Batch batch;
  for (int s = 0; s < count; ++s) {
    std::vector<int32_t> tokens(static_cast<size_t>(length));
    for (int i = 0; i < length; ++i) tokens[static_cast<size_t>(i)] = (s * 7919 + i * 104729) % model.config().vocab_size;
    batch.tokens.push_back(tokens);
    auto blocks = model.kv_cache().allocator().Allocate(model.kv_cache().BlocksFor(length + extra));
    if (!blocks.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(blocks.status().message()).c_str());
      std::exit(1);
    }
    batch.tables.push_back(*blocks);
    batch.cached.push_back(0);
  }
  return batch;
}

mf::SamplingParams BenchSampling() {
  mf::SamplingParams params;
  params.temperature = 0.8f;
  params.top_p = 0.95f;
  return params;
}

// The engine's host work for sampled requests: every downloaded row through the sampler.
void SampleOnHost(const mf::ForwardOutput& output) {
  static mf::WorkerPool pool(absl::GetFlag(FLAGS_sampling_threads));
  static std::vector<std::mt19937_64> generators;
  const int rows = static_cast<int>(output.logit_row_offsets.size()) - 1;
  while (static_cast<int>(generators.size()) < rows) generators.emplace_back(generators.size());
  const mf::SamplingParams params = BenchSampling();
  const mf::TokenHistory history;
  pool.ParallelFor(rows, [&](int sequence) {
    const int row = output.logit_row_offsets[static_cast<size_t>(sequence) + 1] - 1;
    if (!output.has_full_logits(row)) return;
    mf::SampleFromRow(output.logits_row(row), static_cast<size_t>(output.vocab_size), params, history,
                      generators[static_cast<size_t>(sequence)])
        .IgnoreError();  // timed for its cost; random weights give finite logits
  });
}

enum class Sampling { kGreedy, kDevice, kHost };

// One step: `tokens_each` new tokens for every sequence of `batch`, and one for every
// sequence of `decodes` when given (a mixed step).
double Run(mf::Model& model, const Batch& batch, int tokens_each, Sampling sampling = Sampling::kGreedy,
           int draw = 0, const Batch* decodes = nullptr, mf::ForwardOutput* kept = nullptr) {
  mf::ForwardBatch forward;
  forward.record_routing = absl::GetFlag(FLAGS_record_routing);
  for (size_t s = 0; decodes != nullptr && s < decodes->tokens.size(); ++s) {
    forward.sequences.push_back({absl::MakeConstSpan(decodes->tokens[s]).subspan(static_cast<size_t>(decodes->cached[s]), 1),
                                 decodes->cached[s], decodes->tables[s], /*all_logits=*/false, /*full_logits=*/false});
  }
  for (size_t s = 0; s < batch.tokens.size(); ++s) {
    mf::SequenceChunk& chunk = forward.sequences.emplace_back(mf::SequenceChunk{
        absl::MakeConstSpan(batch.tokens[s]).subspan(static_cast<size_t>(batch.cached[s]),
                                                     static_cast<size_t>(tokens_each)),
        batch.cached[s], batch.tables[s], /*all_logits=*/false,
        absl::GetFlag(FLAGS_full_logits) || sampling == Sampling::kHost});
    if (sampling == Sampling::kDevice) chunk.device_sample = mf::PackSampleRow(BenchSampling(), /*seed=*/s, static_cast<uint32_t>(draw), -1);
  }
  const auto start = Clock::now();
  auto output = model.Forward(forward);
  if (!output.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(output.status().message()).c_str());
    std::exit(1);
  }
  if (sampling == Sampling::kHost) SampleOnHost(*output);
  const double seconds = Seconds(start);
  if (kept != nullptr) *kept = *std::move(output);
  return seconds;
}

// Profilers attached with collection off record the timed steps only (after warm-ups).
void Profile(bool wanted, bool on) {
#ifdef MF_WITH_CUDA
  if (!wanted) return;
  if (on) {
    cudaProfilerStart();
  } else {
    cudaProfilerStop();
  }
#else
  (void)wanted;
  (void)on;
#endif
}

// Runs `batch` up to `context` cached tokens per sequence, `chunk` tokens a step.
void FillContext(mf::Model& model, Batch& batch, int context, int chunk) {
  for (int filled = 0; filled < context;) {
    const int tokens = std::min(context - filled, chunk);
    Run(model, batch, tokens);
    for (int& cached : batch.cached) cached += tokens;
    filled += tokens;
  }
}

// Median decode step over `steps` timed steps (after two warm-ups), each adding one token
// per sequence; the batch's contexts grow by steps + 2.
double TimeDecode(mf::Model& model, Batch& batch, int steps, Sampling sampling) {
  std::vector<double> times;
  for (int step = 0; step < steps + 2; ++step) {
    if (step == 2) Profile(absl::GetFlag(FLAGS_profile_decode), true);
    times.push_back(Run(model, batch, 1, sampling, step));
    for (int& cached : batch.cached) cached += 1;
  }
  Profile(absl::GetFlag(FLAGS_profile_decode), false);
  times.erase(times.begin(), times.begin() + 2);  // warm-up
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// (prompts, length) of each prefill measurement: --prefill-prompts x --prefill-length, then --prefill-shapes.
std::vector<std::pair<int, int>> PrefillShapes(int prompts, int prompt_length) {
  std::vector<std::pair<int, int>> shapes;
  if (prompts > 0) shapes.emplace_back(prompts, prompt_length);
  for (absl::string_view shape : absl::StrSplit(absl::GetFlag(FLAGS_prefill_shapes), ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> parts = absl::StrSplit(shape, 'x');
    int count = 0, length = 0;
    if (absl::SimpleAtoi(parts.first, &count) && absl::SimpleAtoi(parts.second, &length) && count > 0 && length > 0) {
      shapes.emplace_back(count, length);
    }
  }
  return shapes;
}

// What a decode step of `batch` must move (one more step, routing recorded), and the
// measured step time against that at the copy bandwidth.
void PrintDecodeFloor(mf::Model& model, Batch& batch, double step_seconds, double copy_bytes_per_second) {
  mf::ForwardOutput output;
  int64_t cached_rows = 0;
  for (int cached : batch.cached) cached_rows += cached;
  Run(model, batch, 1, Sampling::kGreedy, 0, nullptr, &output);
  for (int& cached : batch.cached) cached += 1;
  if (output.routing.empty()) return;  // --record-routing=false
  mf::Backend& backend = model.backend();
  const mf::bench::StoredSizes sizes{static_cast<int>(backend.StoredBytesPerWeight(mf::WeightUse::kMatrix)),
                                     static_cast<int>(backend.StoredBytesPerWeight(mf::WeightUse::kRouter)),
                                     static_cast<int>(mf::DTypeSize(backend.kv_cache_dtype()))};
  const mf::bench::DecodeStepBytes bytes = mf::bench::DecodeStepFloor(
      model.config(), output.routing, cached_rows, static_cast<int>(batch.cached.size()), sizes);
  std::string floor;
  if (copy_bytes_per_second > 0) {
    // The floor: those bytes at the copy's measured rate (bytes read + written per second).
    const double floor_seconds = bytes.total() / copy_bytes_per_second;
    floor = absl::StrFormat(": %.3f ms at %.0f GB/s, the step runs at %.1f%% of that floor", floor_seconds * 1e3,
                            copy_bytes_per_second / 1e9, 100 * floor_seconds / step_seconds);
  }
  std::printf("  must move %.3f GB (experts %.3f, KV cache %.3f, lm_head %.3f, other %.3f)%s\n", bytes.total() / 1e9,
              bytes.experts / 1e9, bytes.kv_cache / 1e9, bytes.lm_head / 1e9, bytes.other / 1e9, floor.c_str());
}

void Release(mf::Model& model, const Batch& batch) {
  for (const auto& table : batch.tables) model.kv_cache().allocator().Release(table);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("step_bench --random-weights CONFIG --device cuda");
  mf::ParseFlags(argc, argv);
  // --random-weights CONFIG (or --model DIR), --device, --precision as for the server.
  mf::ModelSource source = mf::ModelSourceFromFlags();
  const int context = absl::GetFlag(FLAGS_context), steps = absl::GetFlag(FLAGS_steps);
  std::vector<int> batches;
  for (absl::string_view piece : absl::StrSplit(absl::GetFlag(FLAGS_decode_batches), ',')) {
    int value;
    if (absl::SimpleAtoi(piece, &value)) batches.push_back(value);
  }
  const int largest = batches.empty() ? 0 : *std::max_element(batches.begin(), batches.end());
  const int prompts = absl::GetFlag(FLAGS_prefill_prompts), prompt_length = absl::GetFlag(FLAGS_prefill_length);
  source.cache.block_size = 16;
  const std::vector<std::pair<int, int>> prefill_shapes = PrefillShapes(prompts, prompt_length);
  int64_t prefill_blocks = 0;
  for (const auto& [count, length] : prefill_shapes) {
    prefill_blocks = std::max<int64_t>(prefill_blocks, static_cast<int64_t>(count) * ((length + 15) / 16));
  }
  prefill_blocks += static_cast<int64_t>(absl::GetFlag(FLAGS_mixed_decodes)) *
                    ((context + absl::GetFlag(FLAGS_prefill_runs) + 2 + 15) / 16);
  source.cache.num_blocks = static_cast<int>(
      std::max<int64_t>(largest * ((context + 2 * (steps + 2) + 15) / 16), prefill_blocks) + 16);
  const auto load_start = Clock::now();
  auto model = mf::LoadModel(source);
  if (!model.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  std::printf("model %s%s on %s: %.2f GB weights, %.2f GB KV cache, built in %.1f s\n", source.random_config.c_str(), source.model_dir.c_str(),
              source.device.c_str(), (*model)->weight_bytes() / 1e9, (*model)->kv_cache().memory_bytes() / 1e9,
              Seconds(load_start));
  // The device's measured limits, for ratios (zero on the CPU: no ratios printed).
  double gemm_flops_per_second = 0, copy_bytes_per_second = 0;
#ifdef MF_WITH_CUDA
  if (source.device.rfind("cuda", 0) == 0) {
    const mf::bench::Roofline roofline = mf::bench::MeasureRoofline();
    gemm_flops_per_second = roofline.gemm_flops_per_second;
    copy_bytes_per_second = roofline.copy_bytes_per_second;
  }
#endif

  const int mixed_decodes = absl::GetFlag(FLAGS_mixed_decodes);
  for (const auto& [count, length] : prefill_shapes) {  // prefill: all prompts in one ragged batch
    Batch batch = MakeBatch(**model, count, length, 0);
    Batch decodes;
    if (mixed_decodes > 0) {
      const int runs = std::max(1, absl::GetFlag(FLAGS_prefill_runs));
      decodes = MakeBatch(**model, mixed_decodes, context + runs + 1, 0);
      FillContext(**model, decodes, context, std::max(1, prompts * prompt_length / mixed_decodes));
    }
    std::vector<const Batch*> variants = {nullptr};  // the prompts alone, then beside the decodes
    if (mixed_decodes > 0) variants.push_back(&decodes);
    for (const Batch* beside : variants) {
      Run(**model, batch, length, Sampling::kGreedy, 0, beside);  // warm-up
      std::vector<double> times;
      Profile(absl::GetFlag(FLAGS_profile_prefill), true);
      for (int run = 0; run < std::max(1, absl::GetFlag(FLAGS_prefill_runs)); ++run) {
        times.push_back(Run(**model, batch, length, Sampling::kGreedy, 0, beside));
        if (beside != nullptr) {
          for (int& cached : decodes.cached) cached += 1;
        }
      }
      Profile(absl::GetFlag(FLAGS_profile_prefill), false);
      std::sort(times.begin(), times.end());
      const double median = times[times.size() / 2];
      const double tokens_per_second = count * length / median;
      std::string ratio;
      if (gemm_flops_per_second > 0) {
        const double flops = tokens_per_second * mf::bench::PrefillFlopsPerToken((*model)->config(), (length + 1) / 2.0);
        ratio = absl::StrFormat(", %.0f TFLOP/s = %.1f%% of the bf16 GEMM rate", flops / 1e12,
                                100 * flops / gemm_flops_per_second);
      }
      std::printf("prefill %d x %d tokens%s: median %.2f ms (min %.2f, max %.2f), %.0f prompt tokens/s%s\n", count,
                  length,
                  beside != nullptr ? absl::StrCat(" beside ", mixed_decodes, " decodes at context ", context).c_str()
                                    : "",
                  median * 1e3, times.front() * 1e3, times.back() * 1e3, tokens_per_second, ratio.c_str());
    }
    Release(**model, batch);
    if (mixed_decodes > 0) Release(**model, decodes);
  }
  for (int batch_size : batches) {  // decode: one token per sequence per step on top of `context`
    // The timed steps, then one more whose routing says which experts a step reads.
    const int timed_tokens = (steps + 2) * (absl::GetFlag(FLAGS_sample) ? 2 : 1) + 1;
    Batch batch = MakeBatch(**model, batch_size, context + timed_tokens, 0);
    // Fill the context in chunks the size of the prefill measurement.
    FillContext(**model, batch, context, std::max(1, prompts * prompt_length / batch_size));
    const double greedy = TimeDecode(**model, batch, steps, Sampling::kGreedy);
    std::printf("decode batch %d, context %d: step median %.3f ms, %.0f tokens/s\n", batch_size, context,
                greedy * 1e3, batch_size / greedy);
    if (const int64_t kernels = (*model)->backend().last_recorded_kernels(); kernels > 0) {
      std::printf("  %lld kernels a step (recorded graph), %.1f a layer\n", static_cast<long long>(kernels),
                  static_cast<double>(kernels) / (*model)->config().n_layer);
    }
    PrintDecodeFloor(**model, batch, greedy, copy_bytes_per_second);
    if (absl::GetFlag(FLAGS_sample)) {
      const bool on_device = (*model)->SamplesOnDevice() && !absl::GetFlag(FLAGS_host_sampling);
      const double sampled = TimeDecode(**model, batch, steps, on_device ? Sampling::kDevice : Sampling::kHost);
      std::printf("decode batch %d, context %d, sampled on the %s (temperature 0.8, top-p 0.95): step median %.3f ms, "
                  "%.0f tokens/s, %.1f%% of greedy\n",
                  batch_size, context, on_device ? "device" : "host", sampled * 1e3, batch_size / sampled,
                  100 * greedy / sampled);
    }
    Release(**model, batch);
  }
  return 0;
}
