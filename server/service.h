// The gRPC service: callback reactors that never block. Each request is handed to
// the engine; the engine's updates come back on its loop thread and are written
// out by the request's reactor.
#pragma once

#include <string>

#include "engine/engine.h"
#include "moduleformer/v1/moduleformer.grpc.pb.h"
#include "server/metrics.h"
#include "server/request_log.h"

namespace mf::server {

class ModuleFormerService final : public moduleformer::v1::ModuleFormer::CallbackService {
 public:
  // `metrics` (no exporter) and `request_log` (no log) may be null.
  ModuleFormerService(Engine& engine, std::string model_name, std::string backend_name, ServerMetrics* metrics,
                      RequestLog* request_log = nullptr)
      : engine_(engine), model_name_(std::move(model_name)), backend_name_(std::move(backend_name)),
        metrics_(metrics), request_log_(request_log) {}

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const moduleformer::v1::GenerateRequest* request,
                                     moduleformer::v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<moduleformer::v1::StreamResponse>* Stream(
      grpc::CallbackServerContext* context, const moduleformer::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const moduleformer::v1::TokenizeRequest* request,
                                     moduleformer::v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfo(grpc::CallbackServerContext* context,
                                      const moduleformer::v1::ModelInfoRequest* request,
                                      moduleformer::v1::ModelInfoResponse* response) override;
  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* context, const moduleformer::v1::LoadRequest* request,
                                    moduleformer::v1::LoadResponse* response) override;
  grpc::ServerUnaryReactor* ExpertStats(grpc::CallbackServerContext* context,
                                        const moduleformer::v1::ExpertStatsRequest* request,
                                        moduleformer::v1::ExpertStatsResponse* response) override;

 private:
  Engine& engine_;
  std::string model_name_;
  std::string backend_name_;
  ServerMetrics* metrics_;
  RequestLog* request_log_;
};

}  // namespace mf::server
