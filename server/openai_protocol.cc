#include "server/openai_protocol.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/request_conversion.h"

namespace mf::server {
namespace {

namespace pb = moduleformer::v1;
using nlohmann::json;
using nlohmann::ordered_json;

constexpr int kMaxChoices = 16;
constexpr int kMaxTopLogprobs = 20;

// Request fields read with their types checked; the first problem is kept.
class Fields {
 public:
  explicit Fields(const ordered_json& body) : body_(body) {}
  bool ok() const { return error_.message.empty(); }
  const OpenAiError& error() const { return error_; }

  bool Has(const char* name) const { return body_.contains(name) && !body_[name].is_null(); }
  const ordered_json& operator[](const char* name) const { return body_[name]; }
  template <typename Setter>
  void Number(const char* name, Setter set) {
    if (!Has(name)) return;
    if (!body_[name].is_number()) return Fail(name, "must be a number");
    set(body_[name].get<double>());
  }
  template <typename Setter>
  void Integer(const char* name, int64_t min, int64_t max, Setter set) {
    if (!Has(name)) return;
    if (!body_[name].is_number_integer()) return Fail(name, "must be an integer");
    const int64_t value = body_[name].get<int64_t>();
    if (value < min || value > max || (body_[name].is_number_unsigned() && body_[name].get<uint64_t>() > INT64_MAX)) {
      return Fail(name, absl::StrCat("must be in [", min, ", ", max, "]"));
    }
    set(value);
  }
  template <typename Setter>
  void Boolean(const char* name, Setter set) {
    if (!Has(name)) return;
    if (!body_[name].is_boolean()) return Fail(name, "must be true or false");
    set(body_[name].get<bool>());
  }
  void Unsupported(const char* name, const char* why) {
    if (Has(name)) Fail(name, why);
  }
  void Fail(const std::string& name, const std::string& problem) {
    if (!ok()) return;
    error_.param = name;
    error_.message = absl::StrCat(name, ": ", problem);
  }

 private:
  const ordered_json& body_;
  OpenAiError error_;
};

// Completions: a prompt as text or token ids, one prompt per request.
void ReadCompletionPrompt(Fields& fields, const OpenAiContext& context, pb::GenerateRequest* request,
                          std::string* prompt_text) {
  if (!fields.Has("prompt")) return fields.Fail("prompt", "is required");
  const ordered_json* prompt = &fields["prompt"];
  if (prompt->is_array() && prompt->size() == 1 && ((*prompt)[0].is_string() || (*prompt)[0].is_array())) {
    prompt = &(*prompt)[0];  // ["text"] or [[ids]]: one prompt
  }
  if (prompt->is_string()) {
    *prompt_text = prompt->get<std::string>();
    request->set_text(*prompt_text);
    return;
  }
  if (!prompt->is_array() || prompt->empty() || !(*prompt)[0].is_number_integer()) {
    return fields.Fail("prompt", "must be a string or an array of token ids (one prompt per request)");
  }
  std::vector<int32_t> ids;
  for (const ordered_json& id : *prompt) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
      return fields.Fail("prompt", "token ids must be non-negative integers");
    }
    request->mutable_token_ids()->add_ids(static_cast<uint32_t>(id.get<int64_t>()));
    ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
  }
  if (context.tokenizer != nullptr) {
    absl::StatusOr<std::string> text = context.tokenizer->Decode(ids);
    if (text.ok()) *prompt_text = *std::move(text);
  }
}

// Chat: the messages, their content parts joined, rendered by the model's chat template
// and tokenized with the template's special tokens recognised.
void ReadChatPrompt(Fields& fields, const OpenAiContext& context, pb::GenerateRequest* request) {
  if (!fields.Has("messages") || !fields["messages"].is_array() || fields["messages"].empty()) {
    return fields.Fail("messages", "must be a non-empty array of {\"role\", \"content\"} objects");
  }
  if (context.tokenizer == nullptr || context.chat_template == nullptr) {
    return fields.Fail("messages", "this model has no tokenizer, so no chat template");
  }
  ordered_json messages = ordered_json::array();
  for (size_t i = 0; i < fields["messages"].size(); ++i) {
    ordered_json message = fields["messages"][i];
    const std::string where = absl::StrCat("messages[", i, "]");
    if (!message.is_object() || !message.contains("role") || !message["role"].is_string()) {
      return fields.Fail(where, "must be an object with a string 'role'");
    }
    if (!message.contains("content") || message["content"].is_null()) {
      message["content"] = "";
    } else if (message["content"].is_array()) {  // [{"type": "text", "text": "..."}, ...]
      std::string text;
      for (size_t j = 0; j < message["content"].size(); ++j) {
        const ordered_json& part = message["content"][j];
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string()) {
          return fields.Fail(absl::StrCat(where, ".content[", j, "]"), "only {\"type\": \"text\", \"text\": ...} parts are supported");
        }
        absl::StrAppend(&text, j > 0 ? "\n" : "", part["text"].get<std::string>());
      }
      message["content"] = text;
    } else if (!message["content"].is_string()) {
      return fields.Fail(where + ".content", "must be a string or an array of text parts");
    }
    messages.push_back(std::move(message));
  }
  bool add_generation_prompt = true;
  fields.Boolean("add_generation_prompt", [&](bool value) { add_generation_prompt = value; });
  absl::StatusOr<std::string> prompt = context.chat_template->Render(messages, add_generation_prompt);
  if (!prompt.ok()) return fields.Fail("messages", absl::StrCat("the chat template refused them: ", prompt.status().message()));
  for (const int32_t id : context.tokenizer->Encode(*prompt, {.allow_special = true})) {
    request->mutable_token_ids()->add_ids(static_cast<uint32_t>(id));
  }
}

void ReadSampling(Fields& fields, pb::GenerateRequest* request) {
  fields.Number("temperature", [&](double v) { request->set_temperature(static_cast<float>(v)); });
  fields.Number("top_p", [&](double v) { request->set_top_p(static_cast<float>(v)); });
  fields.Integer("top_k", -1, 1 << 30, [&](int64_t v) { request->set_top_k(v < 0 ? 0 : static_cast<uint32_t>(v)); });
  fields.Number("min_p", [&](double v) { request->set_min_p(static_cast<float>(v)); });
  fields.Number("presence_penalty", [&](double v) { request->set_presence_penalty(static_cast<float>(v)); });
  fields.Number("frequency_penalty", [&](double v) { request->set_frequency_penalty(static_cast<float>(v)); });
  fields.Number("repetition_penalty", [&](double v) { request->set_repetition_penalty(static_cast<float>(v)); });
  fields.Integer("seed", INT64_MIN, INT64_MAX, [&](int64_t v) { request->set_seed(static_cast<uint64_t>(v)); });
  fields.Integer("priority", INT32_MIN, INT32_MAX, [&](int64_t v) { request->set_priority(static_cast<int32_t>(v)); });
  fields.Boolean("ignore_eos", [&](bool v) { request->set_ignore_eos(v); });
  fields.Boolean("skip_special_tokens", [&](bool v) { request->set_keep_special_tokens(!v); });
  if (fields.Has("stats_tag")) {
    if (!fields["stats_tag"].is_string()) return fields.Fail("stats_tag", "must be a string");
    request->set_stats_tag(fields["stats_tag"].get<std::string>());
  }
  if (fields.Has("stop")) {
    const ordered_json& stop = fields["stop"];
    if (stop.is_string()) {
      request->add_stop(stop.get<std::string>());
    } else if (stop.is_array() && std::all_of(stop.begin(), stop.end(), [](const ordered_json& s) { return s.is_string(); })) {
      for (const ordered_json& s : stop) request->add_stop(s.get<std::string>());
    } else {
      fields.Fail("stop", "must be a string or an array of strings");
    }
  }
  if (fields.Has("logit_bias") && !(fields["logit_bias"].is_object() && fields["logit_bias"].empty())) {
    fields.Fail("logit_bias", "is not supported");
  }
}

// The OpenAI name of a GenerateRequest field named in a validation error.
std::string OpenAiParam(const std::string& field, OpenAiApi api, bool max_completion_tokens) {
  if (field == "max_new_tokens") return max_completion_tokens ? "max_completion_tokens" : "max_tokens";
  if (field == "text" || field == "token_ids" || field == "prompt") return api == OpenAiApi::kChat ? "messages" : "prompt";
  if (field == "logprobs" && api == OpenAiApi::kChat) return "top_logprobs";
  return field;
}

void ReadOptions(OpenAiApi api, Fields& fields, const std::string& prompt_text, OpenAiCall* call, pb::GenerateRequest* request) {
  fields.Boolean("stream", [&](bool v) { call->stream = v; });
  if (fields.Has("stream_options")) {
    const ordered_json& options = fields["stream_options"];
    if (!options.is_object()) return fields.Fail("stream_options", "must be an object");
    if (!call->stream) return fields.Fail("stream_options", "is only allowed with stream: true");
    call->include_usage = options.value("include_usage", false) == true;
  }
  if (api == OpenAiApi::kCompletions) {
    fields.Integer("logprobs", 0, kMaxTopLogprobs, [&](int64_t v) {
      call->logprobs = true;
      call->top_logprobs = static_cast<int>(v);
    });
    bool echo = false;
    fields.Boolean("echo", [&](bool v) { echo = v; });
    if (echo) call->echo_prompt = prompt_text;
    // echo with logprobs: the prompt's tokens are scored too, and listed before the completion's.
    if (echo && call->logprobs) request->set_prompt_logprobs(static_cast<uint32_t>(call->top_logprobs));
    fields.Unsupported("suffix", "is not supported");
  } else {
    fields.Boolean("logprobs", [&](bool v) { call->logprobs = v; });
    fields.Integer("top_logprobs", 0, kMaxTopLogprobs, [&](int64_t v) { call->top_logprobs = static_cast<int>(v); });
    if (fields.Has("top_logprobs") && !call->logprobs) fields.Fail("top_logprobs", "needs logprobs: true");
    if (fields.Has("tools") && !(fields["tools"].is_array() && fields["tools"].empty())) {
      fields.Fail("tools", "tool calling is not supported");
    }
    if (fields.Has("tool_choice") && fields["tool_choice"] != "none") fields.Fail("tool_choice", "tool calling is not supported");
    fields.Unsupported("functions", "function calling is not supported");
    fields.Unsupported("function_call", "function calling is not supported");
    if (fields.Has("response_format") &&
        !(fields["response_format"].is_object() && fields["response_format"].value("type", "") == "text")) {
      fields.Fail("response_format", "only {\"type\": \"text\"} is supported");
    }
  }
  request->set_return_logprobs(call->logprobs);
  request->set_logprobs(static_cast<uint32_t>(call->top_logprobs));
}

}  // namespace

bool ParseOpenAiRequest(OpenAiApi api, const ordered_json& body, const OpenAiContext& context, OpenAiCall* call,
                        OpenAiError* error) {
  call->api = api;
  if (body.contains("model") && !body["model"].is_null() && body["model"] != context.served_model_name) {
    const std::string asked = body["model"].is_string() ? body["model"].get<std::string>() : body["model"].dump();
    *error = {404, absl::StrCat("model: '", asked, "' is not served here (this server serves '", context.served_model_name, "')"),
              "model", "invalid_request_error"};
    return false;
  }
  Fields fields(body);
  pb::GenerateRequest request;
  std::string prompt_text;
  if (api == OpenAiApi::kCompletions) {
    ReadCompletionPrompt(fields, context, &request, &prompt_text);
  } else {
    ReadChatPrompt(fields, context, &request);
  }
  const char* max_name = api == OpenAiApi::kChat && fields.Has("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  fields.Integer(max_name, 1, 1 << 24, [&](int64_t v) { request.set_max_new_tokens(static_cast<uint32_t>(v)); });
  int num_choices = 1;
  fields.Integer("n", 1, kMaxChoices, [&](int64_t v) { num_choices = static_cast<int>(v); });
  fields.Integer("best_of", num_choices, num_choices, [](int64_t) {});
  ReadSampling(fields, &request);
  ReadOptions(api, fields, prompt_text, call, &request);
  if (!fields.ok()) {
    *error = fields.error();
    return false;
  }
  if (request.max_new_tokens() == 0) {  // completions: 16, as OpenAI's; chat: up to the context's end
    const int remaining = context.max_sequence_tokens - request.token_ids().ids_size();
    request.set_max_new_tokens(api == OpenAiApi::kCompletions ? 16u : static_cast<uint32_t>(std::max(1, remaining)));
  }
  absl::StatusOr<GenerationRequest> converted = ToGenerationRequest(request, context.tokenizer, *context.model_config);
  if (!converted.ok()) {
    *error = ErrorFromStatus(converted.status(), api, std::string(max_name) == "max_completion_tokens");
    return false;
  }
  call->stats_tag = request.stats_tag();
  for (int i = 0; i < num_choices; ++i) {
    call->choices.push_back(*converted);
    if (converted->seed.has_value()) call->choices.back().seed = *converted->seed + static_cast<uint64_t>(i);
  }
  return true;
}

OpenAiError ErrorFromStatus(const absl::Status& status, OpenAiApi api, bool max_completion_tokens) {
  OpenAiError error;
  error.message = std::string(status.message());
  const size_t colon = error.message.find(':');
  const std::string field = error.message.substr(0, colon == std::string::npos ? 0 : colon);
  const bool names_field = !field.empty() && field.find(' ') == std::string::npos;
  if (status.code() == absl::StatusCode::kInvalidArgument && names_field) {
    error.param = OpenAiParam(field, api, max_completion_tokens);  // and the message names it as this API does
    error.message = absl::StrCat(error.param, error.message.substr(colon));
  }
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument: case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange: error.http_status = 400; break;
    case absl::StatusCode::kUnauthenticated: error = {401, error.message, "", "authentication_error"}; break;
    case absl::StatusCode::kNotFound: error.http_status = 404; break;
    case absl::StatusCode::kResourceExhausted: error = {429, error.message, "", "rate_limit_error"}; break;
    case absl::StatusCode::kUnavailable: error = {503, error.message, "", "service_unavailable"}; break;
    case absl::StatusCode::kDeadlineExceeded: error = {504, error.message, "", "timeout"}; break;
    case absl::StatusCode::kCancelled: error = {499, error.message, "", "cancelled"}; break;
    default: error = {500, error.message, "", "server_error"};
  }
  return error;
}

json ErrorBody(const OpenAiError& error) {
  json body = {{"message", error.message}, {"type", error.type}, {"param", nullptr}, {"code", nullptr}};
  if (!error.param.empty()) body["param"] = error.param;
  return json{{"error", body}};
}

}  // namespace mf::server
