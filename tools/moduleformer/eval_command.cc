// `moduleformer eval`: the perplexity of a model on a text file, in-process (--model) or
// through a running server (--server), from the engine's prompt log-probabilities.
// Long texts are scored in sliding windows of --context tokens advancing by --stride:
// each token is scored once, by the window that first covers it with the most context
// before it (Hugging Face's perplexity recipe); with --context = --stride + 1 the windows
// are consecutive, as the training code's evaluation scores them.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <functional>
#include <thread>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/synchronization/notification.h"
#include "engine/base/file.h"
#include "engine/engine.h"
#include "engine/model_loader.h"
#include "moduleformer/v1/moduleformer.grpc.pb.h"
#include "server/model_flags.h"
#include "tools/moduleformer/commands.h"

ABSL_DECLARE_FLAG(std::string, server);
ABSL_DECLARE_FLAG(std::string, tokenizer);
ABSL_DECLARE_FLAG(double, timeout_seconds);
ABSL_FLAG(std::string, text_file, "", "UTF-8 text to score");
ABSL_FLAG(int32_t, context, 1024, "Tokens per window (at most the model's context)");
ABSL_FLAG(int32_t, stride, 0, "Tokens each window advances (default: --context / 2)");
ABSL_FLAG(std::string, stats_tag, "", "Tag the scoring requests' expert statistics (see expert-stats --tag)");
ABSL_FLAG(int32_t, parallel, 8, "Windows scored at once");

namespace mf::cli {
namespace {

namespace pb = moduleformer::v1;

// Log-probabilities of tokens 1.. of a window, given the tokens before each.
using WindowScorer = std::function<absl::StatusOr<std::vector<float>>(const std::vector<int32_t>& window)>;

struct Window {
  size_t begin = 0, end = 0;  // tokens [begin, end) run through the model
  size_t first_scored = 0;    // tokens [first_scored, end) count towards the perplexity
};

std::vector<Window> SlidingWindows(size_t num_tokens, size_t context, size_t stride) {
  std::vector<Window> windows;
  size_t previous_end = 0;
  for (size_t begin = 0; begin < num_tokens; begin += stride) {
    const size_t end = std::min(begin + context, num_tokens);
    windows.push_back({begin, end, std::max(begin + 1, previous_end)});
    previous_end = end;
    if (end == num_tokens) break;
  }
  return windows;
}

// Scores every window with `parallel` calls in flight; returns the summed negative
// log-likelihood and the number of tokens it covers.
absl::StatusOr<std::pair<double, int64_t>> ScoreWindows(const std::vector<int32_t>& tokens,
                                                        const std::vector<Window>& windows, const WindowScorer& score) {
  std::vector<double> window_nll(windows.size(), 0.0);
  std::vector<absl::Status> failures(windows.size());
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next++; i < windows.size(); i = next++) {
      const Window& window = windows[i];
      const std::vector<int32_t> ids(tokens.begin() + static_cast<ptrdiff_t>(window.begin),
                                     tokens.begin() + static_cast<ptrdiff_t>(window.end));
      absl::StatusOr<std::vector<float>> logprobs = score(ids);
      if (!logprobs.ok() || logprobs->size() != ids.size() - 1) {
        failures[i] = logprobs.ok() ? absl::InternalError("the server returned too few prompt logprobs")
                                    : logprobs.status();
        continue;
      }
      for (size_t position = window.first_scored; position < window.end; ++position) {
        window_nll[i] -= (*logprobs)[position - window.begin - 1];  // entry j scores window token j + 1
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < std::max(1, absl::GetFlag(FLAGS_parallel)); ++t) threads.emplace_back(worker);
  for (std::thread& thread : threads) thread.join();
  double nll = 0;
  int64_t count = 0;
  for (size_t i = 0; i < windows.size(); ++i) {
    if (!failures[i].ok()) return failures[i];
    nll += window_nll[i];
    count += static_cast<int64_t>(windows[i].end - windows[i].first_scored);
  }
  return std::make_pair(nll, count);
}

GenerationRequest ScoringRequest(const std::vector<int32_t>& window) {
  GenerationRequest request;
  request.prompt = window;
  request.max_new_tokens = 1;
  request.prompt_logprobs = 0;
  request.stats_tag = absl::GetFlag(FLAGS_stats_tag);
  return request;
}

std::vector<float> Logprobs(const std::vector<SampleResult>& scored) {
  std::vector<float> logprobs;
  for (const SampleResult& entry : scored) logprobs.push_back(entry.logprob);
  return logprobs;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
  return 1;
}

int Report(const absl::StatusOr<std::pair<double, int64_t>>& result, size_t num_windows) {
  if (!result.ok()) return Fail(result.status());
  const auto [nll, count] = *result;
  if (count == 0) return Fail(absl::InvalidArgumentError("--text-file: fewer than two tokens to score"));
  const double mean = nll / static_cast<double>(count);
  std::printf("windows %zu (context %d, stride %d)\n", num_windows, absl::GetFlag(FLAGS_context),
              absl::GetFlag(FLAGS_stride));
  std::printf("tokens %lld, mean negative log-likelihood %.6f nats\n", static_cast<long long>(count), mean);
  std::printf("perplexity %.6f over %lld tokens\n", std::exp(mean), static_cast<long long>(count));
  return 0;
}

absl::Status CheckWindowFlags(int max_context) {
  if (absl::GetFlag(FLAGS_stride) == 0) absl::SetFlag(&FLAGS_stride, absl::GetFlag(FLAGS_context) / 2);
  const int context = absl::GetFlag(FLAGS_context), stride = absl::GetFlag(FLAGS_stride);
  if (context < 2) return absl::InvalidArgumentError("--context: at least 2");
  if (stride < 1 || stride >= context) return absl::InvalidArgumentError("--stride: in [1, --context)");
  if (max_context > 0 && context > max_context) {
    return absl::InvalidArgumentError(absl::StrCat("--context: the model's context is ", max_context, " tokens"));
  }
  return absl::OkStatus();
}

int EvaluateLocally(const std::string& text) {
  auto tokenizer = LoadTokenizerIfPresent(absl::GetFlag(FLAGS_tokenizer), ModelSourceFromFlags().model_dir);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  if (*tokenizer == nullptr) return Fail(absl::InvalidArgumentError("the model has no tokenizer (give --tokenizer DIR)"));
  auto model = LoadModelFromFlags();
  if (!model.ok()) return Fail(model.status());
  Engine engine(*std::move(model), *tokenizer, EngineConfig{});
  if (absl::Status flags = CheckWindowFlags(engine.max_sequence_tokens() - 1); !flags.ok()) return Fail(flags);
  const std::vector<int32_t> tokens = (*tokenizer)->Encode(text);
  const auto windows = SlidingWindows(tokens.size(), static_cast<size_t>(absl::GetFlag(FLAGS_context)),
                                      static_cast<size_t>(absl::GetFlag(FLAGS_stride)));
  auto score = [&engine](const std::vector<int32_t>& window) -> absl::StatusOr<std::vector<float>> {
    absl::Notification done;
    GenerationUpdate final_update;
    std::vector<SampleResult> scored;
    absl::StatusOr<uint64_t> id = engine.Submit(ScoringRequest(window), [&](GenerationUpdate&& update) {
      for (SampleResult& entry : update.prompt_logprobs) scored.push_back(std::move(entry));
      if (!update.finished) return;
      final_update = std::move(update);
      done.Notify();
    });
    if (!id.ok()) return id.status();
    done.WaitForNotification();
    if (!final_update.status.ok()) return final_update.status;
    return Logprobs(scored);
  };
  return Report(ScoreWindows(tokens, windows, score), windows.size());
}

int EvaluateOnServer(const std::string& text) {
  auto channel = grpc::CreateChannel(absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials());
  auto stub = pb::ModuleFormer::NewStub(channel);
  grpc::ClientContext info_context;
  AddApiKey(info_context);
  pb::TokenizeRequest tokenize;
  tokenize.set_text(text);
  pb::TokenizeResponse tokenized;
  if (grpc::Status status = stub->Tokenize(&info_context, tokenize, &tokenized); !status.ok()) {
    return Fail(absl::UnavailableError(absl::StrCat("Tokenize: ", status.error_message())));
  }
  if (absl::Status flags = CheckWindowFlags(0); !flags.ok()) return Fail(flags);
  const std::vector<int32_t> tokens(tokenized.token_ids().begin(), tokenized.token_ids().end());
  const auto windows = SlidingWindows(tokens.size(), static_cast<size_t>(absl::GetFlag(FLAGS_context)),
                                      static_cast<size_t>(absl::GetFlag(FLAGS_stride)));
  auto score = [&stub](const std::vector<int32_t>& window) -> absl::StatusOr<std::vector<float>> {
    pb::GenerateRequest request;
    request.mutable_token_ids()->mutable_ids()->Add(window.begin(), window.end());
    request.set_max_new_tokens(1);
    request.set_prompt_logprobs(0);
    request.set_stats_tag(absl::GetFlag(FLAGS_stats_tag));
    grpc::ClientContext context;
    AddApiKey(context);
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_timeout_seconds) * 1000)));
    pb::GenerateResponse response;
    if (grpc::Status status = stub->Generate(&context, request, &response); !status.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
    }
    std::vector<float> logprobs;
    for (const pb::TokenLogprob& entry : response.prompt_logprobs()) logprobs.push_back(entry.logprob());
    return logprobs;
  };
  return Report(ScoreWindows(tokens, windows, score), windows.size());
}

}  // namespace

int RunEval() {
  auto text = ReadFileToString(absl::GetFlag(FLAGS_text_file));
  if (!text.ok()) return Fail(absl::NotFoundError(absl::StrCat("--text-file: ", text.status().message())));
  return absl::GetFlag(FLAGS_server).empty() ? EvaluateLocally(*text) : EvaluateOnServer(*text);
}

}  // namespace mf::cli
