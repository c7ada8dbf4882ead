// A dense tensor in a backend's memory (host memory for the CPU backend, device
// memory for CUDA). Row-major; `storage` owns the allocation.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/checkpoint/dtype.h"

namespace mf {

struct Tensor {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  void* data = nullptr;
  std::shared_ptr<void> storage;

  int64_t num_elements() const {
    int64_t count = 1;
    for (int64_t dim : shape) count *= dim;
    return count;
  }
  size_t num_bytes() const { return static_cast<size_t>(num_elements()) * DTypeSize(dtype); }
  int64_t rows() const { return shape.empty() ? 1 : shape.front(); }
  int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
  bool empty() const { return data == nullptr; }
  template <typename T>
  T* as() const { return static_cast<T*>(data); }
  // A view of `new_shape`'s elements starting `offset` elements in; shares the storage.
  Tensor Slice(int64_t offset, std::vector<int64_t> new_shape) const {
    return Tensor{dtype, std::move(new_shape), static_cast<char*>(data) + offset * static_cast<int64_t>(DTypeSize(dtype)),
                  storage};
  }
};

}  // namespace mf
