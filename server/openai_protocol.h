// The OpenAI API's request and response formats, apart from HTTP: a completions or chat
// request becomes engine requests (one per choice, `n`) through the gRPC API's
// GenerateRequest and its validation, and engine updates become OpenAI responses, whole or
// as stream chunks. Errors name the request field as OpenAI calls it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/sequence.h"
#include "engine/checkpoint/config.h"
#include "engine/text/chat_template.h"
#include "engine/text/tokenizer.h"
#include "nlohmann/json.hpp"

namespace mf::server {

enum class OpenAiApi { kCompletions, kChat };

struct OpenAiError {
  int http_status = 400;
  std::string message;
  std::string param;  // the request field at fault, or empty
  std::string type = "invalid_request_error";
};

// What a request needs of the server to be understood.
struct OpenAiContext {
  const Tokenizer* tokenizer = nullptr;  // null: prompts must be token ids, and no chat
  const ModelConfig* model_config = nullptr;
  const ChatTemplate* chat_template = nullptr;
  int max_sequence_tokens = 0;
  std::string served_model_name;
};

struct OpenAiCall {
  OpenAiApi api = OpenAiApi::kCompletions;
  std::vector<GenerationRequest> choices;  // one engine request per choice
  bool stream = false;
  bool include_usage = false;   // stream_options.include_usage
  std::string echo_prompt;      // completions with echo: the prompt text, sent before the completion
  bool logprobs = false;        // chosen-token logprobs asked
  int top_logprobs = 0;         // alternatives per token
  std::string stats_tag;
};

// Parses and validates `body`; returns false with `error` set when it is refused.
bool ParseOpenAiRequest(OpenAiApi api, const nlohmann::ordered_json& body, const OpenAiContext& context,
                        OpenAiCall* call, OpenAiError* error);

// A validation or engine failure as an OpenAI error; an INVALID_ARGUMENT message that starts
// with a GenerateRequest field ("max_new_tokens: ...") names the field as `api` calls it.
OpenAiError ErrorFromStatus(const absl::Status& status, OpenAiApi api = OpenAiApi::kCompletions,
                            bool max_completion_tokens = false);
nlohmann::json ErrorBody(const OpenAiError& error);

// Builds the responses of one call from the updates of its choices.
class OpenAiResponder {
 public:
  OpenAiResponder(const OpenAiCall& call, const Tokenizer* tokenizer, std::string model, uint64_t request_id);

  // Stream: the chunks to send before any update (chat: each choice's role).
  std::vector<nlohmann::json> FirstChunks() const;
  // Stream: the chunk an update of `choice` gives, if any. Records the update for Whole().
  std::vector<nlohmann::json> OnUpdate(int choice, const GenerationUpdate& update);
  // Stream: the usage chunk (after every choice finished).
  nlohmann::json UsageChunk() const;
  // Not streamed: the whole response, after every choice finished.
  nlohmann::json Whole() const;

  const GenerationUpdate& final_update(int choice) const { return choices_[static_cast<size_t>(choice)].final_update; }
  int completion_tokens() const;

 private:
  struct Choice {
    std::string text;
    nlohmann::json logprobs;  // accumulated in the API's format
    int text_offset = 0;       // completions' text_offset of the next token
    GenerationUpdate final_update;
    bool finished = false;
    bool prompt_listed = false;  // echo_logprobs_: the prompt's tokens are in `logprobs`
  };
  nlohmann::json Chunk(nlohmann::json choices) const;
  nlohmann::json LogprobsOf(Choice& choice, const GenerationUpdate& update) const;
  // Completions with echo and logprobs: the prompt's tokens (the first without a logprob).
  nlohmann::json PromptLogprobs(const GenerationUpdate& update) const;
  nlohmann::json Usage() const;
  std::string TokenText(int32_t id) const;

  OpenAiApi api_;
  bool logprobs_;
  bool echo_logprobs_;        // completions: prompt tokens lead each choice's logprobs
  int32_t first_prompt_token_ = 0;
  const Tokenizer* tokenizer_;
  std::string model_, id_;
  int64_t created_;
  std::vector<Choice> choices_;
};

}  // namespace mf::server
