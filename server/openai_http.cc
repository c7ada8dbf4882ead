#include "server/openai_http.h"

#include <algorithm>
#include <deque>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "server/request_conversion.h"

namespace mf::server {
namespace {

namespace pb = moduleformer::v1;
using nlohmann::json;

// An OpenAI-style error body; `param` is the request field at fault, if any.
void SendError(httplib::Response& response, int http_status, const std::string& message, const std::string& param,
               const char* type = "invalid_request_error") {
  json error = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) error["param"] = param;
  response.status = http_status;
  response.set_content(json{{"error", error}}.dump(), "application/json");
}

int HttpStatusOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument: case absl::StatusCode::kFailedPrecondition: return 400;
    case absl::StatusCode::kUnauthenticated: return 401;
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kResourceExhausted: return 429;
    case absl::StatusCode::kUnavailable: return 503;
    case absl::StatusCode::kDeadlineExceeded: return 504;
    default: return 500;
  }
}

// The OpenAI name of a GenerateRequest field named in a validation error.
std::string OpenAiParam(const std::string& message) {
  const std::string field = message.substr(0, message.find(':'));
  if (field == "max_new_tokens") return "max_tokens";
  if (field == "text" || field == "token_ids" || field == "prompt") return "prompt";
  return field;
}

// A request field read with its type checked; absent fields keep the default.
class Fields {
 public:
  explicit Fields(const json& body) : body_(body) {}
  const std::string& error_param() const { return error_param_; }
  const std::string& error() const { return error_; }
  bool ok() const { return error_.empty(); }

  bool Has(const char* name) const { return body_.contains(name) && !body_[name].is_null(); }
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
    if (value < min || value > max) return Fail(name, absl::StrCat("must be in [", min, ", ", max, "]"));
    set(value);
  }
  void Fail(const char* name, const std::string& problem) {
    if (!ok()) return;
    error_param_ = name;
    error_ = absl::StrCat(name, ": ", problem);
  }

 private:
  const json& body_;
  std::string error_param_, error_;
};

// Translates an OpenAI completion request into the gRPC API's request, whose validation
// then applies unchanged.
bool ToGenerateRequest(const json& body, pb::GenerateRequest* request, Fields& fields) {
  if (!fields.Has("prompt")) {
    fields.Fail("prompt", "is required");
  } else if (const json& prompt = body["prompt"]; prompt.is_string()) {
    request->set_text(prompt.get<std::string>());
  } else if (prompt.is_array() && prompt.size() == 1 && prompt[0].is_string()) {
    request->set_text(prompt[0].get<std::string>());
  } else if (prompt.is_array() && !prompt.empty() && prompt[0].is_number_integer()) {
    for (const json& id : prompt) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > UINT32_MAX) {
        fields.Fail("prompt", "token ids must be non-negative integers");
        break;
      }
      request->mutable_token_ids()->add_ids(static_cast<uint32_t>(id.get<int64_t>()));
    }
  } else {
    fields.Fail("prompt", "must be a string, or an array of token ids (one prompt per request)");
  }
  request->set_max_new_tokens(16);
  fields.Integer("max_tokens", 1, 1 << 24, [&](int64_t v) { request->set_max_new_tokens(static_cast<uint32_t>(v)); });
  fields.Number("temperature", [&](double v) { request->set_temperature(static_cast<float>(v)); });
  fields.Number("top_p", [&](double v) { request->set_top_p(static_cast<float>(v)); });
  fields.Integer("top_k", -1, 1 << 30, [&](int64_t v) { request->set_top_k(v < 0 ? 0 : static_cast<uint32_t>(v)); });
  fields.Number("min_p", [&](double v) { request->set_min_p(static_cast<float>(v)); });
  fields.Number("presence_penalty", [&](double v) { request->set_presence_penalty(static_cast<float>(v)); });
  fields.Number("frequency_penalty", [&](double v) { request->set_frequency_penalty(static_cast<float>(v)); });
  fields.Number("repetition_penalty", [&](double v) { request->set_repetition_penalty(static_cast<float>(v)); });
  fields.Integer("seed", INT64_MIN, INT64_MAX, [&](int64_t v) { request->set_seed(static_cast<uint64_t>(v)); });
  fields.Integer("n", 1, 1, [](int64_t) {});
  fields.Integer("priority", INT32_MIN, INT32_MAX, [&](int64_t v) { request->set_priority(static_cast<int32_t>(v)); });
  if (fields.Has("logprobs") && !(body["logprobs"].is_number_integer() && body["logprobs"].get<int64_t>() == 0)) {
    fields.Fail("logprobs", "is not supported over HTTP yet (use the gRPC API)");
  }
  if (fields.Has("echo") && body["echo"] != false) fields.Fail("echo", "is not supported");
  if (fields.Has("ignore_eos")) request->set_ignore_eos(body["ignore_eos"] == true);
  if (fields.Has("stop")) {
    const json& stop = body["stop"];
    if (stop.is_string()) {
      request->add_stop(stop.get<std::string>());
    } else if (stop.is_array() && std::all_of(stop.begin(), stop.end(), [](const json& s) { return s.is_string(); })) {
      for (const json& s : stop) request->add_stop(s.get<std::string>());
    } else {
      fields.Fail("stop", "must be a string or an array of strings");
    }
  }
  return fields.ok();
}

const char* OpenAiFinishReason(FinishReason reason) {
  return reason == FinishReason::kLength ? "length" : "stop";  // EOS, stop strings and stop ids are all "stop"
}

// Updates of one request, handed from the engine thread to the HTTP thread serving it.
struct UpdateQueue {
  absl::Mutex mutex;
  std::deque<GenerationUpdate> updates ABSL_GUARDED_BY(mutex);

  UpdateCallback Callback(std::shared_ptr<UpdateQueue> self) {
    return [self](GenerationUpdate&& update) {
      absl::MutexLock lock(&self->mutex);
      self->updates.push_back(std::move(update));
    };
  }
  // The next update, or nothing after `timeout`.
  std::optional<GenerationUpdate> Next(absl::Duration timeout) {
    absl::MutexLock lock(&mutex);
    auto has_update = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex) { return !updates.empty(); };
    if (!mutex.AwaitWithTimeout(absl::Condition(&has_update), timeout)) return std::nullopt;
    GenerationUpdate update = std::move(updates.front());
    updates.pop_front();
    return update;
  }
};

json Usage(const GenerationUpdate& final_update) {
  return {{"prompt_tokens", final_update.prompt_tokens},
          {"completion_tokens", final_update.completion_tokens},
          {"total_tokens", final_update.prompt_tokens + final_update.completion_tokens}};
}

}  // namespace

OpenAiHttpServer::OpenAiHttpServer(Engine& engine, OpenAiHttpOptions options)
    : engine_(engine), options_(std::move(options)) {
  httplib::Server& http = endpoint_.http();
  http.new_task_queue = [threads = options_.threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  http.set_keep_alive_timeout(5);
  http.set_read_timeout(30, 0);
  http.set_payload_max_length(16 << 20);
  http.Post("/v1/completions", [this](const httplib::Request& request, httplib::Response& response) {
    if (Authorized(request, response)) Completions(request, response);
  });
  http.Get("/v1/models", [this](const httplib::Request& request, httplib::Response& response) {
    if (Authorized(request, response)) Models(response);
  });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& response) {
    const bool draining = engine_.stats().draining;
    response.status = draining ? 503 : 200;
    response.set_content(draining ? "draining\n" : "ok\n", "text/plain; charset=utf-8");
  });
  http.set_error_handler([](const httplib::Request& request, httplib::Response& response) {
    if (response.status == 404 && response.body.empty()) {
      SendError(response, 404, absl::StrCat("no route for ", request.method, " ", request.path), "");
    }
  });
}

absl::Status OpenAiHttpServer::Start(const std::string& host, int port) {
  return endpoint_.Start(host, port, "--http-port");
}

bool OpenAiHttpServer::Authorized(const httplib::Request& request, httplib::Response& response) const {
  if (options_.api_keys == nullptr || options_.api_keys->Allows(request.get_header_value("Authorization"))) return true;
  SendError(response, 401, "authorization: this server needs 'Bearer <api key>'", "", "authentication_error");
  return false;
}

void OpenAiHttpServer::Models(httplib::Response& response) const {
  const json model = {{"id", options_.served_model_name}, {"object", "model"}, {"created", 0},
                      {"owned_by", "moduleformer-serve"}, {"max_model_len", engine_.max_sequence_tokens()}};
  response.set_content(json{{"object", "list"}, {"data", json::array({model})}}.dump(), "application/json");
}

void OpenAiHttpServer::Completions(const httplib::Request& http_request, httplib::Response& response) {
  auto count = [this](absl::StatusCode code) {
    if (options_.metrics != nullptr) options_.metrics->CountRequest("http.completions", static_cast<grpc::StatusCode>(code));
  };
  const json body = json::parse(http_request.body, nullptr, /*allow_exceptions=*/false);
  if (!body.is_object()) {
    count(absl::StatusCode::kInvalidArgument);
    return SendError(response, 400, "body: not a JSON object", "");
  }
  if (body.contains("model") && !body["model"].is_null() && body["model"] != options_.served_model_name) {
    count(absl::StatusCode::kNotFound);
    const std::string asked = body["model"].is_string() ? body["model"].get<std::string>() : body["model"].dump();
    return SendError(response, 404, absl::StrCat("model: '", asked, "' is not served here (this server serves '",
                                                 options_.served_model_name, "')"), "model");
  }
  pb::GenerateRequest grpc_request;
  Fields fields(body);
  absl::StatusOr<GenerationRequest> request = absl::InvalidArgumentError("");
  if (ToGenerateRequest(body, &grpc_request, fields)) {
    request = ToGenerationRequest(grpc_request, engine_.tokenizer(), engine_.model_config());
  } else {
    request = absl::InvalidArgumentError(fields.error());
  }
  auto queue = std::make_shared<UpdateQueue>();
  absl::StatusOr<uint64_t> id = request.ok() ? engine_.Submit(*std::move(request), queue->Callback(queue))
                                             : absl::StatusOr<uint64_t>(request.status());
  if (!id.ok()) {
    count(id.status().code());
    std::string message(id.status().message());
    std::string param;
    if (id.status().code() == absl::StatusCode::kInvalidArgument && message.find(':') != std::string::npos) {
      param = OpenAiParam(message);  // and the message names the field as this API calls it
      message = absl::StrCat(param, message.substr(message.find(':')));
    }
    return SendError(response, HttpStatusOf(id.status().code()), message, param);
  }
  const std::string completion_id = absl::StrCat("cmpl-", *id);
  const int64_t created = absl::ToUnixSeconds(absl::Now());
  // Captured by value: a streamed response's chunks are written after this handler returns.
  auto chunk = [completion_id, created, name = options_.served_model_name](const std::string& text,
                                                                           const char* finish_reason) {
    json choice = {{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
    if (finish_reason != nullptr) choice["finish_reason"] = finish_reason;
    return json{{"id", completion_id}, {"object", "text_completion"}, {"created", created}, {"model", name},
                {"choices", json::array({choice})}};
  };
  if (body.value("stream", false) != true) {
    std::string text;
    while (true) {
      std::optional<GenerationUpdate> update = queue->Next(absl::InfiniteDuration());
      text += update->text;
      if (!update->finished) continue;
      count(update->status.code());
      if (!update->status.ok()) {
        return SendError(response, HttpStatusOf(update->status.code()), std::string(update->status.message()), "");
      }
      json result = chunk(text, OpenAiFinishReason(update->finish_reason));
      result["usage"] = Usage(*update);
      return response.set_content(result.dump(), "application/json");
    }
  }
  // Server-sent events: one chunk per update, a usage chunk when asked, then [DONE]. A
  // client that goes away cancels its request (a write fails, or the socket closes).
  const bool include_usage = body.contains("stream_options") && body["stream_options"].is_object() &&
                             body["stream_options"].value("include_usage", false);
  const uint64_t request_id = *id;
  response.set_header("Cache-Control", "no-cache");
  response.set_chunked_content_provider(
      "text/event-stream",
      [this, queue, chunk, include_usage, request_id, count](size_t, httplib::DataSink& sink) {
        auto send = [&sink](const json& event) {
          const std::string line = absl::StrCat("data: ", event.dump(), "\n\n");
          return sink.write(line.data(), line.size());
        };
        std::optional<GenerationUpdate> update;
        while (!(update = queue->Next(absl::Milliseconds(100)))) {
          if (!sink.is_writable()) {
            engine_.Cancel(request_id);
            return false;
          }
        }
        if (!update->finished) {
          if (update->text.empty() || send(chunk(update->text, nullptr))) return true;
          engine_.Cancel(request_id);
          return false;
        }
        count(update->status.code());
        if (!update->status.ok()) {
          send(json{{"error", {{"message", std::string(update->status.message())}, {"type", "server_error"}}}});
        } else {
          send(chunk(update->text, OpenAiFinishReason(update->finish_reason)));
          if (include_usage) {
            json usage = chunk("", nullptr);
            usage["choices"] = json::array();
            usage["usage"] = Usage(*update);
            send(usage);
          }
        }
        const std::string done = "data: [DONE]\n\n";
        sink.write(done.data(), done.size());
        sink.done();
        return true;
      },
      [this, request_id, queue](bool success) {
        if (!success) engine_.Cancel(request_id);  // the connection ended before the last chunk
      });
}

}  // namespace mf::server
