// The OpenAI-compatible HTTP API (--http-port), in the server's process and on its
// engine: POST /v1/completions and /v1/chat/completions (whole, or streamed as server-sent
// events), GET /v1/models, GET /health (503 while draining). Requests are validated by
// the gRPC API's code (server/openai_protocol.h), so limits and errors match gRPC; the
// same API keys, metrics (rpc="http.completions" / "http.chat.completions"), request log
// and TLS flags apply. A client that goes away cancels its request.
#pragma once

#include <httplib.h>

#include <memory>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "engine/text/chat_template.h"
#include "server/auth.h"
#include "server/http_endpoint.h"
#include "server/metrics.h"
#include "server/openai_call.h"
#include "server/openai_protocol.h"
#include "server/request_log.h"

namespace mf::server {

struct OpenAiHttpOptions {
  std::string served_model_name;            // what `model` in a request may name
  const ApiKeys* api_keys = nullptr;         // null: no authentication
  ServerMetrics* metrics = nullptr;          // may be null
  RequestLog* request_log = nullptr;         // may be null
  const ChatTemplate* chat_template = nullptr;  // null: no chat completions
  const HttpTls* tls = nullptr;              // null: plain HTTP
  int threads = 64;                          // connections served at once (a streamed call holds one)
};

class OpenAiHttpServer {
 public:
  OpenAiHttpServer(Engine& engine, OpenAiHttpOptions options);

  absl::Status Start(const std::string& host, int port);  // port 0: a free one
  int port() const { return endpoint_.port(); }
  // Draining, as the gRPC server drains: new calls get 503 (a proxy retries them
  // elsewhere), calls in progress run until `deadline` and are cancelled then; returns
  // with the listener closed once all have ended. (cpp-httplib's stop() would cut off the
  // event streams in progress, so the listener closes last.)
  void Drain(absl::Time deadline);

 private:
  void Generate(OpenAiApi api, const httplib::Request& request, httplib::Response& response);
  void Models(httplib::Response& response) const;
  // A call runs between Admit (false once draining) and Release.
  bool Admit(const std::shared_ptr<OpenAiCallState>& call);
  void Release(const std::shared_ptr<OpenAiCallState>& call);
  bool Authorized(const httplib::Request& request, httplib::Response& response) const;

  Engine& engine_;
  OpenAiHttpOptions options_;
  OpenAiContext context_;
  absl::Mutex calls_mutex_;
  bool refusing_ ABSL_GUARDED_BY(calls_mutex_) = false;
  std::set<std::shared_ptr<OpenAiCallState>> running_calls_ ABSL_GUARDED_BY(calls_mutex_);
  HttpEndpoint endpoint_;  // last: stopped first, while the members its handlers use live
};

}  // namespace mf::server
