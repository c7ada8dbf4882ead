#include "server/service.h"

#include <algorithm>
#include <deque>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/listener.h"
#include "server/request_conversion.h"
#include "server/wire.h"

namespace mf::server {
namespace {

namespace pb = moduleformer::v1;

// Finishes a call and counts it by method and status.
template <typename Reactor>
void FinishCounted(Reactor* reactor, ServerMetrics* metrics, const char* rpc, const grpc::Status& status) {
  if (metrics != nullptr) metrics->CountRequest(rpc, status.error_code());
  reactor->Finish(status);
}

// A generation call's line in the request log, if there is one, and its finish.
class CallLog {
 public:
  CallLog(RequestLog* log, const char* rpc, grpc::CallbackServerContext* context) : log_(log), rpc_(rpc) {
    if (log_ == nullptr) return;
    record_.rpc = rpc;
    record_.peer = ClientAddress(context->peer());
  }
  void TakeRequest(const pb::GenerateRequest& request) {
    if (log_ != nullptr) record_.stats_tag = request.stats_tag();
  }
  // Engine thread, before the call finishes.
  void TakeFinal(const GenerationUpdate& final_update) {
    if (log_ != nullptr) record_.TakeFinal(final_update);
  }
  template <typename Reactor>
  void Finish(Reactor* reactor, ServerMetrics* metrics, const grpc::Status& status) {
    if (log_ != nullptr) {
      record_.code = StatusCodeName(static_cast<int>(status.error_code()));
      record_.error = status.error_message();
      log_->Write(RequestLine(record_));
    }
    FinishCounted(reactor, metrics, rpc_, status);
  }

 private:
  RequestLog* log_;
  const char* rpc_;
  CallRecord record_;
};

absl::Time DeadlineOf(const grpc::CallbackServerContext* context) {
  const auto deadline = context->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(deadline);
}

absl::StatusOr<uint64_t> SubmitRequest(Engine& engine, grpc::CallbackServerContext* context,
                                       const pb::GenerateRequest& request, UpdateCallback on_update) {
  absl::StatusOr<GenerationRequest> converted = ToGenerationRequest(request, engine.tokenizer(), engine.model_config());
  if (!converted.ok()) return converted.status();
  converted->deadline = DeadlineOf(context);
  return engine.Submit(*std::move(converted), std::move(on_update));
}

// The request's engine id, guarded: a reactor submits while holding the lock, so an
// update cannot finish (and delete) a half-built reactor, and cancellation always
// sees the stored id.
class GuardedRequest {
 public:
  // Parses an admitted call's request (its stats tag goes to `call_log`) and submits it.
  absl::Status ParseAndSubmit(Engine& engine, grpc::CallbackServerContext* context, absl::Status admitted,
                              const grpc::ByteBuffer& raw_request, CallLog& call_log, UpdateCallback on_update) {
    absl::MutexLock lock(&mutex_);
    pb::GenerateRequest request;
    if (admitted.ok()) admitted = ParseRequest(raw_request, &request);
    call_log.TakeRequest(request);
    if (!admitted.ok()) return admitted;
    absl::StatusOr<uint64_t> id = SubmitRequest(engine, context, request, std::move(on_update));
    if (id.ok()) id_ = *id;
    return id.status();
  }
  void Cancel(Engine& engine) {
    absl::MutexLock lock(&mutex_);
    engine.Cancel(id_);
  }
  void Pause(Engine& engine, bool pause) {
    absl::MutexLock lock(&mutex_);
    if (pause) {
      engine.Pause(id_);
    } else {
      engine.Resume(id_);
    }
  }
  absl::Mutex& mutex() { return mutex_; }

 private:
  absl::Mutex mutex_;
  uint64_t id_ ABSL_GUARDED_BY(mutex_) = 0;
};

// Unary Generate: accumulates the updates into the response, finishes on the last.
class GenerateReactor : public grpc::ServerUnaryReactor {
 public:
  GenerateReactor(Engine& engine, ServerMetrics* metrics, RequestLog* log, grpc::CallbackServerContext* context,
                  absl::Status authorized, const grpc::ByteBuffer& raw_request, grpc::ByteBuffer* raw_response)
      : engine_(engine), metrics_(metrics), raw_response_(raw_response), call_log_(log, "Generate", context) {
    const absl::Status submitted =
        request_.ParseAndSubmit(engine, context, std::move(authorized), raw_request, call_log_,
                                [this](GenerationUpdate&& update) { OnUpdate(std::move(update)); });
    if (!submitted.ok()) call_log_.Finish(this, metrics_, ToGrpcStatus(submitted));
  }

  void OnCancel() override { request_.Cancel(engine_); }
  void OnDone() override { delete this; }

 private:
  // Engine thread. The reactor lives until Finish, which only the final update calls.
  void OnUpdate(GenerationUpdate&& update) {
    {
      absl::MutexLock lock(&request_.mutex());  // waits for the constructor to finish
      AppendUpdate(update, &response_);
      if (!update.finished) return;
      call_log_.TakeFinal(update);
      *raw_response_ = Serialize(response_);
    }
    call_log_.Finish(this, metrics_, ToGrpcStatus(update.status));
  }

  Engine& engine_;
  ServerMetrics* metrics_;
  pb::GenerateResponse response_;
  grpc::ByteBuffer* raw_response_;
  CallLog call_log_;
  GuardedRequest request_;
};

// Server streaming: one message per engine update, written one at a time. Updates
// that arrive during a write queue up; the final message is followed by Finish. A client
// that stops reading fills the queue: at kPauseAtUnsent messages the request is paused
// (the engine generates nothing more for it) and resumed once the queue is down to
// kResumeAtUnsent, so an idle client holds a bounded buffer, never a whole generation.
class StreamReactor : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
  static constexpr size_t kPauseAtUnsent = 32;
  static constexpr size_t kResumeAtUnsent = 8;

 public:
  StreamReactor(Engine& engine, ServerMetrics* metrics, RequestLog* log, grpc::CallbackServerContext* context,
                absl::Status authorized, const grpc::ByteBuffer& raw_request)
      : engine_(engine), metrics_(metrics), call_log_(log, "Stream", context) {
    const absl::Status submitted =
        request_.ParseAndSubmit(engine, context, std::move(authorized), raw_request, call_log_,
                                [this](GenerationUpdate&& update) { OnUpdate(std::move(update)); });
    if (!submitted.ok()) call_log_.Finish(this, metrics_, ToGrpcStatus(submitted));
  }

  void OnWriteDone(bool ok) override {
    bool resume = false;
    {
      absl::MutexLock lock(&mutex_);
      writing_ = false;
      client_gone_ |= !ok;
      Account(-static_cast<double>(current_.Length()));
      if (paused_ && pending_.size() <= kResumeAtUnsent) resume = true;
      paused_ = paused_ && !resume;
    }
    if (!ok) request_.Cancel(engine_);  // the client is gone; the engine's final update ends the call
    if (resume && ok) request_.Pause(engine_, false);
    Pump();
  }
  void OnCancel() override { request_.Cancel(engine_); }
  void OnDone() override { delete this; }

 private:
  void OnUpdate(GenerationUpdate&& update) {
    { absl::MutexLock constructed(&request_.mutex()); }  // waits for the constructor to finish
    bool pause = false;
    {
      absl::MutexLock lock(&mutex_);
      pending_.push_back(Serialize(ToStreamResponse(update)));
      Account(static_cast<double>(pending_.back().Length()));
      if (update.finished) {
        final_received_ = true;
        final_status_ = ToGrpcStatus(update.status);
        call_log_.TakeFinal(update);
      } else if (!paused_ && pending_.size() >= kPauseAtUnsent) {
        pause = paused_ = true;
      }
    }
    if (pause) request_.Pause(engine_, true);
    Pump();
  }

  // Keeps the buffered-bytes gauge; every byte added is removed once sent or dropped.
  void Account(double bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (metrics_ != nullptr && bytes != 0) metrics_->AddStreamBufferedBytes(bytes);
  }

  // Starts the next write, or Finish after the last one. gRPC calls happen outside
  // the lock; `writing_` keeps a second thread from starting a concurrent write.
  void Pump() {
    enum class Action { kNone, kWrite, kFinish } action = Action::kNone;
    {
      absl::MutexLock lock(&mutex_);
      if (writing_ || finish_called_) return;
      if (client_gone_) {
        for (const grpc::ByteBuffer& dropped : pending_) Account(-static_cast<double>(dropped.Length()));
        pending_.clear();
      }
      if (!pending_.empty()) {
        current_ = std::move(pending_.front());
        pending_.pop_front();
        writing_ = true;
        action = Action::kWrite;
      } else if (final_received_) {
        finish_called_ = true;
        action = Action::kFinish;
      }
    }
    if (action == Action::kWrite) StartWrite(&current_);
    if (action == Action::kFinish) call_log_.Finish(this, metrics_, final_status_);
  }

  Engine& engine_;
  ServerMetrics* metrics_;
  CallLog call_log_;  // its final record is written under mutex_, read after
  GuardedRequest request_;
  absl::Mutex mutex_;
  std::deque<grpc::ByteBuffer> pending_ ABSL_GUARDED_BY(mutex_);
  grpc::ByteBuffer current_;  // the message being written
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;
  bool final_received_ ABSL_GUARDED_BY(mutex_) = false;
  bool finish_called_ ABSL_GUARDED_BY(mutex_) = false;
  bool client_gone_ ABSL_GUARDED_BY(mutex_) = false;
  bool paused_ ABSL_GUARDED_BY(mutex_) = false;
  grpc::Status final_status_;
};

// A unary call answered at once: parse, `handle`, serialize, finish counted.
template <typename Request, typename Response, typename Handle>
grpc::ServerUnaryReactor* ServeUnary(grpc::CallbackServerContext* context, const absl::Status& authorized,
                                     const grpc::ByteBuffer& raw_request, grpc::ByteBuffer* raw_response,
                                     ServerMetrics* metrics, const char* rpc, Handle handle) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  Request request;
  Response response;
  grpc::Status status = ToGrpcStatus(authorized.ok() ? ParseRequest(raw_request, &request) : authorized);
  if (status.ok()) status = handle(request, &response);
  if (status.ok()) *raw_response = Serialize(response);
  FinishCounted(reactor, metrics, rpc, status);
  return reactor;
}

}  // namespace

grpc::ServerUnaryReactor* ModuleFormerService::Generate(grpc::CallbackServerContext* context,
                                                        const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  return new GenerateReactor(engine_, metrics_, request_log_, context, Authorize(context), *request, response);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* ModuleFormerService::Stream(grpc::CallbackServerContext* context,
                                                                        const grpc::ByteBuffer* request) {
  return new StreamReactor(engine_, metrics_, request_log_, context, Authorize(context), *request);
}

grpc::ServerUnaryReactor* ModuleFormerService::Tokenize(grpc::CallbackServerContext* context,
                                                        const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  return ServeUnary<pb::TokenizeRequest, pb::TokenizeResponse>(
      context, Authorize(context), *request, response, metrics_, "Tokenize",
      [this](const pb::TokenizeRequest& parsed, pb::TokenizeResponse* out) { return TokenizeParsed(parsed, out); });
}

grpc::ServerUnaryReactor* ModuleFormerService::ModelInfo(grpc::CallbackServerContext* context,
                                                         const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  return ServeUnary<pb::ModelInfoRequest, pb::ModelInfoResponse>(
      context, Authorize(context), *request, response, metrics_, "ModelInfo",
      [this](const pb::ModelInfoRequest&, pb::ModelInfoResponse* out) { return ModelInfoParsed(out); });
}

grpc::ServerUnaryReactor* ModuleFormerService::GetLoad(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  return ServeUnary<pb::LoadRequest, pb::LoadResponse>(
      context, Authorize(context), *request, response, metrics_, "GetLoad",
      [this](const pb::LoadRequest&, pb::LoadResponse* out) { return GetLoadParsed(out); });
}

grpc::ServerUnaryReactor* ModuleFormerService::ExpertStats(grpc::CallbackServerContext* context,
                                                           const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  return ServeUnary<pb::ExpertStatsRequest, pb::ExpertStatsResponse>(
      context, Authorize(context), *request, response, metrics_, "ExpertStats",
      [this](const pb::ExpertStatsRequest& parsed, pb::ExpertStatsResponse* out) {
        return ExpertStatsParsed(parsed, out);
      });
}

absl::Status ModuleFormerService::Authorize(const grpc::CallbackServerContext* context) const {
  if (api_keys_ == nullptr) return absl::OkStatus();
  const auto& metadata = context->client_metadata();
  const auto header = metadata.find("authorization");
  if (header != metadata.end() && api_keys_->Allows(std::string_view(header->second.data(), header->second.size()))) {
    return absl::OkStatus();
  }
  return absl::UnauthenticatedError("authorization: this server needs 'Bearer <api key>' in the call's metadata");
}

grpc::Status ModuleFormerService::TokenizeParsed(const pb::TokenizeRequest& request, pb::TokenizeResponse* response) {
  if (engine_.tokenizer() == nullptr) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "this model has no tokenizer");
  }
  const std::vector<int32_t> ids = engine_.tokenizer()->Encode(request.text(), {request.allow_special_tokens()});
  response->mutable_token_ids()->Add(ids.begin(), ids.end());
  return grpc::Status::OK;
}

grpc::Status ModuleFormerService::ModelInfoParsed(pb::ModelInfoResponse* response) {
  const ModelConfig& config = engine_.model_config();
  response->set_model_name(model_name_);
  response->set_backend(backend_name_);
  response->set_vocab_size(static_cast<uint32_t>(config.vocab_size));
  response->set_n_layer(static_cast<uint32_t>(config.n_layer));
  response->set_n_embd(static_cast<uint32_t>(config.n_embd));
  response->set_n_head(static_cast<uint32_t>(config.n_head));
  response->set_att_hidden(static_cast<uint32_t>(config.att_hidden));
  response->set_ffd_hidden(static_cast<uint32_t>(config.ffd_hidden));
  response->set_k_att(static_cast<uint32_t>(config.k_att));
  response->set_k_mlp(static_cast<uint32_t>(config.k_mlp));
  for (int layer = 0; layer < config.n_layer; ++layer) {
    pb::LayerExperts* experts = response->add_layers();
    experts->set_attention_experts(static_cast<uint32_t>(engine_.model().num_experts(layer, Mixture::kAttention)));
    experts->set_mlp_experts(static_cast<uint32_t>(engine_.model().num_experts(layer, Mixture::kMlp)));
  }
  response->set_eos_token_id(static_cast<uint32_t>(config.eos_token_id));
  response->set_has_tokenizer(engine_.tokenizer() != nullptr);
  response->set_max_context_tokens(static_cast<uint32_t>(engine_.max_sequence_tokens()));
  const BlockAllocator& allocator = engine_.model().kv_cache().allocator();
  response->set_kv_block_size(static_cast<uint32_t>(allocator.block_size()));
  response->set_kv_blocks(static_cast<uint32_t>(allocator.num_blocks()));
  response->set_max_batch_tokens(static_cast<uint32_t>(engine_.config().scheduler.max_batch_tokens));
  return grpc::Status::OK;
}

grpc::Status ModuleFormerService::GetLoadParsed(pb::LoadResponse* response) {
  const EngineStats stats = engine_.stats();
  response->set_running_requests(static_cast<uint32_t>(stats.running));
  response->set_waiting_requests(static_cast<uint32_t>(stats.waiting));
  response->set_kv_blocks_used(static_cast<uint32_t>(stats.kv_blocks_used));
  response->set_kv_blocks_total(static_cast<uint32_t>(stats.kv_blocks_total));
  response->set_prefix_cache_hit_tokens(static_cast<uint64_t>(stats.prefix_cache_hit_tokens));
  response->set_preemptions(static_cast<uint64_t>(stats.preemptions));
  response->set_steps(static_cast<uint64_t>(stats.steps));
  response->set_draining(stats.draining);
  response->set_paused_requests(static_cast<uint32_t>(stats.paused));
  return grpc::Status::OK;
}

grpc::Status ModuleFormerService::ExpertStatsParsed(const pb::ExpertStatsRequest& request,
                                                    pb::ExpertStatsResponse* response) {
  const ExpertStats::Window window = engine_.expert_stats().SinceReset(request.stats_tag(), request.reset());
  response->set_tokens(window.tokens);
  response->set_seconds_since_reset(absl::ToDoubleSeconds(window.since_reset));
  response->set_stats_tag(request.stats_tag());
  for (size_t layer = 0; layer < window.counts.size(); ++layer) {
    pb::LayerExpertStats* stats = response->add_layers();
    stats->set_layer(static_cast<uint32_t>(layer));
    pb::MixtureExpertStats* mixtures[2] = {stats->mutable_attention(), stats->mutable_mlp()};
    for (int mixture = 0; mixture < 2; ++mixture) {
      const std::vector<uint64_t>& counts = window.counts[layer][mixture];
      const uint64_t peak = counts.empty() ? 0 : *std::max_element(counts.begin(), counts.end());
      for (uint64_t count : counts) {
        mixtures[mixture]->add_counts(count);
        mixtures[mixture]->add_frequency(peak > 0 ? static_cast<double>(count) / static_cast<double>(peak) : 0.0);
      }
    }
  }
  return grpc::Status::OK;
}

}  // namespace mf::server
