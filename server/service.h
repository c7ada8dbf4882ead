// The gRPC service: callback reactors that never block. Each request is handed to
// the engine; the engine's updates come back on its loop thread and are written
// out by the request's reactor.
#pragma once

#include <string>

#include "engine/engine.h"
#include "moduleformer/v1/moduleformer.grpc.pb.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/request_log.h"

namespace mf::server {

namespace internal {
namespace v1 = moduleformer::v1;
// Every method takes its request as bytes and parses it itself (server/wire.h).
using RawService = v1::ModuleFormer::WithRawCallbackMethod_Generate<v1::ModuleFormer::WithRawCallbackMethod_Stream<
    v1::ModuleFormer::WithRawCallbackMethod_Tokenize<v1::ModuleFormer::WithRawCallbackMethod_ModelInfo<
        v1::ModuleFormer::WithRawCallbackMethod_GetLoad<v1::ModuleFormer::WithRawCallbackMethod_ExpertStats<
            v1::ModuleFormer::Service>>>>>>;
}  // namespace internal

class ModuleFormerService final : public internal::RawService {
 public:
  // `metrics` (no exporter), `request_log` (no log) and `api_keys` (no authentication)
  // may be null.
  ModuleFormerService(Engine& engine, std::string model_name, std::string backend_name, ServerMetrics* metrics,
                      RequestLog* request_log = nullptr, const ApiKeys* api_keys = nullptr)
      : engine_(engine), model_name_(std::move(model_name)), backend_name_(std::move(backend_name)),
        metrics_(metrics), request_log_(request_log), api_keys_(api_keys) {}

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Stream(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ModelInfo(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ExpertStats(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;

 private:
  // OK, or UNAUTHENTICATED when keys are required and the call carries none of them.
  absl::Status Authorize(const grpc::CallbackServerContext* context) const;
  grpc::Status TokenizeParsed(const moduleformer::v1::TokenizeRequest& request,
                              moduleformer::v1::TokenizeResponse* response);
  grpc::Status ModelInfoParsed(moduleformer::v1::ModelInfoResponse* response);
  grpc::Status GetLoadParsed(moduleformer::v1::LoadResponse* response);
  grpc::Status ExpertStatsParsed(const moduleformer::v1::ExpertStatsRequest& request,
                                 moduleformer::v1::ExpertStatsResponse* response);

  Engine& engine_;
  std::string model_name_;
  std::string backend_name_;
  ServerMetrics* metrics_;
  RequestLog* request_log_;
  const ApiKeys* api_keys_;
};

}  // namespace mf::server
