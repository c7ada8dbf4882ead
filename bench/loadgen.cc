// Load generator for moduleformer-server: closed loop (N clients, each sending its
// next request when the last finishes) or open loop (Poisson arrivals at a rate).
// Reports request and token throughput, TTFT, inter-token and end-to-end latency.
#include <cstdlib>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "moduleformer/v1/moduleformer.grpc.pb.h"
#include "server/command_line.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "HOST:PORT of the server");
ABSL_FLAG(std::string, mode, "closed", "closed (fixed concurrency) or open (Poisson arrivals)");
ABSL_FLAG(int32_t, concurrency, 8, "closed loop: clients in flight");
ABSL_FLAG(double, rate, 10, "open loop: requests per second");
ABSL_FLAG(int32_t, requests, 200, "total requests to send");
ABSL_FLAG(int32_t, prompt_tokens, 128, "prompt length (random token ids)");
ABSL_FLAG(int32_t, max_new_tokens, 64, "tokens generated per request");
ABSL_FLAG(uint64_t, seed, 1, "seed for prompts and arrival times");
ABSL_FLAG(double, temperature, 0, "sampling temperature (0: greedy)");
ABSL_FLAG(int32_t, top_k, 0, "top-k (0: off)");
ABSL_FLAG(double, top_p, 1, "top-p");
ABSL_FLAG(std::string, api_key, "", "API key for a server run with --api-key-file (default: $MF_API_KEY)");

namespace {

namespace pb = moduleformer::v1;
using Clock = std::chrono::steady_clock;

// "authorization: Bearer KEY" from --api-key or $MF_API_KEY, when either is set.
void AddApiKey(grpc::ClientContext& context) {
  std::string key = absl::GetFlag(FLAGS_api_key);
  if (const char* from_env = std::getenv("MF_API_KEY"); key.empty() && from_env != nullptr) key = from_env;
  if (!key.empty()) context.AddMetadata("authorization", "Bearer " + key);
}

struct RequestResult {
  bool ok = false;
  double ttft = 0, e2e = 0;
  std::vector<double> inter_token;  // seconds between consecutive tokens
  int tokens = 0;
};

class LoadGenerator {
 public:
  explicit LoadGenerator(std::shared_ptr<grpc::Channel> channel) : stub_(pb::ModuleFormer::NewStub(channel)) {
    grpc::ClientContext context;
    AddApiKey(context);
    pb::ModelInfoResponse info;
    if (grpc::Status status = stub_->ModelInfo(&context, pb::ModelInfoRequest(), &info); !status.ok()) {
      std::fprintf(stderr, "error: %s\n", status.error_message().c_str());
      std::exit(1);
    }
    vocab_size_ = info.vocab_size();
  }

  RequestResult RunOne(uint64_t seed) {
    pb::GenerateRequest request;
    std::mt19937_64 rng(seed);
    for (int i = 0; i < absl::GetFlag(FLAGS_prompt_tokens); ++i) {
      request.mutable_token_ids()->add_ids(static_cast<uint32_t>(rng() % vocab_size_));
    }
    request.set_max_new_tokens(static_cast<uint32_t>(absl::GetFlag(FLAGS_max_new_tokens)));
    request.set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
    request.set_top_k(static_cast<uint32_t>(absl::GetFlag(FLAGS_top_k)));
    request.set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
    request.set_seed(seed);
    request.set_ignore_eos(true);
    grpc::ClientContext context;
    AddApiKey(context);
    RequestResult result;
    const auto start = Clock::now();
    auto last = start;
    auto reader = stub_->Stream(&context, request);
    pb::StreamResponse message;
    while (reader->Read(&message)) {
      const auto now = Clock::now();
      const int count = message.token_ids_size();
      if (count == 0) continue;
      if (result.tokens == 0) {
        result.ttft = std::chrono::duration<double>(now - start).count();
      } else {
        // Tokens that arrive together share the gap since the previous message.
        const double gap = std::chrono::duration<double>(now - last).count() / count;
        for (int i = 0; i < count; ++i) result.inter_token.push_back(gap);
      }
      result.tokens += count;
      last = now;
    }
    result.ok = reader->Finish().ok();
    result.e2e = std::chrono::duration<double>(Clock::now() - start).count();
    return result;
  }

 private:
  std::unique_ptr<pb::ModuleFormer::Stub> stub_;
  uint32_t vocab_size_ = 1;
};

double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[static_cast<size_t>(q * static_cast<double>(values.size() - 1) + 0.5)];
}

void Report(const std::vector<RequestResult>& results, double wall_seconds) {
  std::vector<double> ttft, itl, e2e;
  int64_t tokens = 0;
  int failed = 0;
  for (const RequestResult& result : results) {
    if (!result.ok) {
      ++failed;
      continue;
    }
    ttft.push_back(result.ttft);
    e2e.push_back(result.e2e);
    itl.insert(itl.end(), result.inter_token.begin(), result.inter_token.end());
    tokens += result.tokens;
  }
  std::printf("requests: %zu ok, %d failed in %.2f s\n", results.size() - failed, failed, wall_seconds);
  std::printf("throughput: %.2f requests/s, %.1f generated tokens/s\n",
              static_cast<double>(results.size() - failed) / wall_seconds, static_cast<double>(tokens) / wall_seconds);
  auto line = [](const char* name, const std::vector<double>& values) {
    std::printf("%-18s p50 %8.2f ms   p90 %8.2f ms   p99 %8.2f ms\n", name, 1e3 * Percentile(values, 0.5),
                1e3 * Percentile(values, 0.9), 1e3 * Percentile(values, 0.99));
  };
  line("time to first token", ttft);
  line("inter-token", itl);
  line("end-to-end", e2e);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("loadgen --server HOST:PORT [--mode closed --concurrency N | --mode open --rate R]");
  mf::ParseFlags(argc, argv);
  LoadGenerator generator(grpc::CreateChannel(absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials()));
  const int total = absl::GetFlag(FLAGS_requests);
  std::vector<RequestResult> results(static_cast<size_t>(total));
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  const auto start = Clock::now();
  if (absl::GetFlag(FLAGS_mode) == "closed") {
    for (int client = 0; client < absl::GetFlag(FLAGS_concurrency); ++client) {
      threads.emplace_back([&] {
        for (int index = next++; index < total; index = next++) {
          results[static_cast<size_t>(index)] = generator.RunOne(absl::GetFlag(FLAGS_seed) * 1000003 + index);
        }
      });
    }
  } else if (absl::GetFlag(FLAGS_mode) == "open") {
    std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
    std::exponential_distribution<double> gap(absl::GetFlag(FLAGS_rate));
    auto due = start;
    for (int index = 0; index < total; ++index) {
      due += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
      std::this_thread::sleep_until(due);
      threads.emplace_back([&, index] {
        results[static_cast<size_t>(index)] = generator.RunOne(absl::GetFlag(FLAGS_seed) * 1000003 + index);
      });
    }
  } else {
    std::fprintf(stderr, "error: --mode must be closed or open\n");
    return 2;
  }
  for (std::thread& thread : threads) thread.join();
  const bool closed = absl::GetFlag(FLAGS_mode) == "closed";
  std::printf("%s loop (%s %g), %d requests, prompt %d tokens, %d new tokens each\n", closed ? "closed" : "open",
              closed ? "concurrency" : "rate/s",
              closed ? static_cast<double>(absl::GetFlag(FLAGS_concurrency)) : absl::GetFlag(FLAGS_rate), total,
              absl::GetFlag(FLAGS_prompt_tokens), absl::GetFlag(FLAGS_max_new_tokens));
  Report(results, std::chrono::duration<double>(Clock::now() - start).count());
  return 0;
}
