// One JSON line per finished Generate or Stream call (`--request-log`): who asked, what
// came back, and how long each part took. Calls hand lines to a writer thread through a
// bounded queue, so a slow log destination never blocks a gRPC reactor or the engine;
// lines that find the queue full are dropped and counted in the next line written.
#pragma once

#include <cstdio>
#include <deque>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/sequence.h"

namespace mf::server {

// What the log records of one call.
struct CallRecord {
  std::string rpc;        // "Generate" or "Stream"
  std::string code;       // gRPC status code name
  std::string error;      // the status message when not OK
  std::string peer;
  std::string stats_tag;
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_prompt_tokens = 0;
  FinishReason finish_reason = FinishReason::kNone;
  double queue_seconds = 0;
  double time_to_first_token_seconds = 0;
  double total_seconds = 0;
  // Copies the counts and timings of a request's final update.
  void TakeFinal(const GenerationUpdate& final_update);
};

// "OK", "INVALID_ARGUMENT", ... for a gRPC status code.
const char* StatusCodeName(int code);

// The JSON line for a record, with the time it is written (UTC, RFC 3339).
std::string RequestLine(const CallRecord& record);

class RequestLog {
 public:
  // "stdout", "stderr", or a file path (appended to).
  static absl::StatusOr<std::unique_ptr<RequestLog>> Open(const std::string& target);
  // Takes ownership of `out` when `owned`.
  RequestLog(std::FILE* out, bool owned, size_t capacity = 10000);
  ~RequestLog();  // writes what is queued, then stops
  RequestLog(const RequestLog&) = delete;
  RequestLog& operator=(const RequestLog&) = delete;

  // Never blocks on the destination.
  void Write(std::string line);

 private:
  void WriterLoop();

  std::FILE* out_;
  bool owned_;
  size_t capacity_;
  absl::Mutex mutex_;
  std::deque<std::string> lines_ ABSL_GUARDED_BY(mutex_);
  int64_t dropped_ ABSL_GUARDED_BY(mutex_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread writer_;
};

}  // namespace mf::server
