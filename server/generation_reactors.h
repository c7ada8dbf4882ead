// The reactors of the generation calls: Generate (unary) and Stream (server streaming).
// Each parses its request, submits it to the engine and writes the engine's updates back
// from the engine thread; a stream whose client falls behind pauses its request.
#pragma once

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "engine/engine.h"
#include "server/metrics.h"
#include "server/request_log.h"

namespace mf::server {

// Finishes a call and counts it by method and status.
template <typename Reactor>
void FinishCounted(Reactor* reactor, ServerMetrics* metrics, const char* rpc, const grpc::Status& status) {
  if (metrics != nullptr) metrics->CountRequest(rpc, status.error_code());
  reactor->Finish(status);
}

// `admitted`: OK, or why the call is refused before its request is read (authentication).
// `metrics` and `log` may be null. The reactors delete themselves when done.
grpc::ServerUnaryReactor* StartGenerate(Engine& engine, ServerMetrics* metrics, RequestLog* log,
                                        grpc::CallbackServerContext* context, absl::Status admitted,
                                        const grpc::ByteBuffer& raw_request, grpc::ByteBuffer* raw_response);
grpc::ServerWriteReactor<grpc::ByteBuffer>* StartStream(Engine& engine, ServerMetrics* metrics, RequestLog* log,
                                                        grpc::CallbackServerContext* context, absl::Status admitted,
                                                        const grpc::ByteBuffer& raw_request);

}  // namespace mf::server
