// Subcommands of the `moduleformer` command-line tool.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/client_context.h>

#include "absl/status/statusor.h"
#include "engine/model.h"

namespace mf::cli {

// Loads --model DIR, or builds --random-weights CONFIG, onto --device.
absl::StatusOr<std::unique_ptr<Model>> LoadModelFromFlags();

// Arguments left after flag parsing (e.g. the prompt text of `generate --server`).
std::vector<std::string>& PositionalArguments();

// Sends --api-key (or $MF_API_KEY) as "authorization: Bearer KEY", when given.
void AddApiKey(grpc::ClientContext& context);

int RunVerify();
int RunRemoteGenerate();
int RunExpertStats();
int RunGenerate();
int RunTokenize();
int RunConvert();
int RunChatTemplate();
int RunEval();
int RunPrune();

}  // namespace mf::cli
