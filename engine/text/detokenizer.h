// Streaming text out of generated ids: complete characters only, and stop
// strings matched across token boundaries.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/text/tokenizer.h"
#include "engine/text/utf8.h"

namespace mf {

// Fed one id at a time, emits only complete UTF-8 characters; the concatenation of
// everything emitted (Finish included) equals Tokenizer::Decode of all the ids.
class IncrementalDecoder {
 public:
  IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special)
      : tokenizer_(tokenizer), skip_special_(skip_special) {}

  // Text completed by `id` (possibly empty while a character is split across tokens).
  absl::StatusOr<std::string> Push(int32_t id);
  std::string Finish();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  Utf8Sanitizer sanitizer_;
};

// Watches streamed text for stop strings. Text that might begin a stop string is
// held back until it is known not to; on a match, the text before it is released
// and the stop string itself is dropped.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stop_strings);

  struct Result {
    std::string text;  // safe to send now
    bool stopped = false;
    int stop_index = -1;  // which stop string matched
  };
  Result Push(const std::string& text);
  // The held-back text, when the stream ends without a match.
  std::string Finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  size_t longest_stop_ = 0;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace mf
