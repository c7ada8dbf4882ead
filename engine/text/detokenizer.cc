#include "engine/text/detokenizer.h"

#include <algorithm>

namespace mf {

absl::StatusOr<std::string> IncrementalDecoder::Push(int32_t id) {
  absl::StatusOr<std::string> bytes = tokenizer_.DecodeBytes({&id, 1}, skip_special_);
  if (!bytes.ok()) return bytes.status();
  std::string text;
  sanitizer_.Feed(*bytes, &text);
  return text;
}

std::string IncrementalDecoder::Finish() {
  std::string text;
  sanitizer_.Finish(&text);
  return text;
}

StopMatcher::StopMatcher(std::vector<std::string> stop_strings) : stops_(std::move(stop_strings)) {
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
  for (const std::string& stop : stops_) longest_stop_ = std::max(longest_stop_, stop.size());
}

StopMatcher::Result StopMatcher::Push(const std::string& text) {
  Result result;
  if (stopped_) return result;
  held_ += text;
  size_t earliest = std::string::npos;
  for (size_t i = 0; i < stops_.size(); ++i) {
    const size_t found = held_.find(stops_[i]);
    if (found < earliest) {
      earliest = found;
      result.stop_index = static_cast<int>(i);
    }
  }
  if (earliest != std::string::npos) {
    result.text = held_.substr(0, earliest);
    result.stopped = stopped_ = true;
    held_.clear();
    return result;
  }
  // Keep the longest tail that is a proper prefix of some stop string.
  size_t keep = 0;
  for (size_t length = std::min(held_.size(), longest_stop_ - (longest_stop_ > 0)); length > 0; --length) {
    const std::string_view tail(held_.data() + held_.size() - length, length);
    const bool is_prefix = std::any_of(stops_.begin(), stops_.end(), [&](const std::string& stop) {
      return stop.size() > length && stop.compare(0, length, tail) == 0;
    });
    if (is_prefix) {
      keep = length;
      break;
    }
  }
  result.text = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return result;
}

std::string StopMatcher::Finish() {
  std::string rest;
  rest.swap(held_);
  return stopped_ ? std::string() : rest;
}

}  // namespace mf
