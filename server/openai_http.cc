#include "server/openai_http.h"

#include "absl/strings/str_cat.h"
#include "server/http_connection.h"
#include "server/openai_call.h"

namespace mf::server {
namespace {

using nlohmann::json;

constexpr absl::Duration kPollInterval = absl::Milliseconds(100);
// Deeper JSON is refused before parsing: copying, converting or printing a JSON value
// recurses, and a body of 16 MB could nest a million levels and overflow a thread's stack.
constexpr int kMaxJsonDepth = 64;

// Whether arrays and objects in `text` nest deeper than `limit` (strings skipped).
bool NestsDeeperThan(std::string_view text, int limit) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

void SendError(httplib::Response& response, const OpenAiError& error) {
  response.status = error.http_status;
  response.set_content(ErrorBody(error).dump(), "application/json");
}

bool WriteEvent(httplib::DataSink& sink, const std::string& data) {
  const std::string event = absl::StrCat("data: ", data, "\n\n");
  return sink.write(event.data(), event.size());
}

// A streamed call, shared by the calls of httplib's content provider.
struct Stream {
  std::shared_ptr<OpenAiCallState> state;
  OpenAiResponder responder;
  OpenAiCall call;
  bool started = false;
  int remaining = 0;
  absl::Status failure;
  std::vector<GenerationUpdate> finals;
};

}  // namespace

OpenAiHttpServer::OpenAiHttpServer(Engine& engine, OpenAiHttpOptions options)
    : engine_(engine), options_(std::move(options)), endpoint_(options_.tls) {
  context_ = {engine.tokenizer(), &engine.model_config(), options_.chat_template, engine.max_sequence_tokens(),
              options_.served_model_name};
  httplib::Server& http = endpoint_.http();
  http.new_task_queue = [threads = options_.threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  http.set_keep_alive_timeout(5);
  http.set_read_timeout(30, 0);
  http.set_payload_max_length(16 << 20);
  http.Post("/v1/completions", [this](const httplib::Request& request, httplib::Response& response) {
    if (Authorized(request, response)) Generate(OpenAiApi::kCompletions, request, response);
  });
  http.Post("/v1/chat/completions", [this](const httplib::Request& request, httplib::Response& response) {
    if (Authorized(request, response)) Generate(OpenAiApi::kChat, request, response);
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
      SendError(response, {404, absl::StrCat("no route for ", request.method, " ", request.path), ""});
    }
  });
}

absl::Status OpenAiHttpServer::Start(const std::string& host, int port) {
  return endpoint_.Start(host, port, "--http-port");
}

bool OpenAiHttpServer::Admit(const std::shared_ptr<OpenAiCallState>& call) {
  absl::MutexLock lock(&calls_mutex_);
  if (refusing_) return false;
  running_calls_.insert(call);
  return true;
}

void OpenAiHttpServer::Release(const std::shared_ptr<OpenAiCallState>& call) {
  absl::MutexLock lock(&calls_mutex_);
  running_calls_.erase(call);
}

void OpenAiHttpServer::Drain(absl::Time deadline) {
  {
    absl::MutexLock lock(&calls_mutex_);
    refusing_ = true;
    auto all_ended = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(calls_mutex_) { return running_calls_.empty(); };
    if (!calls_mutex_.AwaitWithDeadline(absl::Condition(&all_ended), deadline)) {
      for (const auto& call : running_calls_) call->CancelAll();  // their handlers end with the final updates
    }
  }
  endpoint_.Stop();
}

bool OpenAiHttpServer::Authorized(const httplib::Request& request, httplib::Response& response) const {
  if (options_.api_keys == nullptr || options_.api_keys->Allows(request.get_header_value("Authorization"))) return true;
  SendError(response, {401, "authorization: this server needs 'Bearer <api key>'", "", "authentication_error"});
  return false;
}

void OpenAiHttpServer::Models(httplib::Response& response) const {
  const json model = {{"id", options_.served_model_name}, {"object", "model"}, {"created", 0},
                      {"owned_by", "moduleformer-serve"}, {"max_model_len", engine_.max_sequence_tokens()}};
  response.set_content(json{{"object", "list"}, {"data", json::array({model})}}.dump(), "application/json");
}

void OpenAiHttpServer::Generate(OpenAiApi api, const httplib::Request& http_request, httplib::Response& response) {
  const char* rpc = api == OpenAiApi::kChat ? "http.chat.completions" : "http.completions";
  auto state = std::make_shared<OpenAiCallState>(engine_, rpc, absl::StrCat(http_request.remote_addr, ":", http_request.remote_port),
                                                 options_.metrics, options_.request_log);
  auto refuse = [&](const OpenAiError& error, absl::StatusCode code) {
    state->Finish(code, error.message, {}, "");
    SendError(response, error);
  };
  if (NestsDeeperThan(http_request.body, kMaxJsonDepth)) {
    return refuse({400, absl::StrCat("body: JSON nested deeper than ", kMaxJsonDepth, " levels"), ""},
                  absl::StatusCode::kInvalidArgument);
  }
  const nlohmann::ordered_json body = nlohmann::ordered_json::parse(http_request.body, nullptr, /*allow_exceptions=*/false);
  if (!body.is_object()) return refuse({400, "body: not a JSON object", ""}, absl::StatusCode::kInvalidArgument);
  if (api == OpenAiApi::kChat && options_.chat_template == nullptr) {
    return refuse({400, "messages: this model has no tokenizer, so no chat template", "messages"},
                  absl::StatusCode::kInvalidArgument);
  }
  OpenAiCall call;
  OpenAiError error;
  if (!ParseOpenAiRequest(api, body, context_, &call, &error)) {
    return refuse(error, error.http_status == 404 ? absl::StatusCode::kNotFound : absl::StatusCode::kInvalidArgument);
  }
  // Admitted before submitting, under the drain's lock: a drain either refuses this call
  // or waits for it.
  if (!Admit(state)) {
    return refuse({503, "this server is draining: retry on another replica", "", "service_unavailable"},
                  absl::StatusCode::kUnavailable);
  }
  if (absl::Status submitted = state->Submit(call.choices); !submitted.ok()) {
    Release(state);
    return refuse(ErrorFromStatus(submitted, api, body.contains("max_completion_tokens")), submitted.code());
  }
  auto stream = std::make_shared<Stream>(Stream{state, OpenAiResponder(call, engine_.tokenizer(), options_.served_model_name,
                                                                        state->first_id()),
                                                call, false, state->num_choices(), absl::OkStatus(), {}});
  // Takes one update into the responder; returns its stream chunks.
  auto take = [](Stream& s, std::pair<int, GenerationUpdate>& next) {
    auto& [choice, update] = next;
    if (update.finished) {
      --s.remaining;
      s.finals.push_back(update);
      if (!update.status.ok() && s.failure.ok()) {
        s.failure = update.status;
        s.state->CancelAll();  // one choice failed: the call has failed
      }
    }
    return s.responder.OnUpdate(choice, update);
  };
  auto finish = [this](Stream& s) {
    const absl::StatusCode code = s.failure.code();
    s.state->Finish(code, std::string(s.failure.message()), s.finals, s.call.stats_tag);
    Release(s.state);
  };

  if (!call.stream) {
    const HttpConnection connection(http_request, endpoint_.port());
    bool client_gone = false;
    absl::Time next_check = absl::Now() + kPollInterval;
    while (stream->remaining > 0) {
      if (std::optional<std::pair<int, GenerationUpdate>> next = state->Next(kPollInterval)) take(*stream, *next);
      if (!client_gone && absl::Now() >= next_check) {
        next_check = absl::Now() + kPollInterval;
        if (connection.PeerClosed()) {
          client_gone = true;  // the engine ends every choice with a cancelled final update
          state->CancelAll();
        }
      }
    }
    finish(*stream);
    if (!stream->failure.ok()) return SendError(response, ErrorFromStatus(stream->failure));
    return response.set_content(stream->responder.Whole().dump(), "application/json");
  }

  // Server-sent events: chunks as updates come, a usage chunk when asked, then [DONE]. A
  // client that goes away (a write fails, or the socket closes) cancels the call.
  response.set_header("Cache-Control", "no-cache");
  response.set_chunked_content_provider(
      "text/event-stream",
      [stream, take, finish](size_t, httplib::DataSink& sink) {
        Stream& s = *stream;
        if (!s.started) {
          s.started = true;
          for (const json& chunk : s.responder.FirstChunks()) {
            if (!WriteEvent(sink, chunk.dump())) return false;
          }
        }
        std::optional<std::pair<int, GenerationUpdate>> next;
        while (!(next = s.state->Next(kPollInterval))) {
          if (!sink.is_writable()) return false;
        }
        for (const json& chunk : take(s, *next)) {
          if (s.failure.ok() && !WriteEvent(sink, chunk.dump())) return false;
        }
        if (s.remaining > 0) return true;
        finish(s);
        if (!s.failure.ok()) {
          WriteEvent(sink, ErrorBody(ErrorFromStatus(s.failure)).dump());
        } else if (s.call.include_usage) {
          WriteEvent(sink, s.responder.UsageChunk().dump());
        }
        WriteEvent(sink, "[DONE]");
        sink.done();
        return true;
      },
      [stream, finish](bool success) {
        if (success) return;
        stream->state->CancelAll();  // the connection ended before the last chunk
        while (stream->remaining > 0) {  // the engine's final updates follow promptly
          if (auto next = stream->state->Next(absl::Seconds(5))) {
            if (next->second.finished) {
              --stream->remaining;
              stream->finals.push_back(next->second);
            }
          } else {
            break;
          }
        }
        if (stream->failure.ok()) stream->failure = absl::CancelledError("the client closed the connection");
        finish(*stream);
      });
}

}  // namespace mf::server
