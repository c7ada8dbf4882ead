// Prometheus metrics (served on --metrics-port by server/metrics_http.h). Histograms
// and request counters are observed as events happen; engine gauges and expert
// counters are read from the engine when scraped, so steps pay nothing for them.
#pragma once

#include <grpcpp/support/status.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "engine/engine.h"
#include "engine/observer.h"
#include "server/metrics_http.h"

namespace mf::server {

class ServerMetrics : public EngineObserver {
 public:
  ServerMetrics(std::string model_name, std::string backend);
  ~ServerMetrics() override;

  // Engine-derived series are collected from `engine` at scrape time.
  void AttachEngine(Engine* engine);
  void DetachEngine();  // before the engine goes away; scrapes then see no engine series
  // Serves /metrics and /health on `host`:`port` (port 0 picks a free one).
  absl::Status StartHttp(const std::string& host, int port);
  int port() const;

  void CountRequest(const char* rpc, grpc::StatusCode code);
  // Stream messages queued for clients (bytes added, or removed when negative).
  void AddStreamBufferedBytes(double bytes) { stream_buffered_bytes_->Increment(bytes); }

  void OnStep(double step_seconds, int num_tokens, int num_sequences) override;
  void OnInterTokenLatency(double seconds) override;
  void OnRequestFinished(const GenerationUpdate& final_update) override;

  prometheus::Registry& registry() { return *registry_; }

 private:
  class EngineCollector;

  std::string model_name_, backend_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<EngineCollector> engine_collector_;
  std::unique_ptr<MetricsHttpServer> http_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* generated_tokens_;
  prometheus::Histogram* queue_seconds_;
  prometheus::Histogram* ttft_seconds_;
  prometheus::Histogram* inter_token_seconds_;
  prometheus::Histogram* e2e_seconds_;
  prometheus::Histogram* prompt_length_;
  prometheus::Histogram* generated_length_;
  prometheus::Histogram* step_seconds_;
  prometheus::Histogram* step_tokens_;
  prometheus::Gauge* stream_buffered_bytes_;
};

const char* StatusCodeName(grpc::StatusCode code);

}  // namespace mf::server
