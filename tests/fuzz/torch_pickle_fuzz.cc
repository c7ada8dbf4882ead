// libFuzzer target: the state-dict unpickler never crashes, hangs or allocates without
// bound on any input, and what it accepts is well formed.
#include <cstdlib>
#include <string_view>

#include "engine/checkpoint/torch_pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view pickle(reinterpret_cast<const char*>(data), size);
  auto tensors = mf::ReadPickledStateDict(pickle, "fuzz.pkl");
  if (!tensors.ok()) return 0;
  for (const mf::PickledTensor& tensor : *tensors) {
    if (tensor.shape.size() != tensor.stride.size() || tensor.offset < 0 || tensor.storage_elements < 0) std::abort();
  }
  return 0;
}
