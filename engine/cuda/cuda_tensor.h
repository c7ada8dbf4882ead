// Small conversions shared by the CUDA backend's source files.
#pragma once

#include <cstdint>

#include "engine/tensor.h"

namespace mf::cuda {

template <typename T>
T* Ptr(const Tensor& tensor) { return static_cast<T*>(tensor.data); }

inline int Int(int64_t value) { return static_cast<int>(value); }

}  // namespace mf::cuda
