#include "server/request_conversion.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace mf::server {
namespace {

namespace pb = moduleformer::v1;

constexpr int kDefaultMaxNewTokens = 16;
constexpr int kMaxLogprobs = 20;
constexpr int kMaxStopStrings = 16;

absl::Status FieldError(const char* field, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

absl::Status CheckTokenIds(const char* field, const google::protobuf::RepeatedField<uint32_t>& ids, int64_t vocab_size) {
  for (uint32_t id : ids) {
    if (id >= vocab_size) return FieldError(field, absl::StrCat("token id ", id, " out of range [0, ", vocab_size, ")"));
  }
  return absl::OkStatus();
}

absl::Status ReadPrompt(const pb::GenerateRequest& request, const Tokenizer* tokenizer, const ModelConfig& config,
                        GenerationRequest* out) {
  switch (request.prompt_case()) {
    case pb::GenerateRequest::kText:
      if (request.text().empty()) return FieldError("text", "is empty");
      if (tokenizer == nullptr) return FieldError("text", "this model has no tokenizer; send token_ids");
      out->prompt = tokenizer->Encode(request.text(), {request.allow_special_tokens()});
      for (int32_t id : out->prompt) {
        if (id >= config.vocab_size) return FieldError("text", "tokenizes to ids outside the model's vocabulary");
      }
      return absl::OkStatus();
    case pb::GenerateRequest::kTokenIds:
      if (request.token_ids().ids().empty()) return FieldError("token_ids", "is empty");
      if (auto status = CheckTokenIds("token_ids", request.token_ids().ids(), config.vocab_size); !status.ok()) {
        return status;
      }
      out->prompt.assign(request.token_ids().ids().begin(), request.token_ids().ids().end());
      return absl::OkStatus();
    default:
      return FieldError("prompt", "set text or token_ids");
  }
}

absl::Status ReadSampling(const pb::GenerateRequest& request, SamplingParams* sampling) {
  const float temperature = request.has_temperature() ? request.temperature() : 1.0f;
  if (!(temperature >= 0) || std::isinf(temperature)) return FieldError("temperature", "must be a finite number >= 0");
  const float top_p = request.has_top_p() ? request.top_p() : 1.0f;
  if (!(top_p > 0 && top_p <= 1)) return FieldError("top_p", "must be in (0, 1]");
  if (!(request.min_p() >= 0 && request.min_p() <= 1)) return FieldError("min_p", "must be in [0, 1]");
  const float repetition = request.has_repetition_penalty() ? request.repetition_penalty() : 1.0f;
  if (!(repetition > 0) || std::isinf(repetition)) return FieldError("repetition_penalty", "must be a finite number > 0");
  if (!(std::abs(request.presence_penalty()) <= 2)) return FieldError("presence_penalty", "must be in [-2, 2]");
  if (!(std::abs(request.frequency_penalty()) <= 2)) return FieldError("frequency_penalty", "must be in [-2, 2]");
  if (request.logprobs() > kMaxLogprobs) return FieldError("logprobs", absl::StrCat("at most ", kMaxLogprobs));
  if (request.top_k() > (1u << 30)) return FieldError("top_k", "is too large");
  sampling->temperature = temperature;
  sampling->top_k = static_cast<int>(request.top_k());
  sampling->top_p = top_p;
  sampling->min_p = request.min_p();
  sampling->repetition_penalty = repetition;
  sampling->presence_penalty = request.presence_penalty();
  sampling->frequency_penalty = request.frequency_penalty();
  sampling->num_logprobs = static_cast<int>(request.logprobs());
  sampling->chosen_logprob = request.return_logprobs() || request.logprobs() > 0;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<GenerationRequest> ToGenerationRequest(const pb::GenerateRequest& request, const Tokenizer* tokenizer,
                                                      const ModelConfig& config) {
  GenerationRequest out;
  if (auto status = ReadPrompt(request, tokenizer, config, &out); !status.ok()) return status;
  if (auto status = ReadSampling(request, &out.sampling); !status.ok()) return status;
  out.max_new_tokens = request.max_new_tokens() == 0 ? kDefaultMaxNewTokens : static_cast<int>(request.max_new_tokens());
  if (request.max_new_tokens() > (1u << 24)) return FieldError("max_new_tokens", "is too large");
  if (request.has_seed()) out.seed = request.seed();
  if (request.stop_size() > kMaxStopStrings) return FieldError("stop", absl::StrCat("at most ", kMaxStopStrings, " strings"));
  for (const std::string& stop : request.stop()) {
    if (stop.empty()) return FieldError("stop", "contains an empty string");
  }
  if (request.stop_size() > 0 && tokenizer == nullptr) return FieldError("stop", "this model has no tokenizer");
  out.stop.assign(request.stop().begin(), request.stop().end());
  if (auto status = CheckTokenIds("stop_token_ids", request.stop_token_ids(), config.vocab_size); !status.ok()) {
    return status;
  }
  out.stop_token_ids.assign(request.stop_token_ids().begin(), request.stop_token_ids().end());
  out.ignore_eos = request.ignore_eos();
  out.priority = request.priority();
  out.return_routing = request.return_routing();
  out.skip_special_tokens = !request.keep_special_tokens();
  if (request.has_prompt_logprobs()) {
    if (request.prompt_logprobs() > kMaxLogprobs) return FieldError("prompt_logprobs", absl::StrCat("at most ", kMaxLogprobs));
    out.prompt_logprobs = static_cast<int>(request.prompt_logprobs());
  }
  if (request.stats_tag().size() > 128) return FieldError("stats_tag", "at most 128 bytes");
  out.stats_tag = request.stats_tag();
  return out;
}

namespace {

void SetLogprob(const SampleResult& sample, pb::TokenLogprob* logprob) {
  logprob->set_token_id(static_cast<uint32_t>(sample.token));
  logprob->set_logprob(sample.logprob);
  for (const TokenLogprob& top : sample.top) {
    pb::TopLogprob* entry = logprob->add_top();
    entry->set_token_id(static_cast<uint32_t>(top.token));
    entry->set_logprob(top.logprob);
  }
}

template <typename Message>
void AppendTokenData(const GenerationUpdate& update, Message* message) {
  message->mutable_token_ids()->Add(update.tokens.begin(), update.tokens.end());
  for (const SampleResult& sample : update.logprobs) SetLogprob(sample, message->add_logprobs());
  for (const SampleResult& sample : update.prompt_logprobs) SetLogprob(sample, message->add_prompt_logprobs());
  for (const TokenRouting& routing : update.routing) {
    pb::TokenRouting* token = message->add_routing();
    for (size_t layer = 0; layer < routing.experts[0].size(); ++layer) {
      pb::LayerRouting* entry = token->add_layers();
      entry->mutable_attention_experts()->Add(routing.experts[0][layer].begin(), routing.experts[0][layer].end());
      entry->mutable_attention_gates()->Add(routing.gates[0][layer].begin(), routing.gates[0][layer].end());
      entry->mutable_mlp_experts()->Add(routing.experts[1][layer].begin(), routing.experts[1][layer].end());
      entry->mutable_mlp_gates()->Add(routing.gates[1][layer].begin(), routing.gates[1][layer].end());
    }
  }
}

template <typename Message>
void SetFinal(const GenerationUpdate& update, Message* message) {
  if (!update.finished) return;
  message->set_finish_reason(static_cast<pb::FinishReason>(static_cast<int>(update.finish_reason)));
  message->mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(update.prompt_tokens));
  message->mutable_usage()->set_completion_tokens(static_cast<uint32_t>(update.completion_tokens));
  message->mutable_usage()->set_cached_prompt_tokens(static_cast<uint32_t>(update.cached_prompt_tokens));
  message->mutable_timings()->set_queue_seconds(update.queue_seconds);
  message->mutable_timings()->set_time_to_first_token_seconds(update.time_to_first_token_seconds);
  message->mutable_timings()->set_total_seconds(update.total_seconds);
}

}  // namespace

void AppendUpdate(const GenerationUpdate& update, pb::GenerateResponse* response) {
  response->mutable_text()->append(update.text);
  AppendTokenData(update, response);
  SetFinal(update, response);
}

pb::StreamResponse ToStreamResponse(const GenerationUpdate& update) {
  pb::StreamResponse response;
  response.set_text(update.text);
  AppendTokenData(update, &response);
  SetFinal(update, &response);
  return response;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

}  // namespace mf::server
