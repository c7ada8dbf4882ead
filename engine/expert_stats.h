// Per-layer, per-expert selection counts from live traffic: the statistic the
// ModuleFormer paper prunes experts by. Written after every step (on the engine's
// delivery thread), read by the metrics exporter and the ExpertStats RPC.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/model.h"

namespace mf {

// counts[layer][mixture][expert]
using ExpertCounts = std::vector<std::array<std::vector<uint64_t>, 2>>;

class ExpertStats {
 public:
  // `experts_per_layer[layer][mixture]`: pruned layers have fewer experts.
  explicit ExpertStats(std::vector<std::array<int, 2>> experts_per_layer, int max_tags = 64);

  // Counts every routed token slot of a step. `token_tags[t]` is the stats tag of
  // token t's request (empty: untagged).
  void Record(const std::vector<std::array<MixtureRouting, 2>>& routing, const std::vector<const std::string*>& token_tags,
              absl::Time now);

  ExpertCounts Totals() const;  // since start; never reset (Prometheus counters)
  struct Window {
    ExpertCounts counts;
    uint64_t tokens = 0;
    absl::Duration since_reset;
  };
  // Counts since the last reset, of all traffic or of one tag's; then resets if asked
  // (a reset clears every tag's counts too).
  Window SinceReset(const std::string& tag, bool reset);
  // max / mean of each layer's recent load (exponentially decayed, ~1 minute).
  std::vector<std::array<double, 2>> Imbalance() const;
  const std::vector<std::array<int, 2>>& experts_per_layer() const { return experts_per_layer_; }

 private:
  ExpertCounts Zeros() const;

  const std::vector<std::array<int, 2>> experts_per_layer_;
  const int max_tags_;
  mutable absl::Mutex mutex_;
  ExpertCounts totals_ ABSL_GUARDED_BY(mutex_);
  ExpertCounts since_reset_ ABSL_GUARDED_BY(mutex_);
  uint64_t tokens_since_reset_ ABSL_GUARDED_BY(mutex_) = 0;
  std::map<std::string, std::pair<ExpertCounts, uint64_t>> tagged_ ABSL_GUARDED_BY(mutex_);
  absl::Time reset_time_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::array<std::vector<double>, 2>> recent_ ABSL_GUARDED_BY(mutex_);
  absl::Time last_record_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace mf
