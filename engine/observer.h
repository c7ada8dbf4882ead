// Hooks through which the engine loop reports events it alone sees (step timings,
// token arrival, request completion). The metrics exporter implements them; they
// run on the engine thread and must be cheap and non-blocking.
#pragma once

#include "engine/sequence.h"

namespace mf {

class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  virtual void OnStep(double step_seconds, int num_tokens, int num_sequences) = 0;
  // Seconds between a request's consecutive tokens (from its second token on).
  virtual void OnInterTokenLatency(double seconds) = 0;
  // The request's final update: finish reason, status, usage and timings.
  virtual void OnRequestFinished(const GenerationUpdate& final_update) = 0;
};

}  // namespace mf
