#include "server/generation_reactors.h"

#include <deque>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/listener.h"
#include "server/request_conversion.h"
#include "server/wire.h"
#include "server/write_dispatcher.h"

namespace mf::server {
namespace {

namespace pb = moduleformer::v1;

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
  // gRPC is done with the call; a pump queued on (or running on) the dispatcher deletes
  // the reactor when it ends.
  void OnDone() override {
    bool last = false;
    {
      absl::MutexLock lock(&mutex_);
      done_ = true;
      last = !pump_queued_ && !pump_running_;
    }
    if (last) delete this;
  }

 private:
  // Engine thread: queues the message, and the stream on the write dispatcher when no
  // write is under way (one that is picks the message up when it completes).
  void OnUpdate(GenerationUpdate&& update) {
    { absl::MutexLock constructed(&request_.mutex()); }  // waits for the constructor to finish
    bool pause = false, post = false;
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
      post = !writing_ && !pump_queued_;
      pump_queued_ |= post;
    }
    if (pause) request_.Pause(engine_, true);
    if (post) WriteDispatcher().Post([this] { PumpQueued(); });
  }

  // Dispatcher thread. The reactor outlives this call: OnDone leaves its deletion here
  // while a pump is queued.
  void PumpQueued() {
    {
      absl::MutexLock lock(&mutex_);
      pump_queued_ = false;
      pump_running_ = true;
    }
    Pump();
    bool last = false;
    {
      absl::MutexLock lock(&mutex_);
      pump_running_ = false;
      last = done_ && !pump_queued_;
    }
    if (last) delete this;
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
  bool pump_queued_ ABSL_GUARDED_BY(mutex_) = false;   // a PumpQueued waits on the dispatcher
  bool pump_running_ ABSL_GUARDED_BY(mutex_) = false;  // a PumpQueued is in Pump
  bool done_ ABSL_GUARDED_BY(mutex_) = false;          // OnDone was called
  grpc::Status final_status_;
};

}  // namespace

grpc::ServerUnaryReactor* StartGenerate(Engine& engine, ServerMetrics* metrics, RequestLog* log,
                                        grpc::CallbackServerContext* context, absl::Status admitted,
                                        const grpc::ByteBuffer& raw_request, grpc::ByteBuffer* raw_response) {
  return new GenerateReactor(engine, metrics, log, context, std::move(admitted), raw_request, raw_response);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* StartStream(Engine& engine, ServerMetrics* metrics, RequestLog* log,
                                                        grpc::CallbackServerContext* context, absl::Status admitted,
                                                        const grpc::ByteBuffer& raw_request) {
  return new StreamReactor(engine, metrics, log, context, std::move(admitted), raw_request);
}

}  // namespace mf::server
