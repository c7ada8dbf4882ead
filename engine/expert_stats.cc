#include "engine/expert_stats.h"

#include <algorithm>
#include <cmath>

namespace mf {
namespace {

constexpr double kRecentWindowSeconds = 60;

}  // namespace

ExpertStats::ExpertStats(std::vector<std::array<int, 2>> experts_per_layer, int max_tags)
    : experts_per_layer_(std::move(experts_per_layer)), max_tags_(max_tags) {
  absl::MutexLock lock(&mutex_);
  totals_ = since_reset_ = Zeros();
  reset_time_ = last_record_ = absl::Now();
  recent_.resize(experts_per_layer_.size());
  for (size_t layer = 0; layer < experts_per_layer_.size(); ++layer) {
    for (int mixture = 0; mixture < 2; ++mixture) {
      recent_[layer][mixture].assign(static_cast<size_t>(experts_per_layer_[layer][mixture]), 0.0);
    }
  }
}

ExpertCounts ExpertStats::Zeros() const {
  ExpertCounts counts(experts_per_layer_.size());
  for (size_t layer = 0; layer < experts_per_layer_.size(); ++layer) {
    for (int mixture = 0; mixture < 2; ++mixture) {
      counts[layer][mixture].assign(static_cast<size_t>(experts_per_layer_[layer][mixture]), 0);
    }
  }
  return counts;
}

void ExpertStats::Record(const std::vector<std::array<MixtureRouting, 2>>& routing_by_layer,
                         const std::vector<const std::string*>& token_tags, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  const double decay = std::exp(-absl::ToDoubleSeconds(now - last_record_) / kRecentWindowSeconds);
  last_record_ = now;
  for (size_t layer = 0; layer < routing_by_layer.size() && layer < totals_.size(); ++layer) {
    for (int mixture = 0; mixture < 2; ++mixture) {
      for (double& load : recent_[layer][mixture]) load *= decay;
    }
  }
  const size_t num_tokens = token_tags.size();
  tokens_since_reset_ += num_tokens;
  for (size_t layer = 0; layer < routing_by_layer.size() && layer < totals_.size(); ++layer) {
    for (int mixture = 0; mixture < 2; ++mixture) {
      const MixtureRouting& routing = routing_by_layer[layer][mixture];
      std::vector<uint64_t>& total = totals_[layer][mixture];
      std::vector<uint64_t>& window = since_reset_[layer][mixture];
      std::vector<double>& recent = recent_[layer][mixture];
      for (size_t slot = 0; slot < routing.experts.size(); ++slot) {
        const auto expert = static_cast<size_t>(routing.experts[slot]);
        ++total[expert];
        ++window[expert];
        recent[expert] += 1;
        const std::string* tag = token_tags[slot / static_cast<size_t>(routing.top_k)];
        if (tag == nullptr || tag->empty()) continue;
        auto it = tagged_.find(*tag);
        if (it == tagged_.end()) {
          if (static_cast<int>(tagged_.size()) >= max_tags_) continue;  // bounded memory
          it = tagged_.emplace(*tag, std::make_pair(Zeros(), uint64_t{0})).first;
        }
        ++it->second.first[layer][mixture][expert];
      }
    }
  }
  for (const std::string* tag : token_tags) {
    if (tag == nullptr || tag->empty()) continue;
    if (auto it = tagged_.find(*tag); it != tagged_.end()) ++it->second.second;
  }
}

ExpertCounts ExpertStats::Totals() const {
  absl::MutexLock lock(&mutex_);
  return totals_;
}

ExpertStats::Window ExpertStats::SinceReset(const std::string& tag, bool reset) {
  absl::MutexLock lock(&mutex_);
  Window window;
  window.since_reset = absl::Now() - reset_time_;
  if (tag.empty()) {
    window.counts = since_reset_;
    window.tokens = tokens_since_reset_;
  } else if (auto it = tagged_.find(tag); it != tagged_.end()) {
    window.counts = it->second.first;
    window.tokens = it->second.second;
  } else {
    window.counts = Zeros();
  }
  if (reset) {
    since_reset_ = Zeros();
    tokens_since_reset_ = 0;
    tagged_.clear();
    reset_time_ = absl::Now();
  }
  return window;
}

std::vector<std::array<double, 2>> ExpertStats::Imbalance() const {
  absl::MutexLock lock(&mutex_);
  std::vector<std::array<double, 2>> imbalance(recent_.size(), {0.0, 0.0});
  for (size_t layer = 0; layer < recent_.size(); ++layer) {
    for (int mixture = 0; mixture < 2; ++mixture) {
      const std::vector<double>& load = recent_[layer][mixture];
      if (load.empty()) continue;
      double total = 0, peak = 0;
      for (double value : load) {
        total += value;
        peak = std::max(peak, value);
      }
      imbalance[layer][mixture] = total > 0 ? peak / (total / static_cast<double>(load.size())) : 0.0;
    }
  }
  return imbalance;
}

}  // namespace mf
