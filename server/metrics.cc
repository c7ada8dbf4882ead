#include "server/metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace mf::server {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// Sub-millisecond inter-token gaps up to multi-minute requests.
const prometheus::Histogram::BucketBoundaries kLatencyBuckets = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
const prometheus::Histogram::BucketBoundaries kTokenBuckets = {1,   2,    4,    8,    16,   32,    64,   128,
                                                               256, 512, 1024, 2048, 4096, 8192, 16384};

MetricFamily Family(const std::string& name, const std::string& help, MetricType type) {
  MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  return family;
}

void AddSample(MetricFamily& family, double value, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric metric;
  metric.label = std::move(labels);
  if (family.type == MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
}

const char* kMixtureNames[2] = {"attention", "mlp"};

}  // namespace

// Reads the engine at scrape time: gauges, engine counters and expert load.
class ServerMetrics::EngineCollector : public prometheus::Collectable {
 public:
  void Attach(Engine* engine) {
    absl::MutexLock lock(&mutex_);
    engine_ = engine;
  }

  std::vector<MetricFamily> Collect() const override {
    absl::MutexLock lock(&mutex_);
    if (engine_ == nullptr) return {};
    const EngineStats stats = engine_->stats();
    std::vector<MetricFamily> families;
    auto gauge = [&](const char* name, const char* help, double value) {
      families.push_back(Family(name, help, MetricType::Gauge));
      AddSample(families.back(), value);
    };
    auto counter = [&](const char* name, const char* help, double value) {
      families.push_back(Family(name, help, MetricType::Counter));
      AddSample(families.back(), value);
    };
    gauge("moduleformer_requests_running", "Requests in the running batch.", stats.running);
    gauge("moduleformer_requests_waiting", "Requests waiting to be scheduled.", stats.waiting);
    gauge("moduleformer_requests_preempted", "Waiting requests that were preempted and await recomputation.",
          stats.preempted_waiting);
    gauge("moduleformer_requests_paused", "Running streams paused because their client stopped reading.",
          stats.paused);
    gauge("moduleformer_kv_cache_blocks_used", "KV cache blocks in use.", stats.kv_blocks_used);
    gauge("moduleformer_kv_cache_blocks", "KV cache blocks in all.", stats.kv_blocks_total);
    gauge("moduleformer_kv_cache_usage_ratio", "Fraction of KV cache blocks in use.",
          stats.kv_blocks_total > 0 ? static_cast<double>(stats.kv_blocks_used) / stats.kv_blocks_total : 0);
    counter("moduleformer_prefix_cache_hit_tokens_total", "Prompt tokens served from the prefix cache.",
            static_cast<double>(stats.prefix_cache_hit_tokens));
    counter("moduleformer_preemptions_total", "Requests preempted when KV blocks ran out.",
            static_cast<double>(stats.preemptions));
    counter("moduleformer_engine_steps_total", "Engine steps run.", static_cast<double>(stats.steps));
    counter("moduleformer_engine_busy_seconds_total", "Time spent in engine steps.", stats.step_seconds);
    counter("moduleformer_forward_seconds_total", "Time engine steps spent in the forward pass.", stats.forward_seconds);
    counter("moduleformer_sampling_seconds_total", "Time engine steps spent choosing tokens from the logits.",
            stats.sampling_seconds);
    counter("moduleformer_update_delivery_seconds_total",
            "Time the engine's delivery thread spent handing updates to their calls (serializing each and queueing "
            "its write) and counting expert selections; runs beside the engine steps, not within the busy time.",
            stats.delivery_seconds);
    counter("moduleformer_metrics_recording_seconds_total",
            "Time engine steps spent recording step metrics (expert counts: the delivery thread's).",
            stats.metrics_seconds);
    families.push_back(Family("moduleformer_device_memory_bytes", "Backend memory held, by use.", MetricType::Gauge));
    AddSample(families.back(), static_cast<double>(engine_->model().weight_bytes()), {{"kind", "weights"}});
    AddSample(families.back(), static_cast<double>(engine_->model().kv_cache().memory_bytes()), {{"kind", "kv_cache"}});
    CollectExperts(families);
    return families;
  }

 private:
  void CollectExperts(std::vector<MetricFamily>& families) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    ExpertStats& stats = engine_->expert_stats();
    const ExpertCounts totals = stats.Totals();
    MetricFamily tokens = Family("moduleformer_expert_tokens_total",
                                 "Token slots routed to each expert, by layer and mixture.", MetricType::Counter);
    for (size_t layer = 0; layer < totals.size(); ++layer) {
      for (int mixture = 0; mixture < 2; ++mixture) {
        for (size_t expert = 0; expert < totals[layer][mixture].size(); ++expert) {
          AddSample(tokens, static_cast<double>(totals[layer][mixture][expert]),
                    {{"layer", std::to_string(layer)}, {"mixture", kMixtureNames[mixture]},
                     {"expert", std::to_string(expert)}});
        }
      }
    }
    families.push_back(std::move(tokens));
    MetricFamily imbalance = Family("moduleformer_expert_load_imbalance",
                                    "Max over mean expert load in the last minute (1 = balanced).", MetricType::Gauge);
    const auto ratios = stats.Imbalance();
    for (size_t layer = 0; layer < ratios.size(); ++layer) {
      for (int mixture = 0; mixture < 2; ++mixture) {
        AddSample(imbalance, ratios[layer][mixture], {{"layer", std::to_string(layer)}, {"mixture", kMixtureNames[mixture]}});
      }
    }
    families.push_back(std::move(imbalance));
  }

  mutable absl::Mutex mutex_;
  Engine* engine_ ABSL_GUARDED_BY(mutex_) = nullptr;
};

ServerMetrics::ServerMetrics(std::string model_name, std::string backend)
    : model_name_(std::move(model_name)),
      backend_(std::move(backend)),
      registry_(std::make_shared<prometheus::Registry>()),
      engine_collector_(std::make_shared<EngineCollector>()) {
  using prometheus::BuildCounter;
  using prometheus::BuildGauge;
  using prometheus::BuildHistogram;
  requests_ = &BuildCounter().Name("moduleformer_requests_total").Help("RPCs by method and final gRPC status.")
                   .Register(*registry_);
  prompt_tokens_ = &BuildCounter().Name("moduleformer_prompt_tokens_total").Help("Prompt tokens of finished requests.")
                        .Register(*registry_).Add({});
  generated_tokens_ = &BuildCounter().Name("moduleformer_generated_tokens_total")
                           .Help("Tokens generated for finished requests.").Register(*registry_).Add({});
  auto histogram = [this](const char* name, const char* help, const prometheus::Histogram::BucketBoundaries& buckets) {
    return &BuildHistogram().Name(name).Help(help).Register(*registry_).Add({}, buckets);
  };
  queue_seconds_ = histogram("moduleformer_request_queue_seconds", "Arrival to first scheduling.", kLatencyBuckets);
  ttft_seconds_ = histogram("moduleformer_time_to_first_token_seconds", "Arrival to first generated token.",
                            kLatencyBuckets);
  inter_token_seconds_ = histogram("moduleformer_inter_token_latency_seconds",
                                   "Time between consecutive tokens of a request.", kLatencyBuckets);
  e2e_seconds_ = histogram("moduleformer_request_duration_seconds", "Arrival to the final token.", kLatencyBuckets);
  prompt_length_ = histogram("moduleformer_request_prompt_tokens", "Prompt length of finished requests.", kTokenBuckets);
  generated_length_ = histogram("moduleformer_request_generated_tokens", "Generated length of finished requests.",
                                kTokenBuckets);
  step_seconds_ = histogram("moduleformer_engine_step_seconds", "Duration of one engine step (forward pass).",
                            kLatencyBuckets);
  stream_buffered_bytes_ = &BuildGauge().Name("moduleformer_stream_buffered_bytes")
                                .Help("Stream messages generated but not yet sent to their clients, in bytes.")
                                .Register(*registry_).Add({});
  step_tokens_ = histogram("moduleformer_engine_step_tokens", "Tokens in one engine step.", kTokenBuckets);
  BuildGauge().Name("moduleformer_build_info").Help("Build and model information.").Register(*registry_)
      .Add({{"version", MF_VERSION}, {"backend", backend_}, {"model", model_name_}}).Set(1);
}

ServerMetrics::~ServerMetrics() = default;

void ServerMetrics::AttachEngine(Engine* engine) {
  engine_collector_->Attach(engine);
  const ModelConfig& config = engine->model_config();
  int attention_experts = 0, mlp_experts = 0;
  for (int layer = 0; layer < config.n_layer; ++layer) {
    attention_experts += engine->model().num_experts(layer, Mixture::kAttention);
    mlp_experts += engine->model().num_experts(layer, Mixture::kMlp);
  }
  prometheus::BuildGauge().Name("moduleformer_model_info").Help("The served model's shape.").Register(*registry_)
      .Add({{"model", model_name_},
            {"layers", std::to_string(config.n_layer)},
            {"attention_experts", std::to_string(attention_experts)},
            {"mlp_experts", std::to_string(mlp_experts)},
            {"k_att", std::to_string(config.k_att)},
            {"k_mlp", std::to_string(config.k_mlp)}})
      .Set(1);
}

void ServerMetrics::DetachEngine() { engine_collector_->Attach(nullptr); }

absl::Status ServerMetrics::StartHttp(const std::string& host, int port) {
  http_ = std::make_unique<MetricsHttpServer>(
      std::vector<std::weak_ptr<prometheus::Collectable>>{registry_, engine_collector_});
  return http_->Start(host, port);
}

int ServerMetrics::port() const { return http_ == nullptr ? 0 : http_->port(); }

void ServerMetrics::CountRequest(const char* rpc, grpc::StatusCode code) {
  requests_->Add({{"rpc", rpc}, {"code", StatusCodeName(code)}}).Increment();
}

void ServerMetrics::OnStep(double step_seconds, int num_tokens, int) {
  step_seconds_->Observe(step_seconds);
  step_tokens_->Observe(num_tokens);
}

void ServerMetrics::OnInterTokenLatency(double seconds) { inter_token_seconds_->Observe(seconds); }

void ServerMetrics::OnRequestFinished(const GenerationUpdate& final_update) {
  prompt_tokens_->Increment(final_update.prompt_tokens);
  generated_tokens_->Increment(final_update.completion_tokens);
  queue_seconds_->Observe(final_update.queue_seconds);
  if (final_update.completion_tokens > 0) ttft_seconds_->Observe(final_update.time_to_first_token_seconds);
  e2e_seconds_->Observe(final_update.total_seconds);
  prompt_length_->Observe(final_update.prompt_tokens);
  generated_length_->Observe(final_update.completion_tokens);
}

const char* StatusCodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {"OK",        "CANCELLED",         "UNKNOWN",          "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED", "NOT_FOUND",  "ALREADY_EXISTS",   "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
                                       "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int index = static_cast<int>(code);
  return index >= 0 && index < 17 ? kNames[index] : "UNKNOWN";
}

}  // namespace mf::server
