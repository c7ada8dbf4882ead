// Between the wire API and the engine: validating a GenerateRequest into a
// GenerationRequest (errors name the offending field), and engine updates into
// response messages.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/statusor.h"
#include "engine/checkpoint/config.h"
#include "engine/sequence.h"
#include "engine/text/tokenizer.h"
#include "moduleformer/v1/moduleformer.pb.h"

namespace mf::server {

absl::StatusOr<GenerationRequest> ToGenerationRequest(const moduleformer::v1::GenerateRequest& request,
                                                      const Tokenizer* tokenizer, const ModelConfig& config);

// Appends an update's tokens, text, logprobs and routing; on the final update also
// the finish reason, usage and timings.
void AppendUpdate(const GenerationUpdate& update, moduleformer::v1::GenerateResponse* response);
moduleformer::v1::StreamResponse ToStreamResponse(const GenerationUpdate& update);

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace mf::server
