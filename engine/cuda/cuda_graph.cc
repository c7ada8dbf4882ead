// Replaying recorded steps as CUDA graphs. A decode step issues hundreds of small
// launches; replaying them as one graph takes the host's launch cost off the critical
// path, which otherwise bounds small batches.
#include <cstdio>
#include <string>
#include <vector>

#include "engine/cuda/cuda_backend.h"

namespace mf {
namespace {

class CudaGraphRecord : public RecordedWork {
 public:
  explicit CudaGraphRecord(cudaGraphExec_t exec) : exec_(exec) {}
  ~CudaGraphRecord() override { cudaGraphExecDestroy(exec_); }
  CudaGraphRecord(const CudaGraphRecord&) = delete;
  CudaGraphRecord& operator=(const CudaGraphRecord&) = delete;
  cudaGraphExec_t exec() const { return exec_; }

 private:
  cudaGraphExec_t exec_;
};

int64_t KernelNodes(cudaGraph_t graph) {
  size_t count = 0;
  if (cudaGraphGetNodes(graph, nullptr, &count) != cudaSuccess) return 0;
  std::vector<cudaGraphNode_t> nodes(count);
  if (cudaGraphGetNodes(graph, nodes.data(), &count) != cudaSuccess) return 0;
  int64_t kernels = 0;
  for (cudaGraphNode_t node : nodes) {
    cudaGraphNodeType type;
    if (cudaGraphNodeGetType(node, &type) == cudaSuccess && type == cudaGraphNodeTypeKernel) ++kernels;
  }
  return kernels;
}

}  // namespace

absl::Status CudaBackend::RunRecorded(std::unique_ptr<RecordedWork>* record, absl::FunctionRef<absl::Status()> body) {
  if (record == nullptr || !graphs_enabled_ || !status_.ok()) return body();
  if (*record != nullptr) {
    ++graphs_replayed_;
    Check(cudaGraphLaunch(static_cast<CudaGraphRecord*>(record->get())->exec(), stream_), "graph launch");
    return status_;
  }
  if (cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
    cudaGetLastError();
    graphs_enabled_ = false;
    return body();
  }
  const absl::Status body_status = body();
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
  cudaGraphExec_t exec = nullptr;
  cudaError_t instantiate = cudaErrorStreamCaptureInvalidated;
  if (end == cudaSuccess && body_status.ok() && status_.ok()) instantiate = cudaGraphInstantiate(&exec, graph, 0);
  if (instantiate == cudaSuccess) last_recorded_kernels_ = KernelNodes(graph);
  if (graph != nullptr) cudaGraphDestroy(graph);
  if (instantiate == cudaSuccess) {
    *record = std::make_unique<CudaGraphRecord>(exec);
    Check(cudaGraphLaunch(exec, stream_), "graph launch");
    return status_;
  }
  // Some operation of the body cannot be recorded (or failed while recording): nothing
  // ran, so forget the recording's errors, and run this step and later ones eagerly.
  const std::string reason = !status_.ok()        ? std::string(status_.message())
                             : !body_status.ok() ? std::string(body_status.message())
                                                 : cudaGetErrorString(instantiate);
  std::fprintf(stderr, "cuda: cannot record the step as a graph (%s); running steps without graphs\n", reason.c_str());
  cudaGetLastError();
  status_ = absl::OkStatus();
  graphs_enabled_ = false;
  return body();
}

}  // namespace mf
