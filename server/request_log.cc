#include "server/request_log.h"

#include <cerrno>
#include <cstring>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"

namespace mf::server {

void CallRecord::TakeFinal(const GenerationUpdate& final_update) {
  prompt_tokens = final_update.prompt_tokens;
  completion_tokens = final_update.completion_tokens;
  cached_prompt_tokens = final_update.cached_prompt_tokens;
  finish_reason = final_update.finish_reason;
  queue_seconds = final_update.queue_seconds;
  time_to_first_token_seconds = final_update.time_to_first_token_seconds;
  total_seconds = final_update.total_seconds;
}

const char* StatusCodeName(int code) {
  static constexpr const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                           "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                           "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
                                           "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  return code >= 0 && code < static_cast<int>(std::size(kNames)) ? kNames[code] : "UNKNOWN";
}

std::string RequestLine(const CallRecord& record) {
  nlohmann::ordered_json line = {
      {"time", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone())},
      {"rpc", record.rpc},
      {"code", record.code},
      {"peer", record.peer},
      {"prompt_tokens", record.prompt_tokens},
      {"completion_tokens", record.completion_tokens},
      {"cached_prompt_tokens", record.cached_prompt_tokens},
      {"finish_reason", FinishReasonName(record.finish_reason)},
      {"queue_seconds", record.queue_seconds},
      {"time_to_first_token_seconds", record.time_to_first_token_seconds},
      {"total_seconds", record.total_seconds},
  };
  if (!record.error.empty()) line["error"] = record.error;
  if (!record.stats_tag.empty()) line["stats_tag"] = record.stats_tag;
  // Request text can hold any bytes; the log stays valid JSON.
  return line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

absl::StatusOr<std::unique_ptr<RequestLog>> RequestLog::Open(const std::string& target) {
  if (target == "stdout") return std::make_unique<RequestLog>(stdout, false);
  if (target == "stderr") return std::make_unique<RequestLog>(stderr, false);
  std::FILE* file = std::fopen(target.c_str(), "a");
  if (file == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("--request-log: cannot open ", target, ": ", std::strerror(errno)));
  }
  return std::make_unique<RequestLog>(file, true);
}

RequestLog::RequestLog(std::FILE* out, bool owned, size_t capacity)
    : out_(out), owned_(owned), capacity_(capacity), writer_([this] { WriterLoop(); }) {}

RequestLog::~RequestLog() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  writer_.join();
  if (owned_) std::fclose(out_);
}

void RequestLog::Write(std::string line) {
  absl::MutexLock lock(&mutex_);
  if (lines_.size() >= capacity_) {
    ++dropped_;
    return;
  }
  lines_.push_back(std::move(line));
}

void RequestLog::WriterLoop() {
  while (true) {
    std::deque<std::string> batch;
    int64_t dropped = 0;
    bool stopping = false;
    {
      absl::MutexLock lock(&mutex_);
      auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return stopping_ || !lines_.empty(); };
      mutex_.Await(absl::Condition(&has_work));
      batch.swap(lines_);
      std::swap(dropped, dropped_);
      stopping = stopping_;
    }
    if (dropped > 0) std::fprintf(out_, "{\"dropped_lines\":%lld}\n", static_cast<long long>(dropped));
    for (const std::string& line : batch) {
      std::fputs(line.c_str(), out_);
      std::fputc('\n', out_);
    }
    std::fflush(out_);
    if (stopping) return;
  }
}

}  // namespace mf::server
