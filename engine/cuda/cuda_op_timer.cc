#include "engine/cuda/cuda_op_timer.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace mf {

CudaOpTimer::CudaOpTimer(cudaStream_t stream) : stream_(stream), enabled_(std::getenv("MF_CUDA_OP_TIMING") != nullptr) {}

CudaOpTimer::~CudaOpTimer() {
  if (!enabled_) return;
  cudaStreamSynchronize(stream_);
  Collect();
  double total_ms = 0;
  for (const auto& [name, entry] : totals_) total_ms += entry.first;
  std::vector<std::pair<std::string, std::pair<double, long long>>> rows(totals_.begin(), totals_.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
  std::fprintf(stderr, "CUDA backend time by operation (%.1f ms in all):\n", total_ms);
  for (const auto& [name, entry] : rows) {
    std::fprintf(stderr, "  %-18s %10.2f ms %5.1f%% %8lld calls %8.1f us/call\n", name.c_str(), entry.first,
                 100 * entry.first / std::max(total_ms, 1e-9), entry.second, 1e3 * entry.first / entry.second);
  }
  for (cudaEvent_t event : spare_) cudaEventDestroy(event);
}

cudaEvent_t CudaOpTimer::TakeEvent() {
  if (!spare_.empty()) {
    cudaEvent_t event = spare_.back();
    spare_.pop_back();
    return event;
  }
  cudaEvent_t event;
  cudaEventCreate(&event);
  return event;
}

CudaOpTimer::Scope::Scope(CudaOpTimer& timer, const char* name) : timer_(timer), name_(name) {
  if (!timer_.enabled_) return;
  start_ = timer_.TakeEvent();
  cudaEventRecord(start_, timer_.stream_);
}

CudaOpTimer::Scope::~Scope() {
  if (!timer_.enabled_) return;
  cudaEvent_t stop = timer_.TakeEvent();
  cudaEventRecord(stop, timer_.stream_);
  timer_.pending_.push_back({name_, start_, stop});
}

void CudaOpTimer::Collect() {
  if (!enabled_) return;
  for (const Pending& pending : pending_) {
    float ms = 0;
    if (cudaEventElapsedTime(&ms, pending.start, pending.stop) == cudaSuccess) {
      auto& entry = totals_[pending.name];
      entry.first += ms;
      entry.second += 1;
    }
    spare_.push_back(pending.start);
    spare_.push_back(pending.stop);
  }
  pending_.clear();
}

}  // namespace mf
