// Entry point of libmf_cuda_backend.so, which engine/model_loader.cc loads with
// dlopen when --device cuda is asked for.
#include <cstdio>

#include "engine/cuda/cuda_backend.h"

// `bf16`: 0 for the exact precision mode, 1 for the bf16 one (engine/cuda/cuda_backend.h).
extern "C" __attribute__((visibility("default"))) mf::Backend* mf_create_cuda_backend(int device, int bf16, char* error,
                                                                                       size_t error_size) {
  absl::StatusOr<std::unique_ptr<mf::CudaBackend>> backend =
      mf::CudaBackend::Create(device, bf16 != 0 ? mf::CudaPrecision::kBf16 : mf::CudaPrecision::kExact);
  if (!backend.ok()) {
    std::snprintf(error, error_size, "%s", std::string(backend.status().message()).c_str());
    return nullptr;
  }
  return backend->release();
}
