// Per-operation GPU time of the CUDA backend, from CUDA events (set
// MF_CUDA_OP_TIMING=1). Prints a table at exit: where a step's time goes.
#pragma once

#include <cuda_runtime.h>

#include <map>
#include <string>
#include <vector>

namespace mf {

class CudaOpTimer {
 public:
  explicit CudaOpTimer(cudaStream_t stream);
  ~CudaOpTimer();
  CudaOpTimer(const CudaOpTimer&) = delete;
  CudaOpTimer& operator=(const CudaOpTimer&) = delete;

  // Times the enclosed stream work under `name` (a string literal).
  class Scope {
   public:
    Scope(CudaOpTimer& timer, const char* name);
    ~Scope();

   private:
    CudaOpTimer& timer_;
    const char* name_;
    cudaEvent_t start_ = nullptr;
  };

  bool enabled() const { return enabled_; }

  // Folds finished events into the totals; call after the stream has synchronised.
  void Collect();

 private:
  struct Pending {
    const char* name;
    cudaEvent_t start, stop;
  };
  cudaEvent_t TakeEvent();

  cudaStream_t stream_;
  bool enabled_ = false;
  std::vector<Pending> pending_;
  std::vector<cudaEvent_t> spare_;
  std::map<std::string, std::pair<double, long long>> totals_;  // name -> (ms, calls)
};

}  // namespace mf
