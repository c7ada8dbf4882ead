// OpenAiResponder: engine updates as OpenAI completions and chat responses, whole or as
// stream chunks, with logprobs in each API's format.
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/openai_protocol.h"

namespace mf::server {
namespace {

using nlohmann::json;

const char* OpenAiFinishReason(FinishReason reason) {
  return reason == FinishReason::kLength ? "length" : "stop";  // EOS, stop strings and stop ids are all "stop"
}

int CodePointCount(const std::string& text) {
  int count = 0;
  for (const char c : text) count += (static_cast<unsigned char>(c) & 0xC0) != 0x80 ? 1 : 0;
  return count;
}

}  // namespace

OpenAiResponder::OpenAiResponder(const OpenAiCall& call, const Tokenizer* tokenizer, std::string model,
                                 uint64_t request_id)
    : api_(call.api),
      logprobs_(call.logprobs),
      echo_logprobs_(call.logprobs && !call.echo_prompt.empty() && call.api == OpenAiApi::kCompletions),
      tokenizer_(tokenizer),
      model_(std::move(model)),
      id_(absl::StrCat(call.api == OpenAiApi::kChat ? "chatcmpl-" : "cmpl-", request_id)),
      created_(absl::ToUnixSeconds(absl::Now())),
      choices_(call.choices.size()) {
  for (Choice& choice : choices_) {
    choice.text = call.echo_prompt;
    choice.text_offset = CodePointCount(call.echo_prompt);
  }
  if (!call.choices.empty() && !call.choices[0].prompt.empty()) first_prompt_token_ = call.choices[0].prompt[0];
}

std::string OpenAiResponder::TokenText(int32_t id) const {
  if (tokenizer_ == nullptr) return absl::StrCat("token_id:", id);
  absl::StatusOr<std::string> text = tokenizer_->Decode({id});
  return text.ok() ? *text : std::string();
}

json OpenAiResponder::PromptLogprobs(const GenerationUpdate& update) const {
  json result = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
                 {"text_offset", json::array()}};
  int offset = 0;
  auto add = [&](int32_t token, const SampleResult* scored) {
    const std::string text = TokenText(token);
    result["tokens"].push_back(text);
    result["text_offset"].push_back(offset);
    offset += CodePointCount(text);
    if (scored == nullptr) {
      result["token_logprobs"].push_back(nullptr);
      result["top_logprobs"].push_back(nullptr);
      return;
    }
    result["token_logprobs"].push_back(scored->logprob);
    json top = json::object();
    for (const TokenLogprob& alternative : scored->top) top[TokenText(alternative.token)] = alternative.logprob;
    result["top_logprobs"].push_back(std::move(top));
  };
  add(first_prompt_token_, nullptr);
  for (const SampleResult& scored : update.prompt_logprobs) add(scored.token, &scored);
  return result;
}

json OpenAiResponder::Chunk(json choices) const {
  return json{{"id", id_}, {"object", api_ == OpenAiApi::kChat ? "chat.completion.chunk" : "text_completion"},
              {"created", created_}, {"model", model_}, {"choices", std::move(choices)}};
}

std::vector<json> OpenAiResponder::FirstChunks() const {
  std::vector<json> chunks;
  for (size_t i = 0; i < choices_.size(); ++i) {
    if (api_ == OpenAiApi::kChat) {
      chunks.push_back(Chunk(json::array({{{"index", i}, {"delta", {{"role", "assistant"}, {"content", ""}}},
                                           {"logprobs", nullptr}, {"finish_reason", nullptr}}})));
    } else if (!choices_[i].text.empty()) {  // echo
      chunks.push_back(Chunk(json::array({{{"index", i}, {"text", choices_[i].text}, {"logprobs", nullptr},
                                           {"finish_reason", nullptr}}})));
    }
  }
  return chunks;
}

json OpenAiResponder::LogprobsOf(Choice& choice, const GenerationUpdate& update) const {
  auto token_text = [this](int32_t id) { return TokenText(id); };
  auto token_bytes = [this](int32_t id) {
    json bytes = json::array();
    if (tokenizer_ != nullptr && tokenizer_->IsValidId(id)) {
      for (const char c : tokenizer_->TokenBytes(id)) bytes.push_back(static_cast<unsigned char>(c));
    }
    return bytes;
  };
  if (api_ == OpenAiApi::kChat) {
    json content = json::array();
    for (const SampleResult& sample : update.logprobs) {
      json top = json::array();
      for (const TokenLogprob& alternative : sample.top) {
        top.push_back({{"token", token_text(alternative.token)}, {"logprob", alternative.logprob},
                       {"bytes", token_bytes(alternative.token)}});
      }
      content.push_back({{"token", token_text(sample.token)}, {"logprob", sample.logprob},
                         {"bytes", token_bytes(sample.token)}, {"top_logprobs", std::move(top)}});
    }
    return json{{"content", std::move(content)}, {"refusal", nullptr}};
  }
  json result = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
                 {"text_offset", json::array()}};
  for (const SampleResult& sample : update.logprobs) {
    const std::string text = token_text(sample.token);
    result["tokens"].push_back(text);
    result["token_logprobs"].push_back(sample.logprob);
    json top = json::object();
    for (const TokenLogprob& alternative : sample.top) top[token_text(alternative.token)] = alternative.logprob;
    result["top_logprobs"].push_back(std::move(top));
    result["text_offset"].push_back(choice.text_offset);
    choice.text_offset += CodePointCount(text);
  }
  return result;
}

std::vector<json> OpenAiResponder::OnUpdate(int index, const GenerationUpdate& update) {
  Choice& choice = choices_[static_cast<size_t>(index)];
  choice.text += update.text;
  json logprobs = nullptr;
  if (logprobs_) {
    logprobs = LogprobsOf(choice, update);
    if (echo_logprobs_ && !choice.prompt_listed) {  // the update of the first new token carries the prompt's
      json prompt = PromptLogprobs(update);
      for (auto& [key, values] : prompt.items()) values.insert(values.end(), logprobs[key].begin(), logprobs[key].end());
      logprobs = std::move(prompt);
      choice.prompt_listed = true;
    }
    if (choice.logprobs.is_null()) {
      choice.logprobs = logprobs;
    } else {
      for (auto& [key, values] : logprobs.items()) {
        if (values.is_array()) choice.logprobs[key].insert(choice.logprobs[key].end(), values.begin(), values.end());
      }
    }
  }
  if (update.finished) {
    choice.finished = true;
    choice.final_update = update;
  }
  if (update.text.empty() && update.logprobs.empty() && !update.finished) return {};
  json entry = {{"index", index}, {"logprobs", std::move(logprobs)}, {"finish_reason", nullptr}};
  if (api_ == OpenAiApi::kChat) {
    entry["delta"] = update.text.empty() ? json::object() : json{{"content", update.text}};
  } else {
    entry["text"] = update.text;
  }
  if (update.finished) entry["finish_reason"] = OpenAiFinishReason(update.finish_reason);
  return {Chunk(json::array({std::move(entry)}))};
}

int OpenAiResponder::completion_tokens() const {
  int total = 0;
  for (const Choice& choice : choices_) total += choice.final_update.completion_tokens;
  return total;
}

json OpenAiResponder::Usage() const {
  const GenerationUpdate& first = choices_.front().final_update;
  return {{"prompt_tokens", first.prompt_tokens},
          {"completion_tokens", completion_tokens()},
          {"total_tokens", first.prompt_tokens + completion_tokens()},
          {"prompt_tokens_details", {{"cached_tokens", first.cached_prompt_tokens}}}};
}

json OpenAiResponder::UsageChunk() const {
  json chunk = Chunk(json::array());
  chunk["usage"] = Usage();
  return chunk;
}

json OpenAiResponder::Whole() const {
  json choices = json::array();
  for (size_t i = 0; i < choices_.size(); ++i) {
    const Choice& choice = choices_[i];
    json entry = {{"index", i}, {"logprobs", choice.logprobs},
                  {"finish_reason", OpenAiFinishReason(choice.final_update.finish_reason)}};
    if (api_ == OpenAiApi::kChat) {
      entry["message"] = {{"role", "assistant"}, {"content", choice.text}};
    } else {
      entry["text"] = choice.text;
    }
    choices.push_back(std::move(entry));
  }
  json whole = Chunk(std::move(choices));
  whole["object"] = api_ == OpenAiApi::kChat ? "chat.completion" : "text_completion";
  whole["usage"] = Usage();
  return whole;
}

}  // namespace mf::server
