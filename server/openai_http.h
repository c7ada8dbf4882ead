// The OpenAI-compatible HTTP API (--http-port), in the server's process and on its
// engine: POST /v1/completions (whole or streamed as server-sent events), GET /v1/models,
// GET /health (503 while draining). A request is translated into the gRPC API's
// GenerateRequest and validated by the same code, so limits and errors match gRPC; errors
// follow OpenAI's schema, naming the request field.
#pragma once

#include <httplib.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "engine/engine.h"
#include "server/auth.h"
#include "server/http_endpoint.h"
#include "server/metrics.h"

namespace mf::server {

struct OpenAiHttpOptions {
  std::string served_model_name;     // what `model` in a request may name
  const ApiKeys* api_keys = nullptr;  // null: no authentication
  ServerMetrics* metrics = nullptr;   // may be null
  int threads = 64;                  // connections served at once (a streamed call holds one)
};

class OpenAiHttpServer {
 public:
  OpenAiHttpServer(Engine& engine, OpenAiHttpOptions options);

  absl::Status Start(const std::string& host, int port);  // port 0: a free one
  int port() const { return endpoint_.port(); }
  // Closes the listener; calls in progress finish (the engine drains them).
  void Stop() { endpoint_.Stop(); }

 private:
  void Completions(const httplib::Request& request, httplib::Response& response);
  void Models(httplib::Response& response) const;
  bool Authorized(const httplib::Request& request, httplib::Response& response) const;

  Engine& engine_;
  OpenAiHttpOptions options_;
  HttpEndpoint endpoint_;  // last: stopped first, while the members its handlers use live
};

}  // namespace mf::server
