// `moduleformer generate --server HOST:PORT "text"`: streams a completion from a
// running server to stdout (text when the model has a tokenizer, else token ids).
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "moduleformer/v1/moduleformer.grpc.pb.h"
#include "tools/moduleformer/commands.h"

ABSL_DECLARE_FLAG(std::string, server);
ABSL_DECLARE_FLAG(std::string, prompt_ids);
ABSL_DECLARE_FLAG(int32_t, max_new_tokens);
ABSL_FLAG(double, temperature, 0.0, "Sampling temperature for --server (0: greedy)");
ABSL_FLAG(bool, ignore_eos, false, "Keep generating past the end-of-sequence token");
ABSL_FLAG(double, timeout_seconds, 600, "Deadline for --server requests");
ABSL_FLAG(std::string, api_key, "", "API key for a server run with --api-key-file (default: $MF_API_KEY)");

namespace mf::cli {

void AddApiKey(grpc::ClientContext& context) {
  std::string key = absl::GetFlag(FLAGS_api_key);
  if (const char* from_env = std::getenv("MF_API_KEY"); key.empty() && from_env != nullptr) key = from_env;
  if (!key.empty()) context.AddMetadata("authorization", "Bearer " + key);
}

int RunRemoteGenerate() {
  namespace pb = moduleformer::v1;
  pb::GenerateRequest request;
  const std::string ids = absl::GetFlag(FLAGS_prompt_ids);
  if (!ids.empty()) {
    for (absl::string_view piece : absl::StrSplit(ids, ',', absl::SkipWhitespace())) {
      uint32_t id;
      if (!absl::SimpleAtoi(piece, &id)) {
        std::fprintf(stderr, "error: --prompt-ids: '%s' is not a token id\n", std::string(piece).c_str());
        return 2;
      }
      request.mutable_token_ids()->add_ids(id);
    }
  } else if (!PositionalArguments().empty()) {
    request.set_text(absl::StrJoin(PositionalArguments(), " "));
  } else {
    std::fprintf(stderr, "error: give the prompt text as an argument, or --prompt-ids\n");
    return 2;
  }
  request.set_max_new_tokens(static_cast<uint32_t>(absl::GetFlag(FLAGS_max_new_tokens)));
  request.set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  request.set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));

  auto channel = grpc::CreateChannel(absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials());
  auto stub = pb::ModuleFormer::NewStub(channel);
  grpc::ClientContext context;
  AddApiKey(context);
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_timeout_seconds) * 1000)));
  std::unique_ptr<grpc::ClientReader<pb::StreamResponse>> reader = stub->Stream(&context, request);
  pb::StreamResponse message;
  bool printed_ids = false;
  while (reader->Read(&message)) {
    if (!message.text().empty()) {
      std::fwrite(message.text().data(), 1, message.text().size(), stdout);
    } else if (request.has_token_ids() && message.token_ids_size() > 0) {
      std::printf("%s%s", printed_ids ? "," : "", absl::StrJoin(message.token_ids(), ",").c_str());
      printed_ids = true;
    }
    std::fflush(stdout);
  }
  std::printf("\n");
  const grpc::Status status = reader->Finish();
  if (!status.ok()) {
    std::fprintf(stderr, "error: %s: %s\n", absl::GetFlag(FLAGS_server).c_str(), status.error_message().c_str());
    return 1;
  }
  return 0;
}

}  // namespace mf::cli
